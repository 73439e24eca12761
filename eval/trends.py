"""Per-(context, token) perplexity trends across checkpoints (Xia et al. 2023), vectorised in numpy/scipy.

Input: ppl [tokens, checkpoints] (per-token perplexity exp(loss) of one model size at each of
its intermediate checkpoints, in training order). As the authors' released analysis does
(xiamengzhou/training_trajectory_analysis: utils.collect_trend_of_tokens and
analysis_section1's select_tokens_based_on_trend), over the window from p% of training (the
checkpoint nearest to p x the last step) to the end, each series divided by its first value in
the window (ppl_i / ppl_j) is regressed (OLS) on log(step) (evenly spaced checkpoints 1..n when
no steps are given; regressor='index' is the paper text's reading):
  upward    slope > 0 and p-value < alpha
  downward  slope < 0 and p-value < alpha
  stagnated neither, the window's geometric mean m is within the band (0.95-1.05) of its first
            AND of its last ppl (m / ppl), AND the variance of the window's ppl is below m
  other     everything else (including series with too few finite points)
A window of fewer than MIN_WINDOW checkpoints is too short to classify: classify_trends raises
WindowTooShort (a ValueError) rather than calling trends from three points.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from eval.figures import new_figure, save_png

CLASSES = ("stagnated", "upward", "downward", "other")
STAGNATED, UPWARD, DOWNWARD, OTHER = range(4)
REGRESSORS = ("index", "log_step")
MIN_WINDOW = 4  # checkpoints a window needs before a trend is called (ours; 3 points make any slope look tested)


class WindowTooShort(ValueError):
    """The window holds fewer than MIN_WINDOW checkpoints: too short to classify."""


@dataclasses.dataclass(frozen=True)
class TrendConfig:
    """How trends are called: window [start_fraction, end_fraction] of training, regressor, test level, band."""

    start_fraction: float = 0.3
    end_fraction: float = 1.0
    regressor: str = "log_step"
    alpha: float = 0.05
    stagnation_band: tuple[float, float] = (0.95, 1.05)
    normalize: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_fraction < self.end_fraction <= 1.0:
            raise ValueError(
                f"need 0 <= start_fraction < end_fraction <= 1, got {self.start_fraction!r}, {self.end_fraction!r}"
            )
        if self.regressor not in REGRESSORS:
            raise ValueError(f"regressor must be one of {REGRESSORS}, got {self.regressor!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        low, high = self.stagnation_band
        if not 0.0 < low <= 1.0 <= high:
            raise ValueError(f"stagnation_band must satisfy 0 < low <= 1 <= high, got {self.stagnation_band!r}")


@dataclasses.dataclass(frozen=True)
class TrendResult:
    """Per-series class labels (indices into CLASSES) and the regression behind them."""

    labels: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray
    p_value: np.ndarray
    window: tuple[int, int]  # checkpoint indices [start, stop)

    def mask(self, name: str) -> np.ndarray:
        if name not in CLASSES:
            raise ValueError(f"unknown trend class {name!r}; valid: {CLASSES}")
        return self.labels == CLASSES.index(name)

    def fractions(self) -> dict[str, float]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {name: float(c) / max(len(self.labels), 1) for name, c in zip(CLASSES, counts)}


def _checkpoint_positions(num_checkpoints: int, steps: Sequence[float] | None) -> np.ndarray:
    if steps is None:
        return np.arange(1, num_checkpoints + 1, dtype=np.float64)  # evenly spaced checkpoints
    positions = np.asarray(steps, dtype=np.float64)
    if positions.shape != (num_checkpoints,):
        raise ValueError(f"steps has shape {positions.shape}, expected ({num_checkpoints},): one per checkpoint")
    if np.any(positions <= 0) or np.any(np.diff(positions) <= 0):
        raise ValueError("steps must be positive and strictly increasing (checkpoints in training order)")
    return positions


def window_indices(num_checkpoints: int, steps: Sequence[float] | None, start_fraction: float, end_fraction: float = 1.0) -> tuple[int, int]:
    """Checkpoint index range [start, stop) nearest to start_fraction .. end_fraction of the last step."""
    positions = _checkpoint_positions(num_checkpoints, steps)
    last = positions[-1]
    start = int(np.argmin(np.abs(positions - start_fraction * last)))
    stop = int(np.argmin(np.abs(positions - end_fraction * last))) + 1
    return start, stop


def ols_slopes(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise OLS y ~ a + b x ignoring non-finite y: (slope, intercept, two-sided p-value of slope)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.broadcast_to(np.asarray(x, dtype=np.float64), y.shape)
    ok = np.isfinite(y)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = np.where(ok, x, 0.0).sum(axis=1) / n
        y_mean = np.where(ok, y, 0.0).sum(axis=1) / n
        dx = np.where(ok, x - x_mean[:, None], 0.0)
        dy = np.where(ok, y - y_mean[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = (dx * dy).sum(axis=1) / sxx
        intercept = y_mean - slope * x_mean
        dof = n - 2
        ssr = (np.where(ok, dy - slope[:, None] * dx, 0.0) ** 2).sum(axis=1)
        stderr = np.sqrt(ssr / dof / sxx)
        t_stat = np.abs(slope) / stderr
        p_value = 2.0 * stats.t.sf(t_stat, np.maximum(dof, 1))
    # Exact fits: a non-zero slope is certain, a zero slope is no evidence of a trend.
    exact = (stderr == 0) | (ssr <= 1e-24 * np.maximum((dy * dy).sum(axis=1), 1e-300))
    p_value = np.where(exact, np.where(slope != 0, 0.0, 1.0), p_value)
    undefined = (dof < 1) | ~(sxx > 0)
    nan = np.full_like(slope, np.nan)
    return np.where(undefined, nan, slope), np.where(undefined, nan, intercept), np.where(undefined, nan, p_value)


def classify_trends(ppl: Any, steps: Sequence[float] | None = None, config: TrendConfig = TrendConfig()) -> TrendResult:
    """Classify each row of ppl [series, checkpoints] as stagnated / upward / downward / other."""
    values = np.asarray(ppl, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"ppl must be 2-D [series, checkpoints], got shape {values.shape}")
    if np.any(values[np.isfinite(values)] <= 0):
        raise ValueError("perplexities must be > 0 (ppl = exp(token loss)); got a value <= 0")
    start, stop = window_indices(values.shape[1], steps, config.start_fraction, config.end_fraction)
    if stop - start < MIN_WINDOW:
        raise WindowTooShort(
            f"too short to classify: the window [{config.start_fraction}, {config.end_fraction}] of training holds "
            f"{stop - start} checkpoint(s) of {values.shape[1]}; a trend needs at least {MIN_WINDOW}"
        )
    window = values[:, start:stop]
    if config.regressor == "index":
        x = np.arange(start, stop, dtype=np.float64)
    else:
        x = np.log(_checkpoint_positions(values.shape[1], steps)[start:stop])
    finite = np.isfinite(window)
    first_index = np.argmax(finite, axis=1)
    first = window[np.arange(len(window)), first_index]
    y = window / first[:, None] if config.normalize else window
    slope, intercept, p_value = ols_slopes(y, x)

    significant = p_value < config.alpha
    with np.errstate(invalid="ignore", divide="ignore"):
        geo_mean = np.exp(np.nanmean(np.log(np.where(finite, window, np.nan)), axis=1))
        low, high = config.stagnation_band
        ratios = geo_mean[:, None] / np.stack([window[:, 0], window[:, -1]], axis=1)
        in_band = np.all((ratios > low) & (ratios < high), axis=1)  # NaN endpoints are never in band
        steady = np.nanvar(np.where(finite, window, np.nan), axis=1) < geo_mean  # the authors' variance condition
    in_band &= steady
    labels = np.full(len(values), OTHER, dtype=np.int8)
    labels[in_band & ~significant] = STAGNATED
    labels[significant & (slope > 0)] = UPWARD
    labels[significant & (slope < 0)] = DOWNWARD
    return TrendResult(labels, slope, intercept, p_value, (start, stop))


def trend_fractions(results: Mapping[str, TrendResult]) -> dict[str, dict[str, float]]:
    """{size: {class: fraction of series}} for each model size."""
    return {size: result.fractions() for size, result in results.items()}


def double_descent_mask(small: TrendResult, later: Sequence[TrendResult]) -> np.ndarray:
    """Series upward in the small model's window and downward in any later window or larger model.

    `later` are results on the same series (same validation tokens): larger models, or the same
    model classified over a later window (classify_trends with a later start_fraction).
    """
    if not later:
        raise ValueError("double descent needs at least one later window or larger model to compare with")
    for other in later:
        if other.labels.shape != small.labels.shape:
            raise ValueError(f"series counts differ ({small.labels.shape} vs {other.labels.shape}): not the same tokens")
    down_later = np.any(np.stack([other.labels == DOWNWARD for other in later]), axis=0)
    return (small.labels == UPWARD) & down_later


def mean_trajectories(ppl: Any, result: TrendResult) -> dict[str, np.ndarray]:
    """Per class, the geometric-mean ppl at every checkpoint over the series of that class (NaN if none)."""
    log_ppl = np.log(np.asarray(ppl, dtype=np.float64))
    out = {}
    for index, name in enumerate(CLASSES):
        members = log_ppl[result.labels == index]
        if len(members) == 0:
            out[name] = np.full(log_ppl.shape[1], np.nan)
        else:
            with np.errstate(invalid="ignore"):
                out[name] = np.exp(np.nanmean(members, axis=0))
    return out


def plot_mean_trajectories(
    trajectories: Mapping[str, Mapping[str, np.ndarray]],
    x_values: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    x_label: str = "validation perplexity",
    log_x: bool = True,
) -> Path:
    """One panel per class: each size's mean trajectory against x (e.g. validation ppl, tokens, FLOPs); writes a PNG."""
    fig, axes = new_figure(1, len(CLASSES) - 1, panel_size=(4.2, 3.4))
    for axis, name in zip(axes[0], CLASSES[:-1]):
        for size, per_class in trajectories.items():
            y = np.asarray(per_class[name])
            if np.all(np.isnan(y)):
                continue
            axis.plot(np.asarray(x_values[size], dtype=float), y, marker="o", markersize=3, label=size)
        axis.set_title(f"{name} tokens")
        axis.set_xlabel(x_label)
        axis.set_ylabel("token perplexity (geometric mean)")
        axis.set_yscale("log")
        if log_x:
            axis.set_xscale("log")
        if x_label.startswith("validation"):
            axis.invert_xaxis()  # training progresses as validation ppl falls
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return save_png(fig, path)
