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
    """The done rows with the columns the fits use: size, corpus, model_params, y (the fit metric),
    scratch (finetuned from the initialisation: Isik et al.'s baseline, never in a law fit)."""
    frame = df.copy()
    frame["scratch"] = frame["pretrain_tokens"].astype(float) == 0
    frame["size"] = frame["model_name"].astype(str)
    frame["corpus"] = frame["pretrain_corpus"].astype(str)
    frame["model_params"] = frame["non_embedding_params"].astype(float)
    frame["y"] = frame[spec.fit_metric].astype(float)
    order = {s: i for i, s in enumerate(spec.sizes)}
    frame["size_rank"] = frame["size"].map(order).fillna(len(order))
    return frame.sort_values(["size_rank", "corpus", "method", "pet_size", "pretrain_tokens", "finetune_examples", "seed"])


def pretrained(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows every law is fitted on: finetuned from a pretraining checkpoint."""
    return frame[~frame["scratch"]] if "scratch" in frame else frame


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
    frame = pretrained(frame)
    for method in spec.methods:
        for size in spec.sizes:
            rows = frame[(frame["method"] == method) & (frame["size"] == size) & (frame["corpus"] == corpus)
                         & (frame["pretrain_tokens"] == spec.token_budget) & (frame["pet_size"] == reference_pet(spec, method))]
            if rows.empty:
                continue
            points = mean_over_seeds(rows, ["finetune_examples"])
            points["heldout"] = laws.heldout_mask(points[["finetune_examples"]].to_numpy(float), spec.holdout)
            try:
                x, y, held = (points["finetune_examples"].to_numpy(float), points["mean"].to_numpy(float),
                              points["heldout"].to_numpy())
                fit = laws.fit_law(spec.df_law, x, y, holdout=held, names=["finetune_examples"], target=spec.fit_metric,
                                   n_polish=2, residual=spec.residual, group={"method": method, "size": size})
                fit.fit_range = float(y[~held].max() - y[~held].min())
                if held.any():
                    fit.heldout_naive_mad = laws.naive_nearest_mad(x[~held, None], y[~held], x[held, None], y[held])
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
                       heldout_MAD=f.fit.heldout_mad, naive_MAD=f.fit.heldout_naive_mad, fit_range=f.fit.fit_range,
                       converged=f.fit.converged)
        else:
            row["note"] = f.note
        rows.append(row)
    return pd.DataFrame(rows)


# --- Zhang Tables 2 and 4: joint laws ---------------------------------------------------


@dataclass
class JointResults:
    """laws.fit_finetuning_results on the study (both forms, like for like) and the bootstrap of
    each method's multiplicative fit (laws.JointBootstrap, over whole runs)."""

    fits: laws.StudyFits | None
    data: dict = field(default_factory=dict)         # method -> factor -> (X, Df, y, keys) as fitted
    boot: dict = field(default_factory=dict)         # method -> JointBootstrap
    notes: list = field(default_factory=list)

    def factor_boot(self, method: str, factor: str):
        """The factor's BootstrapResult when most resamples converged, else None (no interval shown)."""
        boot = self.boot.get(method)
        return boot.factors.get(factor) if boot is not None and boot.usable() else None


def joint_fits(frame: pd.DataFrame, spec: StudySpec) -> JointResults:
    """Zhang et al.'s multiplicative and additive joint laws per method, same procedure and held-out
    points (beta, E shared; estimated without the PET sweep); bootstrap of the multiplicative fit."""
    rows = pretrained(frame)
    rows = rows[rows["corpus"] == spec.pretrain_corpora[0]]
    factors = [f for f in FACTORS if rows[f].nunique() > 1]
    if not factors:
        return JointResults(None, notes=["no factor besides Df varies in this study: no joint law to fit"])
    fits = laws.fit_finetuning_results(rows, y="y", factors=tuple(factors), holdout=spec.holdout,
                                       residual=spec.residual, forms=tuple(spec.laws))
    result = JointResults(fits, data=fits.data, notes=list(fits.notes))
    for method, forms in fits.forms.items():
        jf = forms.get("multiplicative")
        if jf is None or not spec.bootstrap_resamples:
            continue
        try:
            result.boot[method] = laws.bootstrap_joint(jf, fits.data[method], runs=fits.runs[method],
                                                       n_resamples=spec.bootstrap_resamples, seed=0)
        except ValueError as error:
            result.notes.append(f"method {method!r}: bootstrap not run: {error}")
    return result


def comparison_table(joint: JointResults) -> pd.DataFrame:
    """Zhang Table 2, like for like: per (method, factor) each law's parameter count and held-out
    MAD (metric units), next to the naive nearest-point MAD and the metric's range over the fit points."""
    comp = joint.fits.comparison if joint.fits is not None else pd.DataFrame()
    if comp.empty:
        return comp
    table = comp[["method", "factor", "law", "parameters", "n_fit", "n_heldout", "heldout_mad", "naive_mad",
                  "fit_range", "fit_mad", "converged"]].copy()
    table["heldout_mad / range"] = table["heldout_mad"] / table["fit_range"]
    table["heldout_mad / naive"] = table["heldout_mad"] / table["naive_mad"]
    return table


def joint_parameter_table(joint: JointResults) -> pd.DataFrame:
    """Zhang Table 4: A, alpha per factor and the shared beta, E of the multiplicative law, with
    bootstrap percentile intervals where most resamples converged."""
    rows = []
    if joint.fits is None:
        return pd.DataFrame()
    for method, jf in joint.fits.joint.items():
        boot = joint.boot.get(method)
        for factor, fit in jf.factors.items():
            row = {"method": method, "factor": factor}
            br = joint.factor_boot(method, factor)
            intervals = br.intervals() if br is not None and br.converged.sum() >= 2 else None
            for name in ("A", "alpha", "beta", "E"):
                value = fit.params[name]
                row[name] = value if intervals is None else f"{value:.4g} [{intervals.loc[name, 'lo']:.3g}, {intervals.loc[name, 'hi']:.3g}]"
            row.update(heldout_MAD=fit.heldout_mad, converged=fit.converged,
                       bootstrap="off" if boot is None else f"{boot.n_converged}/{boot.n_resamples} converged"
                       + ("" if boot.usable() else " (too few: no interval)"))
            X, D, _, _ = joint.data[method][factor]
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
    base = pretrained(frame)
    base = base[base["corpus"] == corpus]
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
            b1, b2 = joint.factor_boot("fmt", factor), joint.factor_boot(other, factor)
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
    """Downstream CE and BLEU vs pretraining tokens for one size and corpus: the Isik laws fitted on
    the first Dp values and scored on the rest, seed noise, and the from-scratch baseline."""

    size: str
    corpus: str
    points: pd.DataFrame            # pretrain_tokens, ce, bleu (seed means), ce_spread, bleu_spread, n
    ce_fit: laws.FitResult | None
    bleu_fit: laws.FitResult | None
    monotonicity: str
    notes: list = field(default_factory=list)
    scratch: dict | None = None     # {"ce", "bleu"}: the same size finetuned from its initialisation
    fit_dp: tuple = ()              # the Dp values the laws were fitted on


def _isik_fit(law: str, runs: pd.DataFrame, column: str, points: pd.DataFrame, fit_dp, group: dict):
    """Fit `law` on the runs (one point per seed) at the fitted Dp values; score the seed means of the
    other Dp values by MAD, next to the naive 'last fitted Dp's mean' and the range over the fitted means."""
    fit_runs = runs[runs["pretrain_tokens"].isin(fit_dp)]
    fit = laws.fit_law(law, fit_runs["pretrain_tokens"].to_numpy(float), fit_runs[column].to_numpy(float),
                       holdout="none", names=["pretrain_tokens"], target=column, n_polish=1, group=group)
    fitted = points[points["pretrain_tokens"].isin(fit_dp)]
    rest = points[~points["pretrain_tokens"].isin(fit_dp)]
    fit.fit_range = float(fitted[column].max() - fitted[column].min())
    if not rest.empty:
        dp, y = rest["pretrain_tokens"].to_numpy(float), rest[column].to_numpy(float)
        fit.heldout_mad = float(np.mean(np.abs(fit.predict(dp) - y)))
        fit.heldout_naive_mad = float(np.mean(np.abs(fitted[column].iloc[-1] - y)))
        fit.n_heldout = len(rest)
    return fit


def alignment_fits(frame: pd.DataFrame, spec: StudySpec) -> list[AlignmentFit]:
    """Per Dp-sweep size and corpus, at the largest Df with the first method: isik_ce on the test
    cross-entropy (log-PPL) and isik_loglaw on BLEU vs pretraining tokens, fitted on the first
    spec.isik_fit_points Dp values and scored on the rest (as Isik et al. extrapolate); the
    misalignment check with seed-to-seed noise as its tolerance; the from-scratch baseline."""
    out = []
    method, df_value = spec.methods[0], max(spec.finetune_examples)
    scratch_rows = frame[frame["scratch"]] if "scratch" in frame else frame.iloc[:0]
    frame = pretrained(frame)
    for size in spec.dp_sweep_sizes:
        base = scratch_rows[(scratch_rows["size"] == size) & (scratch_rows["finetune_examples"] == df_value)]
        scratch = None if base.empty else {"ce": float(base["test_log_ppl"].mean()), "bleu": float(base["bleu"].mean())}
        for corpus in spec.pretrain_corpora:
            rows = frame[(frame["size"] == size) & (frame["corpus"] == corpus) & (frame["method"] == method)
                         & (frame["finetune_examples"] == df_value) & (frame["pet_size"] == reference_pet(spec, method))]
            if rows.empty:
                continue
            runs = rows.rename(columns={"test_log_ppl": "ce"}).assign(bleu=rows["bleu"].fillna(0.0))
            points = runs.groupby("pretrain_tokens", as_index=False).agg(
                ce=("ce", "mean"), bleu=("bleu", "mean"), ce_spread=("ce", lambda v: v.max() - v.min()),
                bleu_spread=("bleu", lambda v: v.max() - v.min()), n=("ce", "size"))
            dp = points["pretrain_tokens"].to_numpy(float)
            fit_dp = tuple(dp[:spec.isik_fit_points])
            notes, fits = [], {}
            for key, law in (("ce", "isik_ce"), ("bleu", "isik_loglaw")):
                try:
                    fits[key] = _isik_fit(law, runs, key, points, fit_dp, {"size": size, "corpus": corpus})
                except ValueError as error:
                    fits[key] = None
                    notes.append(f"{law} not fitted: {error}")
            out.append(AlignmentFit(size, corpus, points, fits["ce"], fits["bleu"], _monotonicity(points), notes,
                                    scratch, fit_dp))
    return out


def _monotonicity(points: pd.DataFrame) -> str:
    """Isik et al.'s misalignment signature, judged against seed-to-seed noise: a change smaller than
    the largest seed spread (and, for BLEU, than sacrebleu's reporting precision) is not a change."""
    bleu = points["bleu"].to_numpy(float)
    if bleu.max() < BLEU_FLOOR:
        return (f"not judged: BLEU is below {BLEU_FLOOR:g} at every Dp (max {bleu.max():.2f}): too close to "
                "zero to tell a trend from noise")
    ce_noise = float(points["ce_spread"].max()) if "ce_spread" in points else 0.0
    bleu_noise = max(BLEU_TOLERANCE, float(points["bleu_spread"].max()) if "bleu_spread" in points else 0.0)
    try:
        message = laws.misalignment_check(points["pretrain_tokens"].to_numpy(float), points["ce"].to_numpy(float),
                                          bleu, tolerance=ce_noise, metric_tolerance=bleu_noise).message
    except ValueError as error:
        return f"not judged: {error}"
    return f"{message} (seed noise: CE {ce_noise:.3g}, BLEU {bleu_noise:.3g})"


# --- the finetuning-length protocol -----------------------------------------------------


def run_length_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method and Df: steps run, epochs seen, best step, and why runs stopped (from extra metrics)."""
    if "extra.steps_run" not in frame:
        return pd.DataFrame()
    reasons = [c for c in frame.columns if c.startswith("extra.stop.")]
    rows = []
    for (method, df_value), g in frame.groupby(["method", "finetune_examples"], sort=True):
        row = {"method": method, "Df": int(df_value), "runs": len(g),
               "steps run (min-max)": f"{int(g['extra.steps_run'].min())}-{int(g['extra.steps_run'].max())}",
               "epochs seen (median)": float(g["extra.epochs_seen"].median()) if "extra.epochs_seen" in g else None,
               "best step (median)": float(g["best_step"].median())}
        row["stopped by"] = ", ".join(f"{c[len('extra.stop.'):]} {int(g[c].sum())}" for c in reasons if g[c].sum() > 0)
        rows.append(row)
    return pd.DataFrame(rows)


def df_signal(frame: pd.DataFrame, spec: StudySpec, method: str = "fmt") -> pd.DataFrame:
    """Per size (final checkpoint, reference PET): the test log-PPL drop from the smallest to the largest
    Df against the seed-to-seed spread at those two points (the larger of the two spreads)."""
    rows = []
    base = pretrained(frame)
    small, large = min(spec.finetune_examples), max(spec.finetune_examples)
    for size in spec.sizes:
        sub = base[(base["size"] == size) & (base["method"] == method) & (base["corpus"] == spec.pretrain_corpora[0])
                   & (base["pretrain_tokens"] == spec.token_budget) & (base["pet_size"] == reference_pet(spec, method))]
        at = {d: sub[sub["finetune_examples"] == d]["test_log_ppl"] for d in (small, large)}
        if any(v.empty for v in at.values()):
            continue
        spread = max(float(v.max() - v.min()) for v in at.values())
        drop = float(at[small].mean() - at[large].mean())
        rows.append({"size": size, f"Df {small}": float(at[small].mean()), f"Df {large}": float(at[large].mean()),
                     "drop": drop, "seed spread": spread, "seeds": int(min(len(v) for v in at.values())),
                     "drop / spread": drop / spread if spread > 0 else float("inf")})
    return pd.DataFrame(rows)
