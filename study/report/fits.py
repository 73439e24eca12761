"""The report's numbers: every law fit of the study (through laws/), as tables the report prints.

Seeds are averaged before fitting (Zhang et al. average 3 subsets). Each function takes
the prepared results frame (`prepare`) and the spec, and returns plain pandas tables or
fit objects; nothing here writes files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import laws
from laws.study import factor_rows
from study.spec import StudySpec

FACTORS = ("model_params", "pretrain_tokens", "pet_size")
FACTOR_NAMES = {"model_params": "model size (non-embedding params)", "pretrain_tokens": "pretraining tokens",
                "pet_size": "PET size (LoRA rank / prompt length)"}


def prepare(df: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """The done rows with the columns the fits use: size, corpus, model_params, y (the fit metric)."""
    frame = df.copy()
    frame["size"] = frame["model_name"].astype(str)
    frame["corpus"] = frame["pretrain_corpus"].astype(str)
    frame["model_params"] = frame["non_embedding_params"].astype(float)
    frame["y"] = frame[spec.fit_metric].astype(float)
    order = {s: i for i, s in enumerate(spec.sizes)}
    frame["size_rank"] = frame["size"].map(order).fillna(len(order))
    return frame.sort_values(["size_rank", "corpus", "method", "pet_size", "pretrain_tokens", "finetune_examples", "seed"])


def reference_pet(spec: StudySpec, method: str) -> int:
    return spec.pet_sizes(method, sweep=False)[0]


def mean_over_seeds(rows: pd.DataFrame, by: list[str], column: str = "y") -> pd.DataFrame:
    """Mean, min, max and count of `column` over seeds per group."""
    return rows.groupby(by, as_index=False)[column].agg(mean="mean", low="min", high="max", n="count")


# --- Zhang Fig. 1: Df scaling per size and method ------------------------------------


@dataclass
class DfFit:
    """One single-variable Df law fit (or why there is none) with the points it saw."""

    method: str
    size: str
    points: pd.DataFrame            # finetune_examples, mean, low, high, n, heldout
    fit: laws.FitResult | None
    note: str = ""


def df_scaling_fits(frame: pd.DataFrame, spec: StudySpec) -> list[DfFit]:
    """The spec's df_law fitted to y vs Df per (method, size), at the final checkpoint and reference PET size."""
    out = []
    corpus = spec.pretrain_corpora[0]
    for method in spec.methods:
        for size in spec.sizes:
            rows = frame[(frame["method"] == method) & (frame["size"] == size) & (frame["corpus"] == corpus)
                         & (frame["pretrain_tokens"] == spec.token_budget) & (frame["pet_size"] == reference_pet(spec, method))]
            if rows.empty:
                continue
            points = mean_over_seeds(rows, ["finetune_examples"])
            points["heldout"] = laws.heldout_mask(points[["finetune_examples"]].to_numpy(float), spec.holdout)
            try:
                fit = laws.fit_law(spec.df_law, points["finetune_examples"].to_numpy(float), points["mean"].to_numpy(float),
                                   holdout=points["heldout"].to_numpy(), names=["finetune_examples"], target=spec.fit_metric, n_polish=2,
                                   group={"method": method, "size": size})
                out.append(DfFit(method, size, points, fit))
            except ValueError as error:
                out.append(DfFit(method, size, points, None, f"not fitted: {error}"))
    return out


def df_fit_table(fits: list[DfFit]) -> pd.DataFrame:
    rows = []
    for f in fits:
        row = {"method": f.method, "size": f.size, "points": len(f.points)}
        if f.fit is not None:
            row.update({k: v for k, v in f.fit.params.items()})
            row.update(fit_MAD=f.fit.fit_mad, heldout_Df=", ".join(str(int(v)) for v in f.points.loc[f.points["heldout"], "finetune_examples"]),
                       heldout_MAD=f.fit.heldout_mad, converged=f.fit.converged)
        else:
            row["note"] = f.note
        rows.append(row)
    return pd.DataFrame(rows)


# --- Zhang Tables 2 and 4: joint laws ---------------------------------------------------


@dataclass
class JointResults:
    """laws.fit_finetuning_results on the study, its per-factor data and bootstrap intervals."""

    fits: laws.StudyFits | None
    data: dict = field(default_factory=dict)         # method -> factor -> (X, Df, y) as fitted
    boot: dict = field(default_factory=dict)         # method -> factor -> BootstrapResult
    notes: list = field(default_factory=list)


