"""Analyses of scored trajectories (Xia et al. 2023): token trends per size, double descent,
hallucinated vs real text perplexity, and how well validation perplexity predicts few-shot
accuracy compared with model size / FLOPs / tokens. numpy/scipy; plots are PNGs (Agg).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import ticker
from scipy import stats

from eval import trends
from eval.figures import new_figure, save_png
from eval.trajectory_data import SizeScores


# --- token trends -------------------------------------------------------------------------


@dataclasses.dataclass
class TrendSummary:
    """Per size: trend labels, fractions, mean trajectories; the double-descent sets."""

    results: dict[str, trends.TrendResult]
    fractions: dict[str, dict[str, float]]
    means: dict[str, dict[str, np.ndarray]]
    double_descent: dict[str, np.ndarray]  # "<small> -> larger sizes" / "<size> early -> late": [pairs] bool
    errors: dict[str, str]


def trend_summary(scores: Mapping[str, SizeScores], config: trends.TrendConfig = trends.TrendConfig(),
                  probe: str = "validation") -> TrendSummary:
    """Classify every (context, token) of every size; double descent across sizes and within each size."""
    results, means, errors, within = {}, {}, {}, {}
    for label, size in scores.items():
        ppl = size.token_ppl(probe)
        steps = size.steps.astype(float)
        try:
            results[label] = trends.classify_trends(ppl, steps, config)
        except ValueError as error:  # e.g. too few checkpoints in the window
            errors[label] = str(error)
            continue
        means[label] = trends.mean_trajectories(ppl, results[label])
        # Within one model: upward over the first half of training, downward over the rest.
        half = max(0.5, config.start_fraction)
        try:
            early = trends.classify_trends(ppl, steps, dataclasses.replace(config, start_fraction=0.0, end_fraction=half))
            late = trends.classify_trends(ppl, steps, dataclasses.replace(config, start_fraction=half, end_fraction=1.0))
            within[f"{label} early -> late"] = trends.double_descent_mask(early, [late])
        except ValueError:
            pass  # too few checkpoints to split the run in two windows
    double_descent = {}
    ordered = sorted(results, key=lambda k: scores[k].params)
    for i, label in enumerate(ordered[:-1]):
        double_descent[f"{label} -> larger sizes"] = trends.double_descent_mask(results[label], [results[k] for k in ordered[i + 1:]])
    double_descent.update(within)
    return TrendSummary(results, trends.trend_fractions(results), means, double_descent, errors)


def plot_trends(scores: Mapping[str, SizeScores], summary: TrendSummary, out_dir: Path, probe: str = "validation") -> list[Path]:
    """Mean trajectory per class against validation perplexity and against tokens seen."""
    labels = [k for k in scores if k in summary.means]
    if not labels:
        return []
    paths = []
    for name, x_label, x_of in (("trends_vs_ppl.png", "validation perplexity", lambda s: s.ppl(probe)),
                                ("trends_vs_tokens.png", "tokens seen", lambda s: s.tokens)):
        panels = {f"{cls} tokens": {k: (x_of(scores[k]), summary.means[k][cls]) for k in labels
                                    if not np.all(np.isnan(summary.means[k][cls]))} for cls in trends.CLASSES[:-1]}
        # (as eval.trends.plot_mean_trajectories, with plain-text log tick labels: much faster)
        paths.append(plot_curves(panels, out_dir / name, x_label=x_label, y_label="token perplexity (geometric mean)",
                                 invert_x=name == "trends_vs_ppl.png"))
    return paths


# --- plotting helper ----------------------------------------------------------------------


def _plain_log_labels(axis, limits: tuple[float, float]) -> None:
    """Log-axis tick labels as plain "%.3g" text (mathtext labels cost seconds per figure on a busy
    CPU); minor ticks are labelled only when the axis spans less than a decade."""
    plain = ticker.FuncFormatter(lambda value, _: f"{value:.3g}")
    axis.set_major_formatter(plain)
    low, high = sorted(limits)
    axis.set_minor_formatter(plain if low > 0 and high / low < 10 else ticker.NullFormatter())


def plot_curves(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]], path: Path, *,
                x_label: str | Mapping[str, str], y_label: str, log_x: bool = True, log_y: bool = True,
                fits: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]] | None = None,
                columns: int | None = None, invert_x: bool = False) -> Path:
    """One panel per key of `panels`, one line per series {name: (x, y)}; optional dashed fitted curves.

    x_label: one label, or one per panel title; columns: panels per row (default all in one row)."""
    columns = min(columns or len(panels), len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = new_figure(rows, columns, panel_size=(4.4, 3.5))
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (title, series) in zip(axes.flat, panels.items()):
        for index, (name, (x, y)) in enumerate(series.items()):
            color = f"C{index % 10}"
            axis.plot(np.asarray(x, float), np.asarray(y, float), marker="o", markersize=3, color=color, label=name)
            if fits and name in fits.get(title, {}):
                fx, fy = fits[title][name]
                axis.plot(np.asarray(fx, float), np.asarray(fy, float), linestyle="--", color=color, linewidth=1)
        axis.set_title(title)
        axis.set_xlabel(x_label if isinstance(x_label, str) else x_label[title])
        axis.set_ylabel(y_label)
        if log_x:
            axis.set_xscale("log")
            _plain_log_labels(axis.xaxis, axis.get_xlim())
        if log_y:
            axis.set_yscale("log")
            _plain_log_labels(axis.yaxis, axis.get_ylim())
        if invert_x:
            axis.invert_xaxis()
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return save_png(fig, path)


# --- hallucinated vs real text ------------------------------------------------------------


def perplexity_table(scores: Mapping[str, SizeScores], probes: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """{size: {probe: corpus ppl at each checkpoint}} for the probes each size has."""
    return {label: {p: size.ppl(p) for p in probes if p in size.log_probs} for label, size in scores.items()}


def plot_perplexities(scores: Mapping[str, SizeScores], probes: Sequence[str], path: Path, *, title: str) -> Path:
    """Per size, each probe's perplexity against tokens seen (real vs corrupted / contrastive text)."""
    panels = {f"{label}: {title}": {p: (size.tokens, size.ppl(p)) for p in probes if p in size.log_probs}
              for label, size in scores.items()}
    return plot_curves(panels, path, x_label="tokens seen", y_label="perplexity")


