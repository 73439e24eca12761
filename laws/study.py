"""The entry point the study runner calls: Zhang et al.'s joint laws per finetuning method from a
results table, the multiplicative and the additive law fitted like for like (laws.joint)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .fit import _jsonable
from .frame import columns_or_error
from .joint import FORMS, JointFit, fit_joint
from .bootstrap import critical_df

__all__ = ["StudyFits", "fit_finetuning_results", "factor_rows", "comparison_table"]


@dataclass
class StudyFits:
    """Per method: the joint fit of each form, the points and runs they saw, a tidy table of the
    multiplicative fits, the like-for-like comparison, notes and critical Df."""

    joint: dict                      # method -> JointFit (multiplicative: the paper's law)
    table: pd.DataFrame              # one row per (method, factor), multiplicative
    comparison: pd.DataFrame         # comparison_table: per (method, factor, law) held-out MAD and baselines
    notes: list = field(default_factory=list)
    crossings: pd.DataFrame = field(default_factory=pd.DataFrame)  # critical Df per method pair and factor value
    forms: dict = field(default_factory=dict)      # method -> form -> JointFit
    data: dict = field(default_factory=dict)       # method -> factor -> (X, Df, y, keys) as fitted
    runs: dict = field(default_factory=dict)       # method -> key -> run values (the bootstrap's units)

    def to_dict(self) -> dict:
        return _jsonable({"forms": {str(m): {f: jf.to_dict() for f, jf in forms.items()} for m, forms in self.forms.items()},
                          "comparison": self.comparison.to_dict(orient="records"), "notes": self.notes})


def factor_rows(df: pd.DataFrame, factor: str, factors: list[str], reference: dict | None = None) -> pd.DataFrame:
    """Rows that vary `factor` with every other factor held at its reference value.

    Default reference of another factor C: the value of C seen with the most distinct values
    of `factor` (ties: the largest), e.g. the final common checkpoint when varying model size.
    """
    reference = reference or {}
    rows = df[df[factor].notna()]
    for other in factors:
        if other == factor or other not in rows.columns or rows[other].isna().all():
            continue
        if other in reference:
            ref = reference[other]
        else:
            counts = rows.groupby(other)[factor].nunique()
            if counts.empty:
                continue
            best = counts.max()
            ref = max(v for v, c in counts.items() if c == best)
        rows = rows[rows[other] == ref]
    return rows


def _key(row: pd.Series, columns: list[str]) -> tuple:
    """A run configuration's identity across factors (NaN as None so equal configurations compare equal)."""
    return tuple(None if pd.isna(row[c]) else float(row[c]) for c in columns)


def comparison_table(forms: dict[str, JointFit], method_name: str = "method", method=None) -> pd.DataFrame:
    """One row per (factor, law): parameter count, held-out MAD next to the naive nearest-point
    baseline and to how much the metric moves over the fit points, fit MAD, convergence."""
    rows = []
    for form, jf in forms.items():
        for factor, r in jf.factors.items():
            rows.append({method_name: method, "factor": factor, "law": form, "parameters": jf.n_params,
                         "heldout_mad": r.heldout_mad, "naive_mad": r.heldout_naive_mad, "fit_range": r.fit_range,
                         "fit_mad": r.fit_mad, "n_fit": r.n_fit, "n_heldout": r.n_heldout,
                         "converged": r.converged, "residual": jf.residual})
    return pd.DataFrame(rows)


