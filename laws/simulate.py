"""A study table drawn from a known law plus noise: the known truth that tests of the fitting
procedure (recovery, bootstrap coverage, law choice) are checked against.

The table has the study's shape (laws.study.fit_finetuning_results reads it): every model size
at the final pretraining checkpoint and the reference PET size, the smallest size at every
pretraining-data value, and, for PET methods, that size at every PET size; every Df and seed.
Truth, with h(N, Dp, P) = A * N^-alpha_N * Dp^-alpha_D * P^-alpha_P (P only for PET methods):
  multiplicative  y = h * Df^-beta + E
  additive        y = h + B * Df^-beta + E
so each factor's slice (others at their reference) is exactly Zhang et al.'s per-factor law with
A_X = A * (the other factors' terms at their reference), and beta, E (and B) shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["SimulatedStudy", "simulate_study"]

FACTOR_COLUMNS = ("model_params", "pretrain_tokens", "pet_size")


@dataclass
class SimulatedStudy:
    """The runs (one row per run) and the true per-factor parameters of every method."""

    runs: pd.DataFrame
    form: str
    truth: dict = field(default_factory=dict)     # method -> factor -> {A, alpha, beta, E[, B]}
    noise: float = 0.0


def simulate_study(form: str = "multiplicative", *, methods=("fmt", "lora"), sizes=(1e8, 2e8, 4e8, 8e8, 1.6e9),
                   pretrain_tokens=(1e10, 2e10, 4e10, 8e10), pet_sizes=(4, 16, 64), finetune_examples=(500, 1e3, 2e3,
                   4e3, 8e3, 1.6e4), seeds=3, noise: float = 0.02, A: float = 1.5e5, alphas=None, beta: float = 0.3,
                   E: float = 1.5, B: float = 20.0, seed: int = 0) -> SimulatedStudy:
    """Draw a study table: y = the `form` law of the module docstring + Normal(0, noise) per run."""
    if form not in ("multiplicative", "additive"):
        raise ValueError(f"form must be 'multiplicative' or 'additive', got {form!r}")
    if noise < 0 or seeds < 1:
        raise ValueError(f"noise must be >= 0 and seeds >= 1; got noise={noise}, seeds={seeds}")
    alphas = dict(alphas or {"model_params": 0.3, "pretrain_tokens": 0.15, "pet_size": 0.05})
    rng = np.random.default_rng(seed)
    ref = {"model_params": sizes[0], "pretrain_tokens": pretrain_tokens[-1], "pet_size": pet_sizes[0]}

    def h(values: dict, method_scale: float) -> float:
        out = A * method_scale
        for column, value in values.items():
            out *= value ** -alphas[column]
        return out

    rows, truth = [], {}
    for m_i, method in enumerate(methods):
        pet = method != "fmt"
        scale = 1.0 + 0.25 * m_i                      # each method its own level
        axes = {"model_params": sizes, "pretrain_tokens": pretrain_tokens}
        if pet:
            axes["pet_size"] = pet_sizes
        configs = set()
        for column, grid in axes.items():
            for value in grid:
                cfg = {c: ref[c] for c in axes}
                cfg[column] = value
                if column == "model_params":          # the model-size axis: every size at the final checkpoint
                    cfg["pretrain_tokens"] = pretrain_tokens[-1]
                configs.add(tuple(sorted(cfg.items())))
        truth[method] = {}
        for column in axes:
            others = {c: ref[c] for c in axes if c != column}
            A_x = h(others, scale)
            params = {"A": A_x, "alpha": alphas[column], "beta": beta, "E": E}
            if form == "additive":
                params["B"] = B
            truth[method][column] = params
        for cfg in sorted(configs):
            values = dict(cfg)
            for df in finetune_examples:
                mean = (h(values, scale) * df ** -beta + E if form == "multiplicative"
                        else h(values, scale) + B * df ** -beta + E)
                for s in range(seeds):
                    rows.append({"method": method, "model_params": values["model_params"],
                                 "pretrain_tokens": values["pretrain_tokens"],
                                 "pet_size": values.get("pet_size", np.nan), "finetune_examples": float(df), "seed": s,
                                 "y": mean + rng.normal(0.0, noise)})
    return SimulatedStudy(pd.DataFrame(rows), form, truth, noise)