# --- perplexity vs few-shot accuracy ------------------------------------------------------


def accuracy_points(scores: Mapping[str, SizeScores], task: str, probe: str = "validation") -> dict[str, np.ndarray]:
    """Every (size, checkpoint): validation ppl, FLOPs, tokens, params, accuracy on `task`."""
    rows = [s for s in scores.values() if task in s.mc]
    if not rows:
        raise ValueError(f"no size has multiple-choice results for task {task!r}")
    return {
        "size": np.concatenate([[s.label] * len(s.steps) for s in rows]),
        "ppl": np.concatenate([s.ppl(probe) for s in rows]).astype(np.float64),
        "flops": np.concatenate([s.flops for s in rows]),
        "tokens": np.concatenate([s.tokens for s in rows]).astype(np.float64),
        "params": np.concatenate([np.full(len(s.steps), float(s.params)) for s in rows]),
        "accuracy": np.concatenate([s.mc[task]["accuracy"] for s in rows]),
    }


PREDICTORS = {"validation ppl": ("ppl", -1.0), "training FLOPs": ("flops", 1.0), "tokens seen": ("tokens", 1.0),
              "model size": ("params", 1.0)}


def predictor_quality(points: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per predictor: Spearman rho of accuracy with it (ppl negated: lower is better) and R^2 of one
    linear fit accuracy ~ a + b log(predictor) shared by all sizes and checkpoints."""
    accuracy = points["accuracy"]
    out = {}
    for name, (key, sign) in PREDICTORS.items():
        x = np.log(points[key])
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(accuracy) == 0:
            out[name] = {"spearman": float("nan"), "r2": float("nan")}
            continue
        rho = stats.spearmanr(sign * x, accuracy).statistic
        slope, intercept = np.polyfit(x, accuracy, 1)
        residual = accuracy - (intercept + slope * x)
        r2 = 1.0 - float(residual @ residual) / float(((accuracy - accuracy.mean()) ** 2).sum())
        out[name] = {"spearman": float(rho), "r2": r2}
    return out


def plot_accuracy(points_by_task: Mapping[str, Mapping[str, np.ndarray]], path: Path) -> Path:
    """One row per task: accuracy against validation ppl, training FLOPs and tokens seen; one line per size."""
    panels, x_labels = {}, {}
    for task, points in points_by_task.items():
        sizes = list(dict.fromkeys(points["size"].tolist()))
        for x_name, key in (("validation ppl", "ppl"), ("training FLOPs", "flops"), ("tokens seen", "tokens")):
            title = f"{task} vs {x_name}"
            x_labels[title] = x_name
            panels[title] = {s: (points[key][points["size"] == s], points["accuracy"][points["size"] == s]) for s in sizes}
    return plot_curves(panels, path, x_label=x_labels, y_label="accuracy", log_y=False, columns=3)
