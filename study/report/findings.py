"""Plain statements of where this study agrees or disagrees with the papers, computed from its fits.

Each statement quotes the paper's finding, then what this study's numbers say, with the
numbers; the verdict is a fixed rule on those numbers (stated with it), never a judgment
tuned to the papers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from study.report.fits import AlignmentFit, DfFit, JointResults
from study.spec import StudySpec


def _verdict(agree: int, disagree: int) -> str:
    if agree == disagree == 0:
        return "not testable here"
    if disagree == 0:
        return "agrees"
    if agree == 0:
        return "disagrees"
    return f"mixed ({agree} agree, {disagree} disagree)"


def law_form(joint: JointResults, spec: StudySpec) -> str:
    head = ("**Multiplicative vs additive law** (Zhang et al.: the multiplicative joint law has the lower "
            "held-out error)")
    comp = joint.fits.comparison if joint.fits is not None else pd.DataFrame()
    if comp.empty or comp["law"].nunique() < 2:
        return head + ": not testable here (the two laws were not both fitted)."
    wide = comp.pivot_table(index=["method", "factor"], columns="law", values="heldout_mad").dropna()
    if wide.empty:
        return head + ": not testable here (no held-out points)."
    wins = int((wide["multiplicative"] < wide["additive"]).sum())
    params = comp.groupby("law")["parameters"].agg(lambda v: "/".join(str(int(x)) for x in sorted(set(v))))
    cells = "; ".join(f"{m}/{f}: {r['multiplicative']:.3g} vs {r['additive']:.3g}" for (m, f), r in wide.iterrows())
    return (f"{head}. Both fitted by the same procedure ({spec.residual} residual, Huber delta 1e-3, shared Df terms and "
            f"E, same held-out points; {params.get('multiplicative', '?')} vs {params.get('additive', '?')} parameters). "
            f"Held-out MAD ({spec.fit_metric}), multiplicative vs additive: {cells}. Rule: agrees where the "
            f"multiplicative law's held-out MAD is lower; it is lower in {wins} of {len(wide)} (method, factor) fits: "
            f"{_verdict(wins, len(wide) - wins)}.")


def model_vs_data(joint: JointResults, scale: pd.DataFrame) -> str:
    parts, agree, disagree = [], 0, 0
    if joint.fits is not None:
        for method, jf in joint.fits.joint.items():
            if "model_params" in jf.factors and "pretrain_tokens" in jf.factors:
                a_m = jf.factors["model_params"].params["alpha"]
                a_d = jf.factors["pretrain_tokens"].params["alpha"]
                parts.append(f"{method}: alpha(model) {a_m:.3g} vs alpha(data) {a_d:.3g}")
                agree += a_m > a_d
                disagree += a_m <= a_d
    per_df = ""
    if "helps_more" in scale:
        counts = scale["helps_more"].value_counts()
        per_df = (f" Per Df (exponent of a pure power law along each axis): model size helps more in "
                  f"{int(counts.get('model size', 0))} and pretraining data in {int(counts.get('pretraining data', 0))} "
                  f"of {int(counts.sum())} (method, Df) cells.")
    detail = "; ".join(parts) if parts else "no method has both factors fitted"
    return (f"**Model scaling vs pretraining-data scaling** (Zhang et al.: finetuning benefits more from model "
            f"scaling than from pretraining-data scaling). Joint-law exponents: {detail}: "
            f"{_verdict(agree, disagree)}.{per_df} Rule: agrees when alpha(model) > alpha(data).")


def pet_scaling(joint: JointResults, frame: pd.DataFrame, spec: StudySpec) -> str:
    parts, agree, disagree = [], 0, 0
    for method in ("lora", "prompt"):
        if joint.fits is None or method not in joint.fits.joint:
            continue
        factors = joint.fits.joint[method].factors
        if "pet_size" not in factors:
            continue
        a_pet = factors["pet_size"].params["alpha"]
        text = f"{method}: alpha(PET size) {a_pet:.3g}"
        if "model_params" in factors:
            a_m = factors["model_params"].params["alpha"]
            text += f" vs alpha(model) {a_m:.3g}"
            agree += a_pet < a_m
            disagree += a_pet >= a_m
        rows = frame[(frame["method"] == method) & frame["size"].isin(spec.pet_sweep_sizes)
                     & (frame["pretrain_tokens"] == spec.token_budget)]
        means = rows.groupby(["pet_size", "finetune_examples"])["y"].mean().unstack(0)
        if means.shape[1] >= 2:
            change = (means.iloc[:, -1] - means.iloc[:, 0]).mean()
            text += f" (largest minus smallest PET size: {change:+.3g} {spec.fit_metric}, mean over Df)"
        parts.append(text)
    if not parts:
        return ("**PET parameter scaling** (Zhang et al.: scaling PET parameters is generally ineffective): "
                "not testable here (no PET-size sweep was fitted).")
    return (f"**PET parameter scaling** (Zhang et al.: scaling PET parameters is generally ineffective). "
            f"{'; '.join(parts)}: {_verdict(agree, disagree)}. Rule: agrees when alpha(PET size) < alpha(model).")


def critical_df(crit: pd.DataFrame, spec: StudySpec) -> str:
    head = ("**Critical Df** (Zhang et al.: the best method depends on task and Df; FMT needs much more "
            "finetuning data than PET before it wins).")
    if crit.empty:
        return head + " Not testable here (FMT and a PET method were not both fitted)."
    found = crit[crit["critical_Df"].notna()]
    lines = []
    for _, row in found.iterrows():
        where = "within the studied Df" if row["in_observed_range"] else "extrapolated beyond the studied Df"
        lines.append(f"{row['pair']} at {row['factor']}={row['value']:.3g}: curves cross at Df = {row['critical_Df']:.4g} "
                     f"({where}; {row['better_at_largest_Df']} is better above it)")
    none = crit[crit["critical_Df"].isna()]
    if not none.empty:
        better = none["better_at_largest_Df"].value_counts().to_dict()
        lines.append(f"{len(none)} (pair, factor value) combination(s) do not cross up to "
                     f"{100 * max(spec.finetune_examples):,} examples (better there: {better})")
    agree = int(((crit["critical_Df"].notna()) & (crit["better_at_largest_Df"] == "fmt")).sum())
    return (head + " Here: " + "; ".join(lines) + f". Rule: agrees where the curves cross with FMT better above the "
            f"crossing; {agree} of {len(crit)}: {_verdict(agree, len(crit) - agree)}.")


def df_power_law(fits: list[DfFit], spec: StudySpec) -> str:
    head = "**Power law in Df** (Zhang et al.: loss falls as a power law in finetuning data)"
    scored = [f.fit for f in fits if f.fit is not None and f.fit.heldout_mad is not None
              and f.fit.heldout_naive_mad is not None]
    if not scored:
        return head + ": not testable here (no single-variable fit had a held-out point)."
    mad = np.array([r.heldout_mad for r in scored])
    naive = np.array([r.heldout_naive_mad for r in scored])
    span = np.array([r.fit_range for r in scored])
    beats = int((mad < naive).sum())
    return (f"{head}. The {spec.df_law} law fitted per size and method predicts the held-out largest Df with a median "
            f"MAD of {np.median(mad):.3g} {spec.fit_metric} (max {mad.max():.3g}; {len(mad)} fits), against a median of "
            f"{np.median(naive):.3g} for the naive 'value at the largest fitted Df' and a median move of "
            f"{np.median(span):.3g} across the fitted Df. Rule: agrees where the law beats the naive prediction; it does "
            f"in {beats} of {len(mad)} fits: {_verdict(beats, len(mad) - beats)}.")


def protocol(signal: pd.DataFrame, lengths: pd.DataFrame, spec: StudySpec) -> str:
    """Whether the Df axis measures data: the smallest Df trained as long as the rule says, and FMT's
    drop from the smallest to the largest Df stands out of seed noise (rule: drop >= 3 x spread)."""
    lines = []
    if spec.max_steps is not None and not lengths.empty:
        smallest = lengths[lengths["Df"] == min(spec.finetune_examples)]
        low = min(int(v.split("-")[0]) for v in smallest["steps run (min-max)"]) if not smallest.empty else 0
        floor = spec.min_steps or 0
        lines.append(f"the smallest Df ({min(spec.finetune_examples)}) ran {low} steps or more (rule: at least "
                     f"{floor}, at most {spec.max_steps}): {'as the rule says' if low >= floor else 'SHORTER than the rule'}")
    if not signal.empty:
        ok = int((signal["drop / spread"] >= 3).sum())
        cells = "; ".join(f"{r['size']}: {r['drop']:.3g} vs {r['seed spread']:.3g}" for _, r in signal.iterrows())
        lines.append(f"FMT test log-PPL drop from the smallest to the largest Df vs the seed spread at those points: "
                     f"{cells}. Rule: the Df axis is measured when the drop is at least 3x the spread; it is in "
                     f"{ok} of {len(signal)} sizes")
    if not lines:
        return "**Finetuning protocol**: not checkable here (no run lengths recorded, or fewer than two seeds)."
    return "**Finetuning protocol** (this study's own check): " + "; ".join(lines) + "."


def alignment(fits: list[AlignmentFit]) -> str:
    head = ("**Pretraining-data alignment** (Isik et al.: with aligned pretraining data downstream CE and BLEU "
            "both improve with more pretraining; with misaligned data BLEU can fluctuate or fall while CE improves).")
    if not fits:
        return head + " Not testable here (no alignment runs)."
    lines, agree, disagree = [], 0, 0
    for f in fits:
        lines.append(f"{f.size}/{f.corpus}: {f.monotonicity}")
        if f.monotonicity.startswith("not judged"):
            continue
        flagged = "misalignment signature" in f.monotonicity
        both_improve = f.monotonicity.startswith("metric and cross-entropy both improve")
        if f.corpus == "aligned":
            agree += both_improve
            disagree += not both_improve
        elif f.corpus == "misaligned":
            agree += flagged  # the paper's warning shows up
            lines[-1] += "" if flagged else " (the paper's misalignment effect does not show here)"
    return (head + " Here: " + "; ".join(lines) + f". Aligned runs: {_verdict(agree, disagree)} (rule: agrees when both "
            "improve monotonically beyond seed noise)." + _aligned_vs_misaligned_ce(fits) + _isik_extrapolation(fits)
            + _scratch(fits))


def _isik_extrapolation(fits: list[AlignmentFit]) -> str:
    """How well the CE law fitted on the first Dp values predicts the rest (Isik et al. extrapolate)."""
    scored = [(f, f.ce_fit) for f in fits if f.ce_fit is not None and f.ce_fit.heldout_mad is not None]
    if not scored:
        return ""
    beats = sum(r.heldout_mad < r.heldout_naive_mad for _, r in scored)
    cells = "; ".join(f"{f.size}/{f.corpus} {r.heldout_mad:.3g} vs {r.heldout_naive_mad:.3g}" for f, r in scored)
    return (f" CE law fitted on the first {len(scored[0][0].fit_dp)} Dp values, held-out MAD on the rest vs the naive "
            f"'last fitted value': {cells}; rule: the law predicts where it beats the naive value, which it does in "
            f"{beats} of {len(scored)}.")


def _scratch(fits: list[AlignmentFit]) -> str:
    """Pretraining against finetuning from scratch (Isik et al.'s horizontal baseline)."""
    cells = []
    for f in fits:
        if f.scratch is not None and not f.points.empty:
            cells.append((f"{f.size}/{f.corpus}", f.points["ce"].iloc[-1], f.scratch["ce"]))
    if not cells:
        return ""
    better = sum(ce < base for _, ce, base in cells)
    return (f" From-scratch baseline (same size, largest Df): pretrained CE at the largest Dp vs from scratch: "
            + "; ".join(f"{name} {ce:.3f} vs {base:.3f}" for name, ce, base in cells)
            + f"; pretraining helps (lower CE) in {better} of {len(cells)}.")


def _aligned_vs_misaligned_ce(fits: list[AlignmentFit]) -> str:
    """Downstream CE after aligned vs misaligned pretraining at the same size and Dp (Isik et al.: aligned data
    gives the better downstream CE)."""
    by = {(f.size, f.corpus): f.points.set_index("pretrain_tokens")["ce"] for f in fits}
    gaps = {}
    for size in dict.fromkeys(f.size for f in fits):
        if (size, "aligned") in by and (size, "misaligned") in by:
            gap = (by[(size, "misaligned")] - by[(size, "aligned")]).dropna()
            if not gap.empty:
                gaps[size] = gap
    if not gaps:
        return ""
    cells = pd.concat(gaps.values())
    lower = int((cells > 0).sum())
    trend = "; ".join(f"{size} {gap.iloc[0]:+.3f} at Dp {gap.index[0]:,.0f} -> {gap.iloc[-1]:+.3f} at {gap.index[-1]:,.0f}"
                     for size, gap in gaps.items())
    return (f" Aligned vs misaligned downstream CE at the same size and Dp: aligned pretraining gives the lower CE in "
            f"{lower} of {len(cells)} cells ({_verdict(lower, len(cells) - lower)}; rule: agrees where aligned is lower); "
            f"misaligned minus aligned CE: {trend}.")


def findings(spec: StudySpec, frame: pd.DataFrame, df_fits: list[DfFit], joint: JointResults, scale: pd.DataFrame,
             crit: pd.DataFrame, align: list[AlignmentFit] | None, signal: pd.DataFrame | None = None,
             lengths: pd.DataFrame | None = None) -> list[str]:
    """Every statement, in report order; the caveat about scale comes first."""
    params = frame[~frame["scratch"]].groupby("size")["model_params"].first() if "scratch" in frame \
        else frame.groupby("size")["model_params"].first()
    out = [f"Scale of this study: {len(params)} size(s) from {params.min():,.0f} to {params.max():,.0f} non-embedding "
           f"parameters, {spec.token_budget:,} pretraining tokens, Df from {min(spec.finetune_examples)} to "
           f"{max(spec.finetune_examples)} examples; the papers use 1B-16B models and billions of tokens, so agreement "
           f"or disagreement here is about this scale only.",
           protocol(signal if signal is not None else pd.DataFrame(), lengths if lengths is not None else pd.DataFrame(),
                    spec),
           df_power_law(df_fits, spec), law_form(joint, spec), model_vs_data(joint, scale), pet_scaling(joint, frame, spec),
           critical_df(crit, spec)]
    if align is not None:
        out.append(alignment(align))
    return out
