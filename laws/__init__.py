"""Scaling laws for LLM finetuning: law forms, robust fitting, held-out checks, bootstrap, plots.

numpy + scipy + pandas + matplotlib only: imports in a plain runtime without JAX/TensorFlow.
"""
from .forms import LAWS, GRID_PRESETS, Law, get_law, grid_preset
from .fit import FitResult, fit_law, results_table, heldout_mask
from .frame import fit_frame, compare_laws
from .joint import FORMS, JointFit, fit_joint, naive_nearest_mad
from .joint_bootstrap import JointBootstrap, bootstrap_joint
from .simulate import SimulatedStudy, simulate_study
from .bootstrap import BootstrapResult, bootstrap, Crossing, critical_df
from .diagnostics import extrapolation_check, misalignment_check, MonotonicityReport
from .study import StudyFits, fit_finetuning_results

__all__ = ["LAWS", "GRID_PRESETS", "Law", "get_law", "grid_preset", "FitResult", "fit_law", "results_table",
           "heldout_mask", "fit_frame", "compare_laws", "FORMS", "JointFit", "fit_joint", "naive_nearest_mad", "JointBootstrap", "bootstrap_joint",
           "SimulatedStudy", "simulate_study", "BootstrapResult", "bootstrap",
           "Crossing", "critical_df", "extrapolation_check", "misalignment_check", "MonotonicityReport",
           "StudyFits", "fit_finetuning_results"]
