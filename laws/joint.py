"""Zhang et al. (2024) joint fitting: beta and E shared across factors, A_X and alpha_X per factor.

L(X, Df) = A_X / (X^alpha_X * Df^beta) + E. Stage 1 fits everything jointly on the runs of
all factors (model size, pretraining data, PET size) with beta and E tied; stage 2 refits
A_X, alpha_X per factor with beta and E fixed, giving one FitResult (and held-out MAD) per
factor.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .fit import FitResult, check_inputs, heldout_mask, optimise, results_table, _jsonable
from .forms import LAWS, Law, _lse_const
from ._threads import single_threaded_blas
from .bootstrap import BootstrapResult
from .optimize import Objective, batched_lbfgs

__all__ = ["JointFit", "fit_joint", "bootstrap_joint", "joint_law", "fixed_shared_law"]


def joint_law(n_factors: int) -> Law:
    """Multiplicative law over K factors with shared (beta, e): inputs (X, Df, factor id 1..K)."""
    K = n_factors

    def lp(theta, logx):
        k = np.rint(np.exp(logx[:, 2])).astype(int) - 1          # factor id per point
        beta, e = theta[:, 0:1], theta[:, 1:2]
        a = theta[:, 2::2][:, k]                                   # [S, n]
        alpha = theta[:, 3::2][:, k]
        t1 = a - alpha * logx[None, :, 0] - beta * logx[None, :, 1]
        out, ws = _lse_const([t1], e)
        return out, (ws, k)

    def vjp(cache, gbar, logx):
        (w1, w2), k = cache
        g1 = gbar * w1
        S = gbar.shape[0]
        grad = np.zeros((S, 2 + 2 * K))
        grad[:, 0] = -(g1 @ logx[:, 1])
        grad[:, 1] = (gbar * w2).sum(1)
        for j in range(K):
            sel = k == j
            grad[:, 2 + 2 * j] = g1[:, sel].sum(1)
            grad[:, 3 + 2 * j] = -(g1[:, sel] @ logx[sel, 0])
        return grad

    names = ("beta", "e") + tuple(itertools.chain.from_iterable((f"a{j}", f"alpha{j}") for j in range(K)))
    natural = ("beta", "E") + tuple(itertools.chain.from_iterable((f"A{j}", f"alpha{j}") for j in range(K)))

    def to_nat(t):
        d = {"beta": t[0], "E": np.exp(t[1])}
        for j in range(K):
            d[f"A{j}"], d[f"alpha{j}"] = np.exp(t[2 + 2 * j]), t[3 + 2 * j]
        return d

    def from_nat(p):
        out = [p["beta"], np.log(p["E"])]
        for j in range(K):
            out += [np.log(p[f"A{j}"]), p[f"alpha{j}"]]
        return out

    grid = {"beta": np.arange(0, 2.5, 0.5), "e": np.arange(-1, 1.5, 0.5)}
    return Law(f"joint_multiplicative_{K}", "L(X_k, Df) = A_k / (X_k^alpha_k Df^beta) + E", names, natural,
               ("X", "Df", "factor"), lp, vjp, to_nat, from_nat, grid, "Zhang et al. 2024, Eq. 2")


def _joint_grid(K: int) -> np.ndarray:
    """Shared (beta, e) x one (a, alpha) used for every factor: 5 * 5 * 6 * 5 = 750 starts."""
    rows = []
    for beta, e, a, alpha in itertools.product(np.arange(0, 2.5, 0.5), np.arange(-1, 1.5, 0.5),
                                               np.arange(0, 30, 5.0), np.arange(0, 2.5, 0.5)):
        rows.append([beta, e] + [a, alpha] * K)
    return np.array(rows)


def fixed_shared_law(beta: float, e: float) -> Law:
    """Multiplicative law with beta and e (= log E) fixed: free (a, alpha) only."""
    base = LAWS["multiplicative"]

    def full(theta):
        S = theta.shape[0]
        return np.column_stack([theta[:, 0], theta[:, 1], np.full(S, beta), np.full(S, e)])

    def lp(theta, logx):
        return base.log_predict_fn(full(theta), logx)

    def vjp(cache, gbar, logx):
        return base.vjp_fn(cache, gbar, logx)[:, :2]

    return Law("multiplicative_fixed_beta_E", base.formula, ("a", "alpha"), ("A", "alpha"), ("X", "Df"), lp, vjp,
               lambda t: {"A": np.exp(t[0]), "alpha": t[1]}, lambda p: [np.log(p["A"]), p["alpha"]],
               {"a": np.arange(0, 30, 2.5), "alpha": np.arange(0, 2.05, 0.1)}, base.citation)


@dataclass
class JointFit:
    """Shared beta and E, the per-factor fits, and the joint objective."""

    shared: dict
    factors: dict                    # factor name -> FitResult (law 'multiplicative', beta and E fixed)
    objective: float
    converged: bool
    seconds: float
    group: dict = field(default_factory=dict)
    message: str = ""
    theta: list = field(default_factory=list)       # joint internal parameters [beta, e, a_k, alpha_k, ...]
    holdout: object = "max"

    def table(self) -> pd.DataFrame:
        return results_table(list(self.factors.values()))

    def to_dict(self) -> dict:
        return _jsonable({"shared": self.shared, "objective": self.objective, "converged": self.converged,
                          "seconds": self.seconds, "group": self.group, "message": self.message,
                          "factors": {k: v.to_dict() for k, v in self.factors.items()}})


def fit_joint(data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *, residual: str = "log",
              delta: float = 1e-3, holdout="max", group: dict | None = None, target: str = "y",
              df_name: str = "Df") -> JointFit:
    """Zhang et al. Eq. 2. data: factor name -> (X values, Df values, y values).

    Held-out points (default: the largest X and the largest Df of each factor) are excluded
    from both stages and scored per factor by mean absolute deviation.
    """
    t0 = time.perf_counter()
    if not data:
        raise ValueError("fit_joint needs at least one factor; got none")
    names = list(data)
    xs, ys, masks = [], [], []
    for j, name in enumerate(names):
        X, D, Y = (np.asarray(v, float).reshape(-1) for v in data[name])
        if not (len(X) == len(D) == len(Y)):
            raise ValueError(f"factor {name!r}: X, Df and y lengths differ ({len(X)}, {len(D)}, {len(Y)})")
        x2, y2 = check_inputs(LAWS["multiplicative"], np.column_stack([X, D]), Y, residual=residual, delta=delta,
                              names=[name, df_name], target=target)
        m = heldout_mask(x2, holdout, [name, df_name])
        if (~m).sum() < 3:
            raise ValueError(f"factor {name!r}: only {(~m).sum()} point(s) left to fit after holding out {holdout!r}; "
                             f"need at least 3")
        xs.append(np.column_stack([x2, np.full(len(x2), j + 1.0)]))
        ys.append(y2)
        masks.append(m)
    K = len(names)
    law = joint_law(K)
    Xall = np.vstack(xs)
    Yall = np.concatenate(ys)
    Mall = np.concatenate(masks)
    if (~Mall).sum() <= law.n_params:
        raise ValueError(f"joint fit has {law.n_params} parameters but only {(~Mall).sum()} points to fit")
    obj = Objective(law, np.log(Xall[~Mall]), Yall[~Mall], residual=residual, delta=delta)
    theta, f_scaled, converged, message = optimise(obj, _joint_grid(K), prune=((5, 0.15), (20, 32)))
    beta, e = float(theta[0]), float(theta[1])
    shared = {"beta": beta, "E": float(np.exp(e))}
    factors = {}
    fixed = fixed_shared_law(beta, e)
    for j, name in enumerate(names):
        x2, y2, m = xs[j][:, :2], ys[j], masks[j]
        t1 = time.perf_counter()
        o = Objective(fixed, np.log(x2[~m]), y2[~m], residual=residual, delta=delta)
        th, fs, conv, msg = optimise(o, fixed.grid("default"), prune=((10, 0.25),), n_polish=2)
        full = np.array([th[0], th[1], beta, e])
        mult = LAWS["multiplicative"]
        r = FitResult(law="multiplicative", params=mult.to_natural(full), objective=float(fs / o.scale),
                      converged=bool(conv and converged), n_starts=int(fixed.grid("default").shape[0]),
                      seconds=time.perf_counter() - t1, n_fit=int((~m).sum()), n_heldout=int(m.sum()),
                      fit_mad=float(np.mean(np.abs(mult.predict(full, x2[~m]) - y2[~m]))), residual=residual,
                      delta=delta, group={**(group or {}), "factor": name}, inputs=[name, df_name], target=target,
                      message=msg if conv else f"per-factor refit: {msg}; joint: {message}",
                      theta=[float(v) for v in full])
        if m.any():
            r.heldout_mad = float(np.mean(np.abs(mult.predict(full, x2[m]) - y2[m])))
        factors[name] = r
    return JointFit(shared=shared, factors=factors, objective=float(f_scaled / obj.scale), converged=converged,
                    seconds=time.perf_counter() - t0, group=dict(group or {}), message=message,
                    theta=[float(v) for v in theta], holdout=holdout)


def bootstrap_joint(jf: JointFit, data: dict, *, n_resamples: int = 200, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Bootstrap the joint fit: resample each factor's fit points with replacement, refit all
    resamples together (shared beta, E tied), return factor -> BootstrapResult of the
    multiplicative law, usable with `critical_df`."""
    t0 = time.perf_counter()
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    names = list(jf.factors)
    if sorted(names) != sorted(data):
        raise ValueError(f"data has factors {sorted(data)} but the joint fit has {sorted(names)}")
    rng = np.random.default_rng(seed)
    xs, ys, ws = [], [], []
    for j, name in enumerate(names):
        X, D, Y = (np.asarray(v, float).reshape(-1) for v in data[name])
        x2 = np.column_stack([X, D])
        keep = ~heldout_mask(x2, jf.holdout, [name, "Df"])
        x2, y2 = x2[keep], Y[keep]
        idx = rng.integers(0, len(y2), size=(n_resamples, len(y2)))
        w = np.zeros((n_resamples, len(y2)))
        np.add.at(w, (np.arange(n_resamples)[:, None], idx), 1.0)
        xs.append(np.column_stack([x2, np.full(len(x2), j + 1.0)]))
        ys.append(y2)
        ws.append(w)
    law = joint_law(len(names))
    r0 = next(iter(jf.factors.values()))
    obj = Objective(law, np.log(np.vstack(xs)), np.concatenate(ys), residual=r0.residual, delta=r0.delta,
                    weights=np.hstack(ws))
    with single_threaded_blas():
        run = batched_lbfgs(obj, np.tile(np.asarray(jf.theta), (n_resamples, 1)), prune=(), max_iter=2000,
                            per_start_weights=True, ftol=1e-13, gtol=1e-8)
    conv = (run["status"] == 1) & np.isfinite(run["f"])
    mult = LAWS["multiplicative"]
    out = {}
    for j, name in enumerate(names):
        th = run["x"]
        thetas = np.column_stack([th[:, 2 + 2 * j], th[:, 3 + 2 * j], th[:, 0], th[:, 1]])
        out[name] = BootstrapResult(law="multiplicative", samples=pd.DataFrame([mult.to_natural(t) for t in thetas]),
                                    thetas=thetas, converged=conv, level=level, seed=seed,
                                    seconds=time.perf_counter() - t0)
    return out