def fit_finetuning_results(df: pd.DataFrame, *, y: str = "log_ppl", method: str = "method",
                           finetune_examples: str = "finetune_examples",
                           factors=("model_params", "pretrain_tokens", "pet_size"), reference: dict | None = None,
                           residual: str = "raw", delta: float = 1e-3, holdout="max",
                           forms=FORMS, aggregate: str = "mean") -> StudyFits:
    """Fit Zhang et al.'s joint laws per finetuning method, each form by the same procedure.

    For each method and each factor column with >= 2 distinct values (others at their
    reference), seeds are averaged (`aggregate`) into one point per configuration; each factor's
    largest value and the largest Df are held out (`holdout`) and left out of every stage that
    scores them; each form in `forms` is fitted by laws.fit_joint (beta, E shared; shared values
    estimated without the PET-size factor). The first form is the one `joint` and `table` show.
    """
    factors = [f for f in factors if f in df.columns]
    columns_or_error(df, [y, method, finetune_examples])
    if not factors:
        raise ValueError(f"none of the factor columns are in the table; available: {list(df.columns)}")
    bad = [f for f in forms if f not in FORMS]
    if bad or not forms:
        raise ValueError(f"forms {list(forms)} must be a non-empty subset of {FORMS}")
    key_columns = factors + [finetune_examples]
    notes: list[str] = []
    joint, all_forms, all_data, all_runs = {}, {}, {}, {}
    rows, comp = [], []
    for m, sub in df.groupby(method, sort=True):
        data, runs = {}, {}
        for f in factors:
            part = factor_rows(sub, f, factors, reference)
            part = part[part[y].notna() & part[finetune_examples].notna()]
            if part[f].nunique() < 2 or part[finetune_examples].nunique() < 2:
                notes.append(f"method {m!r}: factor {f!r} skipped ({part[f].nunique()} value(s) of {f}, "
                             f"{part[finetune_examples].nunique()} of {finetune_examples} at the reference)")
                continue
            keys = [_key(r, key_columns) for _, r in part.iterrows()]
            part = part.assign(_key=keys)
            agg = part.groupby("_key", sort=True).agg(X=(f, "first"), Df=(finetune_examples, "first"), y=(y, aggregate))
            for key, values in part.groupby("_key")[y]:
                runs[key] = values.to_numpy(float)
            data[f] = (agg["X"].to_numpy(float), agg["Df"].to_numpy(float), agg["y"].to_numpy(float), list(agg.index))
        if not data:
            notes.append(f"method {m!r}: no factor has enough runs; not fitted")
            continue
        fitted = {}
        for form in forms:
            try:
                fitted[form] = fit_joint(data, form=form, residual=residual, delta=delta, holdout=holdout,
                                         group={method: m}, target=y, df_name=finetune_examples)
                notes += [f"method {m!r}, {form}: {n}" for n in fitted[form].notes]
            except ValueError as exc:
                notes.append(f"method {m!r}: {form} law not fitted: {exc}")
        if not fitted:
            continue
        all_forms[m], all_data[m], all_runs[m] = fitted, data, runs
        joint[m] = fitted.get(forms[0]) or next(iter(fitted.values()))
        for f, r in joint[m].factors.items():
            rows.append({method: m, "factor": f, **r.params, "objective": r.objective, "converged": r.converged,
                         "n_fit": r.n_fit, "n_heldout": r.n_heldout, "heldout_mad": r.heldout_mad,
                         "fit_mad": r.fit_mad})
        comp.append(comparison_table(fitted, method, m))
    comparison = pd.concat(comp, ignore_index=True) if comp else pd.DataFrame()
    crossings = method_crossings(joint, df, finetune_examples)
    return StudyFits(joint=joint, table=pd.DataFrame(rows), comparison=comparison, notes=notes, crossings=crossings,
                     forms=all_forms, data=all_data, runs=all_runs)


def method_crossings(joint: dict, df: pd.DataFrame, finetune_examples: str) -> pd.DataFrame:
    """Critical Df per pair of methods, per factor and factor value, within the observed Df range."""
    lo, hi = float(df[finetune_examples].min()), float(df[finetune_examples].max())
    rows = []
    methods = sorted(joint, key=str)
    for i, m1 in enumerate(methods):
        for m2 in methods[i + 1:]:
            for factor in joint[m1].factors:
                if factor not in joint[m2].factors or lo >= hi:
                    continue
                for value in sorted(df[factor].dropna().unique()):
                    c = critical_df(joint[m1].factors[factor], joint[m2].factors[factor], df_range=(lo, hi),
                                    fixed=float(value))
                    rows.append({"method_1": m1, "method_2": m2, "factor": factor, "value": float(value),
                                 "critical_df": c.df_star, "message": c.message})
    return pd.DataFrame(rows)
