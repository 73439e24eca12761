"""Fit one law to points: validation, grid + batched L-BFGS + polish, held-out error, FitResult."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .forms import Law, get_law
from ._threads import single_threaded_blas
from .optimize import Objective, batched_lbfgs, polish

__all__ = ["FitResult", "fit_law", "check_inputs", "results_table", "heldout_mask"]


@dataclass
class FitResult:
    """One fitted law: parameters, objective, whether it converged, held-out error, provenance."""

    law: str
    params: dict                     # natural parameters (A, alpha, beta, E, ...)
    objective: float                 # sum of Huber terms on the fit points (unscaled)
    converged: bool
    n_starts: int
    seconds: float
    n_fit: int
    n_heldout: int = 0
    heldout_mad: float | None = None  # mean |prediction - y| on held-out points (natural units)
    fit_mad: float | None = None
    heldout_naive_mad: float | None = None  # the same for "the nearest fitted point's value" (a baseline)
    fit_range: float | None = None    # max - min of y over the fit points: how much the metric moves
    residual: str = "log"
    delta: float = 1e-3
    group: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    target: str = "y"
    message: str = ""
    theta: list = field(default_factory=list)   # internal parameters (for refits / bootstrap)

    def predict(self, x) -> np.ndarray:
        """Prediction of the fitted law at inputs x ([n] or [n, k])."""
        return get_law(self.law).predict(np.asarray(self.theta), check_x(get_law(self.law), x))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = {k: float(v) for k, v in self.params.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(_jsonable(self.to_dict()))

    def __str__(self) -> str:
        return results_table([self]).to_string(index=False)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def results_table(results: list[FitResult]) -> pd.DataFrame:
    """One row per fit: group, law, parameters, objective, converged, starts, seconds, held-out MAD."""
    rows = []
    for r in results:
        row = dict(r.group)
        row["law"] = r.law
        row.update(r.params)
        row.update({"objective": r.objective, "converged": r.converged, "n_fit": r.n_fit,
                    "n_heldout": r.n_heldout, "heldout_mad": r.heldout_mad, "n_starts": r.n_starts,
                    "seconds": round(r.seconds, 3)})
        if not r.converged:
            row["note"] = "NOT CONVERGED: " + r.message
        rows.append(row)
    return pd.DataFrame(rows)


def check_x(law: Law, x) -> np.ndarray:
    """Inputs as a float array [n, k] with k = the law's number of inputs; ValueError otherwise."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != law.n_inputs:
        raise ValueError(f"law {law.name!r} takes {law.n_inputs} input(s) {list(law.input_names)}; "
                         f"got x with shape {x.shape}")
    return x


