"""Isik et al. diagnostics: extrapolate from the first k pretraining sizes; the misalignment signature."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .fit import fit_law
from .forms import get_law

__all__ = ["extrapolation_check", "MonotonicityReport", "misalignment_check"]


def extrapolation_check(law: str, dp, y, *, ks=None, residual: str = "log", delta: float = 1e-3,
                        grid="default") -> pd.DataFrame:
    """Fit on the first k pretraining sizes (sorted), predict the rest; one row per k.

    Columns: k, largest Dp used, parameters, converged, mean absolute and max relative error
    on the points not used. Shows how early a law's extrapolation becomes trustworthy.
    """
    dp = np.asarray(dp, float).reshape(-1)
    y = np.asarray(y, float).reshape(-1)
    if dp.shape != y.shape:
        raise ValueError(f"Dp has {dp.size} values but y has {y.size}")
    order = np.argsort(dp, kind="stable")
    dp, y = dp[order], y[order]
    sizes = np.unique(dp)
    n_params = get_law(law).n_params
    if ks is None:
        ks = range(n_params + 1, len(sizes))
    rows = []
    for k in ks:
        if k >= len(sizes) or k < 1:
            raise ValueError(f"k={k} must be between 1 and {len(sizes) - 1} (there are {len(sizes)} distinct Dp)")
        used = dp <= sizes[k - 1]
        r = fit_law(law, dp[used], y[used], residual=residual, delta=delta, grid=grid)
        pred = r.predict(dp[~used])
        rows.append({"k": k, "max_dp_used": sizes[k - 1], **r.params, "converged": r.converged,
                     "extrapolation_mad": float(np.mean(np.abs(pred - y[~used]))),
                     "max_relative_error": float(np.max(np.abs(pred - y[~used]) / np.abs(y[~used])))})
    return pd.DataFrame(rows)


@dataclass
class MonotonicityReport:
    """Is the cross-entropy monotone in Dp, is the metric, and is this the misalignment signature?"""

    ce_monotone: bool
    metric_monotone: bool
    flagged: bool
    metric_drops: list       # (Dp before, Dp after, metric drop) where the metric got worse
    message: str


def misalignment_check(dp, cross_entropy, metric, *, tolerance: float = 0.0, metric_tolerance: float | None = None,
                       higher_is_better: bool = True) -> MonotonicityReport:
    """Flag a metric that is not monotone in Dp while the cross-entropy is (Isik et al.'s signature
    of pretraining data misaligned with the downstream task). Values are averaged per Dp;
    changes smaller than `tolerance` (e.g. seed noise) are not counted as violations;
    `metric_tolerance` (default: `tolerance`) is the metric's own, in its units (e.g. BLEU points)."""
    metric_tolerance = tolerance if metric_tolerance is None else metric_tolerance
    for name, value in (("tolerance", tolerance), ("metric_tolerance", metric_tolerance)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    dp = np.asarray(dp, float).reshape(-1)
    ce = np.asarray(cross_entropy, float).reshape(-1)
    mt = np.asarray(metric, float).reshape(-1)
    if not (dp.shape == ce.shape == mt.shape):
        raise ValueError(f"Dp, cross_entropy and metric must have equal lengths; got {dp.size}, {ce.size}, {mt.size}")
    for name, v in (("Dp", dp), ("cross_entropy", ce), ("metric", mt)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN/inf")
    frame = pd.DataFrame({"dp": dp, "ce": ce, "m": mt}).groupby("dp").mean().sort_index()
    if len(frame) < 3:
        raise ValueError(f"need at least 3 distinct Dp values to judge monotonicity; got {len(frame)}")
    dce = np.diff(frame["ce"].to_numpy())
    dm = np.diff(frame["m"].to_numpy()) * (1 if higher_is_better else -1)
    ce_mono = bool(np.all(dce <= tolerance))
    m_mono = bool(np.all(dm >= -metric_tolerance))
    idx = frame.index.to_numpy()
    drops = [(float(idx[i]), float(idx[i + 1]), float(-dm[i])) for i in np.flatnonzero(dm < -metric_tolerance)]
    flagged = ce_mono and not m_mono
    if flagged:
        msg = (f"misalignment signature: cross-entropy falls monotonically with Dp but the metric gets worse "
               f"at {len(drops)} step(s), e.g. Dp {drops[0][0]:.3g} -> {drops[0][1]:.3g} (drop {drops[0][2]:.3g})")
    elif not ce_mono:
        msg = "cross-entropy is not monotone in Dp; the misalignment test does not apply"
    else:
        msg = "metric and cross-entropy both improve monotonically with Dp"
    return MonotonicityReport(ce_mono, m_mono, flagged, drops, msg)