def joint_fits(frame: pd.DataFrame, spec: StudySpec) -> JointResults:
    """Zhang et al.'s multiplicative joint law per method (beta, E shared) vs the additive law; bootstrap."""
    rows = frame[frame["corpus"] == spec.pretrain_corpora[0]]
    factors = [f for f in FACTORS if rows[f].nunique() > 1]
    if not factors:
        return JointResults(None, notes=["no factor besides Df varies in this study: no joint law to fit"])
    fits = laws.fit_finetuning_results(rows, y="y", factors=tuple(factors), holdout=spec.holdout,
                                       compare_additive="additive" in spec.laws)
    result = JointResults(fits, notes=list(fits.notes))
    for method, jf in fits.joint.items():
        sub = rows[rows["method"] == method]
        data = {}
        for f in jf.factors:
            part = factor_rows(sub, f, factors)
            agg = part.groupby([f, "finetune_examples"], as_index=False)["y"].mean()
            data[f] = (agg[f].to_numpy(float), agg["finetune_examples"].to_numpy(float), agg["y"].to_numpy(float))
        result.data[method] = data
        if spec.bootstrap_resamples:
            try:
                result.boot[method] = laws.bootstrap_joint(jf, data, n_resamples=spec.bootstrap_resamples, seed=0)
            except ValueError as error:
                result.notes.append(f"method {method!r}: bootstrap not run: {error}")
    return result


def joint_parameter_table(joint: JointResults) -> pd.DataFrame:
    """Zhang Table 4: A, alpha per factor and the shared beta, E, with bootstrap percentile intervals."""
    rows = []
    if joint.fits is None:
        return pd.DataFrame()
    for method, jf in joint.fits.joint.items():
        for factor, fit in jf.factors.items():
            row = {"method": method, "factor": factor}
            intervals = None
            boot = joint.boot.get(method, {}).get(factor)
            if boot is not None and boot.converged.sum() >= 2:
                intervals = boot.intervals()
            for name in ("A", "alpha", "beta", "E"):
                value = fit.params[name]
                row[name] = value if intervals is None else f"{value:.4g} [{intervals.loc[name, 'lo']:.3g}, {intervals.loc[name, 'hi']:.3g}]"
            row.update(heldout_MAD=fit.heldout_mad, converged=fit.converged)
            X, D, _ = joint.data[method][factor]
            kept = ~laws.heldout_mask(np.column_stack([X, D]), jf.holdout)
            if len(np.unique(X[kept])) < 2:
                row["note"] = "alpha not identifiable: one value of the factor left after holding out the largest"
            rows.append(row)
    return pd.DataFrame(rows)


# --- model size vs pretraining data at each Df ----------------------------------------