def check_inputs(law: Law, x, y, *, residual: str = "log", delta: float = 1e-3,
                 names: list[str] | None = None, target: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs and targets, naming the column and row at fault."""
    x = check_x(law, x)
    y = np.asarray(y, dtype=float).reshape(-1)
    names = names or list(law.input_names)
    if residual not in ("log", "raw"):
        raise ValueError(f"residual must be 'log' or 'raw', got {residual!r}")
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a positive finite number, got {delta!r}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but {target!r} has {y.shape[0]}")
    for j in range(x.shape[1]):
        col = x[:, j]
        bad = np.flatnonzero(~np.isfinite(col))
        if bad.size:
            raise ValueError(f"column {names[j]!r} has NaN/inf at row {bad[0]} (value {col[bad[0]]})")
        bad = np.flatnonzero(col <= 0)
        if bad.size:
            raise ValueError(f"column {names[j]!r} must be positive (sizes enter as logs); "
                             f"row {bad[0]} has {col[bad[0]]}")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise ValueError(f"target {target!r} has NaN/inf at row {bad[0]} (value {y[bad[0]]})")
    if residual == "log":
        bad = np.flatnonzero(y <= 0)
        if bad.size:
            raise ValueError(f"target {target!r} must be positive for law {law.name!r}; row {bad[0]} has {y[bad[0]]}")
    if x.shape[0] <= law.n_params:
        raise ValueError(f"law {law.name!r} has {law.n_params} parameters; it needs more than "
                         f"{law.n_params} points to fit, got {x.shape[0]}")
    return x, y


def heldout_mask(x: np.ndarray, spec="max", names: list[str] | None = None) -> np.ndarray:
    """Boolean mask of held-out rows. spec: 'max' (the largest value of each factor, as Zhang
    et al. do), 'none', 'max:NAME' (largest value of that factor only), or a boolean array."""
    x = np.asarray(x, float)
    if x.ndim == 1:
        x = x[:, None]
    names = names or [f"x{j}" for j in range(x.shape[1])]
    if spec is None or (isinstance(spec, str) and spec == "none"):
        return np.zeros(x.shape[0], dtype=bool)
    if isinstance(spec, str):
        if spec == "max":
            cols = range(x.shape[1])
        elif spec.startswith("max:"):
            wanted = spec[4:].split(",")
            unknown = [w for w in wanted if w not in names]
            if unknown:
                raise ValueError(f"holdout {spec!r} names unknown input(s) {unknown}; inputs are {names}")
            cols = [names.index(w) for w in wanted]
        else:
            raise ValueError(f"holdout must be 'max', 'none', 'max:COL[,COL]' or a boolean mask; got {spec!r}")
        mask = np.zeros(x.shape[0], dtype=bool)
        for j in cols:
            mask |= x[:, j] == x[:, j].max()
        return mask
    mask = np.asarray(spec, dtype=bool).reshape(-1)
    if mask.shape[0] != x.shape[0]:
        raise ValueError(f"holdout mask has {mask.shape[0]} entries for {x.shape[0]} points")
    return mask


def fit_law(law: str | Law, x, y, *, residual: str = "log", delta: float = 1e-3, grid="default",
            holdout="none", n_polish: int = 4, names: list[str] | None = None, target: str = "y",
            group: dict | None = None, prune: tuple = ((5, 0.15), (20, 32)),
            polish_max_iter: int = 3000) -> FitResult:
    """Fit `law` to (x, y) by the SUM of Huber_delta residuals from a grid of starts.

    All starts advance together in a batched L-BFGS (hopeless ones pruned), the best
    `n_polish` distinct end points are polished with tight L-BFGS-B, the lowest objective
    wins. holdout: see `heldout_mask`; held-out points are excluded from the fit and
    scored by mean absolute deviation.
    """
    t0 = time.perf_counter()
    law = get_law(law)
    x, y = check_inputs(law, x, y, residual=residual, delta=delta, names=names, target=target)
    mask = heldout_mask(x, holdout, names or list(law.input_names))
    xf, yf = x[~mask], y[~mask]
    if xf.shape[0] <= law.n_params:
        raise ValueError(f"after holding out {int(mask.sum())} point(s) ({holdout!r}) only {xf.shape[0]} remain; "
                         f"law {law.name!r} needs more than {law.n_params}")
    starts = law.grid(grid)
    obj = Objective(law, np.log(xf), yf, residual=residual, delta=delta)
    theta, f_scaled, converged, message = optimise(obj, starts, n_polish=n_polish, prune=prune,
                                                   polish_max_iter=polish_max_iter)
    objective = float(f_scaled / obj.scale)
    pred_fit = law.predict(theta, xf)
    res = FitResult(
        law=law.name, params=law.to_natural(theta), objective=objective, converged=converged,
        n_starts=int(starts.shape[0]), seconds=0.0, n_fit=int(xf.shape[0]), n_heldout=int(mask.sum()),
        fit_mad=float(np.mean(np.abs(pred_fit - yf))), residual=residual, delta=delta,
        group=dict(group or {}), inputs=list(names or law.input_names), target=target,
        message=message, theta=[float(v) for v in theta])
    if mask.any():
        res.heldout_mad = float(np.mean(np.abs(law.predict(theta, x[mask]) - y[mask])))
    res.seconds = time.perf_counter() - t0
    return res


def optimise(obj: Objective, starts: np.ndarray, *, n_polish: int = 4, prune: tuple = ((5, 0.15), (20, 32)),
             polish_max_iter: int = 3000) -> tuple[np.ndarray, float, bool, str]:
    """Batched L-BFGS from all starts, then polish the best distinct end points; best wins."""
    with single_threaded_blas():
        return _optimise(obj, starts, n_polish=n_polish, prune=prune, polish_max_iter=polish_max_iter)


def _optimise(obj, starts, *, n_polish, prune, polish_max_iter):
    run = batched_lbfgs(obj, starts, prune=prune, settle=2 * n_polish)
    if os.environ.get("LAWS_DEBUG"):
        print(f"batched: {run['iterations']} it, {run['evaluations']} evals, status {np.bincount(run['status'], minlength=5)}")
    f = run["f"]
    finite = np.flatnonzero(np.isfinite(f))
    if finite.size == 0:
        return starts[0], float("inf"), False, "the law is undefined (NaN/inf) at every start of the grid"
    order = finite[np.argsort(f[finite], kind="stable")]
    chosen: list[np.ndarray] = []
    for i in order:  # distinct end points only: starts that met in one basin need one polish
        xi = run["x"][i]
        if all(np.max(np.abs(xi - c)) > 1e-3 for c in chosen):
            chosen.append(xi)
        if len(chosen) >= n_polish:
            break
    best = (chosen[0], float(f[order[0]]), False, "polish did not run")
    for c in chosen:
        xp, fp, conv, msg = polish(obj, c, max_iter=polish_max_iter)
        if fp < best[1] or (fp == best[1] and conv):
            best = (xp, fp, conv, msg)
    return best
