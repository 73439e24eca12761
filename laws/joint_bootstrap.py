"""Bootstrap of a joint fit (laws.joint) over whole runs, both stages, from several starts.

The unit is a run (one finetuning run: a configuration and a seed), or, without run values,
a configuration; a run that two factors share is one unit, so it is in or out of a resample in
both factors at once. A resample draws as many runs as there are, with replacement; each point
is the mean of its drawn runs (absent if none was drawn). Stage 1 (shared values) starts from
the full-data optimum and the best few grid starts, stage 2 (A_X, alpha_X per factor, shared
values fixed at the resample's) from the full-data optimum and the resample's stage-1 values;
the lowest objective wins. A resample counts as converged when both stages met their
tolerance; intervals are only worth showing when most resamples converged.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._threads import single_threaded_blas
from .bootstrap import BootstrapResult
from .forms import LAWS
from .joint import SHARED, _SHARED_COLUMNS, JointFit, _joint_grid, factor_theta, frozen_law, joint_law, \
    prepare_joint_data
from .optimize import Objective, batched_lbfgs

__all__ = ["JointBootstrap", "bootstrap_joint"]


@dataclass
class JointBootstrap:
    """Per factor a BootstrapResult of LAWS[form]; which resamples converged; what a unit was."""

    form: str
    factors: dict                    # factor -> BootstrapResult
    converged: np.ndarray            # [B] both stages converged
    unit: str                        # "run" or "configuration"
    n_units: int
    seed: int
    seconds: float

    @property
    def n_resamples(self) -> int:
        return int(self.converged.size)

    @property
    def n_converged(self) -> int:
        return int(self.converged.sum())

    def usable(self, majority: float = 0.5) -> bool:
        """Whether more than `majority` of the resamples converged (else no interval is shown)."""
        return self.n_converged > majority * self.n_resamples

    def summary(self) -> str:
        return (f"{self.n_converged} of {self.n_resamples} resamples converged (unit: {self.unit}, "
                f"{self.n_units} units)")


def _unit_table(points: dict, runs: dict | None) -> tuple[list, np.ndarray, np.ndarray, str]:
    """(distinct keys, key index of every unit, unit values, unit name)."""
    keys, first = [], {}
    for p in points.values():
        for k, y in zip(p.keys, p.y):
            if k not in first:
                first[k] = float(y)
                keys.append(k)
    index = {k: i for i, k in enumerate(keys)}
    if runs is None:
        return keys, np.arange(len(keys)), np.array([first[k] for k in keys]), "configuration"
    missing = [k for k in keys if k not in runs or len(runs[k]) == 0]
    if missing:
        raise ValueError(f"runs has no values for {len(missing)} point(s), e.g. {missing[0]!r}")
    unit_key = np.concatenate([np.full(len(runs[k]), index[k]) for k in keys])
    values = np.concatenate([np.asarray(runs[k], float).reshape(-1) for k in keys])
    return keys, unit_key, values, "run"


def _resample_means(rng, unit_key, values, n_keys, n_resamples) -> tuple[np.ndarray, np.ndarray]:
    """Per resample and key: the mean of the drawn runs and whether any was drawn ([B, n_keys] each)."""
    U = len(values)
    draws = rng.integers(0, U, size=(n_resamples, U))
    counts = np.zeros((n_resamples, n_keys))
    sums = np.zeros((n_resamples, n_keys))
    rows = np.repeat(np.arange(n_resamples), U)
    np.add.at(counts, (rows, unit_key[draws].ravel()), 1.0)
    np.add.at(sums, (rows, unit_key[draws].ravel()), values[draws].ravel())
    present = counts > 0
    full = np.bincount(unit_key, weights=values, minlength=n_keys) / np.bincount(unit_key, minlength=n_keys)
    # absent points keep their full-data value (weight 0; a log residual needs a positive target)
    return np.where(present, sums / np.maximum(counts, 1), full[None, :]), present


def _best_of(run: dict, n_resamples: int, n_starts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per resample (rows are resample-major, n_starts each): the best start's theta and whether it converged."""
    f = run["f"].reshape(n_resamples, n_starts)
    f = np.where(np.isfinite(f), f, np.inf)
    best = np.argmin(f, axis=1)
    rows = np.arange(n_resamples) * n_starts + best
    return run["x"][rows], (run["status"][rows] == 1) & np.isfinite(f[np.arange(n_resamples), best])


def _fit_rows(obj_law, logx, y, w, starts, residual, delta):
    obj = Objective(obj_law, logx, y, residual=residual, delta=delta, weights=w)
    with single_threaded_blas():
        return batched_lbfgs(obj, starts, prune=(), max_iter=2000, per_start_weights=True, ftol=1e-13, gtol=1e-8)