def scale_vs_data(frame: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """Per method and Df: the exponent a of y = A / X^a along model size and along pretraining tokens.

    Model size: every size at the final checkpoint; pretraining data: the intermediate checkpoints
    of the Dp-sweep size. Also the loss change per 10x of each factor, so the two are comparable.
    """
    rows = []
    corpus = spec.pretrain_corpora[0]
    base = frame[frame["corpus"] == corpus]
    for method in spec.methods:
        sub = base[(base["method"] == method) & (base["pet_size"] == reference_pet(spec, method))]
        for df_value in spec.finetune_examples:
            at_df = sub[sub["finetune_examples"] == df_value]
            row = {"method": method, "finetune_examples": df_value}
            axes = {"model": at_df[at_df["pretrain_tokens"] == spec.token_budget].groupby("model_params")["y"].mean()}
            for size in spec.dp_sweep_sizes or ():
                axes["data"] = at_df[at_df["size"] == size].groupby("pretrain_tokens")["y"].mean()
                row["data_size"] = size
                break
            for axis, series in axes.items():
                if len(series) < 2:
                    continue
                x, y = series.index.to_numpy(float), series.to_numpy(float)
                exponent, how = _exponent(x, y)
                row[f"{axis}_exponent"] = exponent
                row[f"{axis}_change_per_10x"] = 10 ** (-exponent) - 1
                row[f"{axis}_points"] = len(series)
                row[f"{axis}_how"] = how
            rows.append(row)
    table = pd.DataFrame(rows)
    if {"model_exponent", "data_exponent"} <= set(table.columns):
        both = table["model_exponent"].notna() & table["data_exponent"].notna()
        table.loc[both, "helps_more"] = np.where(table.loc[both, "model_exponent"] > table.loc[both, "data_exponent"],
                                                 "model size", "pretraining data")
    return table


def _exponent(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """Exponent of the pure power law y = A / x^a (laws.fit_law) or, with two points, their log-log slope."""
    if len(x) >= 3:
        fit = laws.fit_law("pure_power", x, y, holdout="none", names=["X"], n_polish=1)
        return float(fit.params["beta"]), "pure power-law fit"
    return float(-np.log(y[1] / y[0]) / np.log(x[1] / x[0])), "slope between two points"


# --- critical Df ------------------------------------------------------------------------


def critical_points(joint: JointResults, frame: pd.DataFrame, spec: StudySpec, extrapolate: float = 100.0) -> pd.DataFrame:
    """Where FMT's fitted curve crosses LoRA's / prompt tuning's, per factor value, within [min Df,
    extrapolate x max Df], with a bootstrap interval; and which method is better above the crossing."""
    rows = []
    if joint.fits is None or "fmt" not in joint.fits.joint:
        return pd.DataFrame()
    lo, hi = float(min(spec.finetune_examples)), float(max(spec.finetune_examples)) * extrapolate
    fmt = joint.fits.joint["fmt"]
    for other in ("lora", "prompt"):
        if other not in joint.fits.joint:
            continue
        for factor in ("model_params", "pretrain_tokens"):
            if factor not in fmt.factors or factor not in joint.fits.joint[other].factors:
                continue
            f1, f2 = fmt.factors[factor], joint.fits.joint[other].factors[factor]
            b1, b2 = joint.boot.get("fmt", {}).get(factor), joint.boot.get(other, {}).get(factor)
            for value in sorted(set(joint.data["fmt"][factor][0].tolist())):
                c = laws.critical_df(f1, f2, df_range=(lo, hi), fixed=float(value), boot1=b1, boot2=b2)
                row = {"pair": f"fmt vs {other}", "factor": factor, "value": value, "critical_Df": c.df_star,
                       "interval": None if c.lo is None else f"[{c.lo:.4g}, {c.hi:.4g}]",
                       "share_of_resamples_crossing": c.fraction_crossing}
                probe = np.array([[value, hi]])
                fmt_better_at_hi = float(f1.predict(probe)[0]) < float(f2.predict(probe)[0])
                row["better_at_largest_Df"] = "fmt" if fmt_better_at_hi else other
                row["in_observed_range"] = c.df_star is not None and c.df_star <= max(spec.finetune_examples)
                rows.append(row)
    return pd.DataFrame(rows)


# --- Isik: alignment --------------------------------------------------------------------


# The misalignment check on BLEU: sacrebleu reports one decimal, so smaller drops are not counted;
# below BLEU_FLOOR at every Dp (an untrained model) there is no trend to judge.
BLEU_TOLERANCE = 0.1
BLEU_FLOOR = 1.0


@dataclass
class AlignmentFit:
    """Downstream CE and BLEU vs pretraining tokens for one size and corpus, with the Isik laws."""

    size: str
    corpus: str
    points: pd.DataFrame            # pretrain_tokens, ce, bleu
    ce_fit: laws.FitResult | None
    bleu_fit: laws.FitResult | None
    monotonicity: str
    notes: list = field(default_factory=list)


def alignment_fits(frame: pd.DataFrame, spec: StudySpec) -> list[AlignmentFit]:
    """Per Dp-sweep size and corpus, at the largest Df with the first method: isik_ce on the test
    cross-entropy (log-PPL) and isik_loglaw on BLEU vs pretraining tokens, plus the misalignment check."""
    out = []
    method, df_value = spec.methods[0], max(spec.finetune_examples)
    for size in spec.dp_sweep_sizes:
        for corpus in spec.pretrain_corpora:
            rows = frame[(frame["size"] == size) & (frame["corpus"] == corpus) & (frame["method"] == method)
                         & (frame["finetune_examples"] == df_value) & (frame["pet_size"] == reference_pet(spec, method))]
            if rows.empty:
                continue
            points = rows.groupby("pretrain_tokens", as_index=False).agg(ce=("test_log_ppl", "mean"), bleu=("bleu", "mean"))
            dp = points["pretrain_tokens"].to_numpy(float)
            notes, fits = [], {}
            for key, law, column in (("ce", "isik_ce", "ce"), ("bleu", "isik_loglaw", "bleu")):
                values = points[column].to_numpy(float)
                try:
                    fits[key] = laws.fit_law(law, dp, values, holdout="none", names=["pretrain_tokens"], target=column, n_polish=1,
                                             group={"size": size, "corpus": corpus})
                except ValueError as error:
                    fits[key] = None
                    notes.append(f"{law} not fitted: {error}")
            bleu = points["bleu"].fillna(0).to_numpy(float)
            if bleu.max() < BLEU_FLOOR:
                mono = (f"not judged: BLEU is below {BLEU_FLOOR:g} at every Dp (max {bleu.max():.2f}): too close to "
                        "zero to tell a trend from noise")
            else:
                try:
                    mono = laws.misalignment_check(dp, points["ce"].to_numpy(float), bleu,
                                                   metric_tolerance=BLEU_TOLERANCE).message
                except ValueError as error:
                    mono = f"not judged: {error}"
            out.append(AlignmentFit(size, corpus, points, fits["ce"], fits["bleu"], mono, notes))
    return out