def bootstrap_joint(jf: JointFit, data: dict, *, runs: dict | None = None, n_resamples: int = 200, seed: int = 0,
                    level: float = 0.95, n_grid_starts: int = 4) -> JointBootstrap:
    """Bootstrap `jf` (from laws.fit_joint on `data`). runs: key -> run values (seeds) of every point's
    key, making the run the resampling unit; without it the unit is the configuration (its mean)."""
    t0 = time.perf_counter()
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_grid_starts < 0:
        raise ValueError(f"n_grid_starts must be >= 0, got {n_grid_starts}")
    points = prepare_joint_data(data, holdout=jf.holdout, residual=jf.residual, delta=jf.delta)
    if sorted(points) != sorted(jf.factors):
        raise ValueError(f"data has factors {sorted(points)} but the joint fit has {sorted(jf.factors)}")
    rng = np.random.default_rng(seed)
    keys, unit_key, values, unit = _unit_table(points, runs)
    key_index = {k: i for i, k in enumerate(keys)}
    means, present = _resample_means(rng, unit_key, values, len(keys), n_resamples)
    form, B = jf.form, n_resamples
    n_shared = len(SHARED[form])

    # stage 1: the shared values, on the factors and points the fit used
    held_keys = {k for p in points.values() for k, h in zip(p.keys, p.heldout) if h}
    law1 = joint_law(len(jf.shared_from), form)
    x1, k1 = [], []
    for j, name in enumerate(jf.shared_from):
        p = points[name]
        use = np.array([k not in held_keys for k in p.keys])
        x1.append(np.column_stack([p.x[use], np.full(use.sum(), j + 1.0)]))
        k1 += [key_index[k] for k, u in zip(p.keys, use) if u]
    logx1, k1 = np.log(np.vstack(x1)), np.asarray(k1)
    full_obj = Objective(law1, logx1, np.array([values[unit_key == i].mean() for i in k1]), residual=jf.residual,
                         delta=jf.delta)  # the full-data points, to rank the grid starts
    grid = _joint_grid(len(jf.shared_from), form)
    grid_f = full_obj.value(grid)
    starts = np.vstack([np.asarray(jf.theta)[None], grid[np.argsort(grid_f, kind="stable")[:n_grid_starts]]])
    S = len(starts)
    y1, w1 = np.repeat(means[:, k1], S, axis=0), np.repeat(present[:, k1].astype(float), S, axis=0)
    run1 = _fit_rows(law1, logx1, y1, w1, np.tile(starts, (B, 1)), jf.residual, jf.delta)
    theta1, conv1 = _best_of(run1, B, S)
    conv1 &= present[:, k1].sum(1) > law1.n_params

    # stage 2: A_X, alpha_X per factor with the resample's shared values fixed
    law2 = frozen_law(LAWS[form], _SHARED_COLUMNS[form])
    out = {}
    converged = conv1.copy()
    for name, fit in jf.factors.items():
        p = points[name]
        k2 = np.array([key_index[k] for k in p.keys])[~p.heldout]
        full = np.asarray(fit.theta)
        a_full, alpha_full = (full[0], full[1]) if form == "multiplicative" else (full[0], full[3])
        candidates = [factor_theta(form, theta1[:, :n_shared], a_full, alpha_full)]
        if name in jf.shared_from:
            j = jf.shared_from.index(name)
            candidates.append(factor_theta(form, theta1[:, :n_shared], theta1[:, n_shared + 2 * j],
                                           theta1[:, n_shared + 2 * j + 1]))
        S2 = len(candidates)
        starts2 = np.stack(candidates, axis=1).reshape(B * S2, -1)
        y2 = np.repeat(means[:, k2], S2, axis=0)
        w2 = np.repeat(present[:, k2].astype(float), S2, axis=0)
        run2 = _fit_rows(law2, np.log(p.x[~p.heldout]), y2, w2, starts2, jf.residual, jf.delta)
        theta2, conv2 = _best_of(run2, B, S2)
        conv2 &= present[:, k2].sum(1) >= 3
        converged &= conv2
        samples = pd.DataFrame([LAWS[form].to_natural(t) for t in theta2])
        out[name] = BootstrapResult(law=form, samples=samples, thetas=theta2, converged=conv1 & conv2, level=level,
                                    seed=seed, seconds=time.perf_counter() - t0)
    return JointBootstrap(form=form, factors=out, converged=converged, unit=unit, n_units=len(values), seed=seed,
                          seconds=time.perf_counter() - t0)
