"""Zhang et al. (2024) joint laws, fitted like for like: the multiplicative law (their Eq. 1) and
the additive law by the same two-stage procedure (their Eq. 2), leak-free.

  multiplicative  L(X, Df) = A_X / (X^alpha_X Df^beta) + E
  additive        L(X, Df) = A_X / X^alpha_X + B / Df^beta + E

A_X, alpha_X belong to one factor X (model size, pretraining tokens, PET size); the Df terms
(beta, and B for the additive law) and E are shared across factors. Stage 1 fits everything
jointly on the factors in `shared_from` (by default every factor but the PET size: the paper
estimates beta and E without the PET sweep, its footnote 2); stage 2 refits A_X, alpha_X per
factor with the shared values fixed. No leakage: a point held out by any factor (its largest X
or its largest Df) is left out of stage 1, so the shared values that score it never saw it;
stage 2 of a factor leaves out that factor's own held-out points. Points are identified across
factors by a key (the run configuration), so a run that two factors share counts once.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .fit import FitResult, check_inputs, heldout_mask, optimise, results_table, _jsonable
from .forms import LAWS, Law, _lse_const
from .optimize import Objective

__all__ = ["FORMS", "PET_FACTORS", "JointFit", "fit_joint", "joint_law", "frozen_law", "factor_theta",
           "naive_nearest_mad", "JointData", "prepare_joint_data"]

FORMS = ("multiplicative", "additive")
PET_FACTORS = ("pet_size",)
# Internal names of the shared parameters of each form, in the joint theta's leading columns.
SHARED = {"multiplicative": ("beta", "e"), "additive": ("b", "beta", "e")}
# Which columns of the per-factor law's internal theta (LAWS[form].param_names) are shared.
_SHARED_COLUMNS = {"multiplicative": (2, 3), "additive": (1, 2, 4)}   # (a, alpha, beta, e) / (a, b, e, alpha, beta)


def joint_law(n_factors: int, form: str = "multiplicative") -> Law:
    """The law over K factors with shared Df terms and E: inputs (X, Df, factor id 1..K)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    K, n_shared = n_factors, len(SHARED[form])

    def lp(theta, logx):
        k = np.rint(np.exp(logx[:, 2])).astype(int) - 1          # factor id per point
        a = theta[:, n_shared::2][:, k]                            # [S, n]
        alpha = theta[:, n_shared + 1::2][:, k]
        if form == "multiplicative":
            beta, e = theta[:, 0:1], theta[:, 1:2]
            out, ws = _lse_const([a - alpha * logx[None, :, 0] - beta * logx[None, :, 1]], e)
        else:
            b, beta, e = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
            out, ws = _lse_const([a - alpha * logx[None, :, 0], b - beta * logx[None, :, 1]], e)
        return out, (ws, k)

    def vjp(cache, gbar, logx):
        ws, k = cache
        g_x = gbar * ws[0]                                         # the factor term
        grad = np.zeros((gbar.shape[0], n_shared + 2 * K))
        if form == "multiplicative":
            grad[:, 0] = -(g_x @ logx[:, 1])
            grad[:, 1] = (gbar * ws[1]).sum(1)
        else:
            g_d = gbar * ws[1]
            grad[:, 0] = g_d.sum(1)
            grad[:, 1] = -(g_d @ logx[:, 1])
            grad[:, 2] = (gbar * ws[2]).sum(1)
        for j in range(K):
            sel = k == j
            grad[:, n_shared + 2 * j] = g_x[:, sel].sum(1)
            grad[:, n_shared + 2 * j + 1] = -(g_x[:, sel] @ logx[sel, 0])
        return grad

    per_factor = tuple(itertools.chain.from_iterable((f"a{j}", f"alpha{j}") for j in range(K)))
    natural_shared = {"multiplicative": ("beta", "E"), "additive": ("B", "beta", "E")}[form]

    def to_nat(t):
        d = dict(zip(natural_shared, [np.exp(t[0]), t[1], np.exp(t[2])] if form == "additive" else [t[0], np.exp(t[1])]))
        for j in range(K):
            d[f"A{j}"], d[f"alpha{j}"] = np.exp(t[n_shared + 2 * j]), t[n_shared + 2 * j + 1]
        return d

    def from_nat(p):
        out = [np.log(p["B"]), p["beta"], np.log(p["E"])] if form == "additive" else [p["beta"], np.log(p["E"])]
        for j in range(K):
            out += [np.log(p[f"A{j}"]), p[f"alpha{j}"]]
        return out

    formula = {"multiplicative": "L(X_k, Df) = A_k / (X_k^alpha_k Df^beta) + E",
               "additive": "L(X_k, Df) = A_k / X_k^alpha_k + B / Df^beta + E"}[form]
    return Law(f"joint_{form}_{K}", formula, SHARED[form] + per_factor,
               natural_shared + tuple(n.upper() if n.startswith("a") and not n.startswith("alpha") else n
                                      for n in per_factor),
               ("X", "Df", "factor"), lp, vjp, to_nat, from_nat, {}, "Zhang et al. 2024, Eq. 2")


def _joint_grid(K: int, form: str) -> np.ndarray:
    """Shared starts x one (a, alpha) used for every factor (Hoffmann-style grid)."""
    shared_axes = {"multiplicative": [np.arange(0, 2.5, 0.5), np.arange(-1, 1.5, 0.5)],
                   "additive": [np.arange(0, 30, 5.0), np.arange(0, 2.5, 0.5), np.arange(-1, 1.5, 0.5)]}[form]
    rows = [list(shared) + [a, alpha] * K for *shared, a, alpha in
            itertools.product(*shared_axes, np.arange(0, 30, 5.0), np.arange(0, 2.5, 0.5))]
    return np.array(rows)


def frozen_law(law: Law, frozen: tuple[int, ...]) -> Law:
    """`law` with the gradient of the `frozen` internal columns zeroed: L-BFGS then never moves
    them, so each start keeps its own values there (stage 2 per bootstrap resample)."""
    keep = np.ones(law.n_params, bool)
    keep[list(frozen)] = False

    def vjp(cache, gbar, logx):
        return law.vjp_fn(cache, gbar, logx) * keep

    return Law(law.name, law.formula, law.param_names, law.natural_names, law.input_names, law.log_predict_fn, vjp,
               law.to_natural_fn, law.from_natural_fn, law.default_grid, law.citation)


def factor_theta(form: str, shared: np.ndarray, a: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Per-factor internal theta ([S, P] of LAWS[form]) from joint shared columns [S, n_shared] and a, alpha [S]."""
    shared = np.atleast_2d(shared)
    a, alpha = np.broadcast_to(a, shared.shape[:1]), np.broadcast_to(alpha, shared.shape[:1])
    if form == "multiplicative":
        return np.column_stack([a, alpha, shared[:, 0], shared[:, 1]])
    return np.column_stack([a, shared[:, 0], shared[:, 2], alpha, shared[:, 1]])


def _stage2_grid(form: str, shared: np.ndarray) -> np.ndarray:
    grid = np.array(list(itertools.product(np.arange(0, 30, 2.5), np.arange(0, 2.05, 0.1))))
    return factor_theta(form, np.tile(shared, (len(grid), 1)), grid[:, 0], grid[:, 1])


def naive_nearest_mad(x_fit: np.ndarray, y_fit: np.ndarray, x_held: np.ndarray, y_held: np.ndarray) -> float:
    """MAD of the naive prediction 'the observed value of the nearest fitted point' (in log X, log Df;
    ties averaged): what a law has to beat to be worth more than the table itself."""
    lf, lh = np.log(x_fit), np.log(x_held)
    d = np.sqrt(((lh[:, None, :] - lf[None, :, :]) ** 2).sum(-1))
    near = np.isclose(d, d.min(axis=1, keepdims=True))
    pred = (near * y_fit[None, :]).sum(1) / near.sum(1)
    return float(np.mean(np.abs(pred - y_held)))


@dataclass
class JointData:
    """One factor's points: X, Df, y (seed means), their keys (run configurations) and own held-out mask."""

    X: np.ndarray
    Df: np.ndarray
    y: np.ndarray
    keys: list
    heldout: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return np.column_stack([self.X, self.Df])


def prepare_joint_data(data: dict, *, holdout="max", residual: str = "raw", delta: float = 1e-3,
                       target: str = "y", df_name: str = "Df") -> dict[str, JointData]:
    """Validate data (factor -> (X, Df, y) or (X, Df, y, keys)) and mark each factor's held-out points.

    Without keys a point is known only inside its factor; give keys (hashable run configurations)
    so that a run shared by two factors is recognised as one (leakage, bootstrap units).
    """
    if not data:
        raise ValueError("a joint fit needs at least one factor; got none")
    out = {}
    for name, value in data.items():
        if len(value) not in (3, 4):
            raise ValueError(f"factor {name!r}: give (X, Df, y) or (X, Df, y, keys); got {len(value)} arrays")
        X, D, Y = (np.asarray(v, float).reshape(-1) for v in value[:3])
        if not (len(X) == len(D) == len(Y)):
            raise ValueError(f"factor {name!r}: X, Df and y lengths differ ({len(X)}, {len(D)}, {len(Y)})")
        keys = list(value[3]) if len(value) == 4 else [(name, x, d) for x, d in zip(X, D)]
        if len(keys) != len(X):
            raise ValueError(f"factor {name!r}: {len(keys)} keys for {len(X)} points")
        x2, y2 = check_inputs(LAWS["multiplicative"], np.column_stack([X, D]), Y, residual=residual, delta=delta,
                              names=[name, df_name], target=target)
        mask = heldout_mask(x2, holdout, [name, df_name])
        if (~mask).sum() < 3:
            raise ValueError(f"factor {name!r}: only {(~mask).sum()} point(s) left to fit after holding out "
                             f"{holdout!r}; need at least 3")
        out[name] = JointData(x2[:, 0], x2[:, 1], y2, keys, mask)
    return out


@dataclass
class JointFit:
    """One form's joint fit: shared values, the per-factor fits, and how it was done."""

    shared: dict
    factors: dict                    # factor name -> FitResult (LAWS[form], shared values fixed)
    objective: float
    converged: bool
    seconds: float
    form: str = "multiplicative"
    group: dict = field(default_factory=dict)
    message: str = ""
    theta: list = field(default_factory=list)       # stage-1 internal parameters (shared first)
    holdout: object = "max"
    shared_from: list = field(default_factory=list)  # factors stage 1 estimated the shared values on
    residual: str = "raw"
    delta: float = 1e-3
    excluded: dict = field(default_factory=dict)     # factor -> points left out of stage 1 (held out elsewhere)
    notes: list = field(default_factory=list)

    @property
    def n_params(self) -> int:
        """Free parameters of the whole joint law: 2 per factor plus the shared ones."""
        return 2 * len(self.factors) + len(SHARED[self.form])

    def table(self) -> pd.DataFrame:
        return results_table(list(self.factors.values()))

    def to_dict(self) -> dict:
        return _jsonable({"form": self.form, "shared": self.shared, "objective": self.objective,
                          "converged": self.converged, "seconds": self.seconds, "group": self.group,
                          "message": self.message, "shared_from": self.shared_from, "residual": self.residual,
                          "n_params": self.n_params, "excluded": self.excluded, "notes": self.notes,
                          "factors": {k: v.to_dict() for k, v in self.factors.items()}})


def _shared_factors(names: list[str], shared_from) -> tuple[list[str], list[str]]:
    notes = []
    if shared_from is None:
        chosen = [n for n in names if n not in PET_FACTORS]
        if not chosen:
            chosen = list(names)
            notes.append("only PET-size points: beta and E estimated on them (the paper estimates them without "
                         "the PET sweep)")
    else:
        chosen = [n for n in shared_from if n in names]
        if not chosen:
            raise ValueError(f"shared_from={list(shared_from)} names none of the factors {names}")
    return chosen, notes


def fit_joint(data: dict, *, form: str = "multiplicative", residual: str = "raw", delta: float = 1e-3,
              holdout="max", shared_from=None, group: dict | None = None, target: str = "y",
              df_name: str = "Df") -> JointFit:
    """Zhang et al. Eq. 2 for `form`. data: factor name -> (X, Df, y[, keys]).

    residual 'raw' (prediction - observation) is the paper's Eq. 2; 'log' is Hoffmann et al.'s /
    Epoch's. Held-out points (default: each factor's largest X and largest Df) are scored per
    factor by mean absolute deviation, next to the naive nearest-point baseline.
    """
    t0 = time.perf_counter()
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    points = prepare_joint_data(data, holdout=holdout, residual=residual, delta=delta, target=target, df_name=df_name)
    names = list(points)
    stage1, notes = _shared_factors(names, shared_from)
    held_keys = {k for p in points.values() for k, h in zip(p.keys, p.heldout) if h}
    law = joint_law(len(stage1), form)
    xs, ys, excluded = [], [], {}
    for j, name in enumerate(stage1):
        p = points[name]
        use = np.array([k not in held_keys for k in p.keys])
        excluded[name] = int((~use & ~p.heldout).sum())
        xs.append(np.column_stack([p.x[use], np.full(use.sum(), j + 1.0)]))
        ys.append(p.y[use])
    X1, Y1 = np.vstack(xs), np.concatenate(ys)
    if len(Y1) <= law.n_params:
        raise ValueError(f"stage 1 of the {form} joint fit has {law.n_params} parameters but only {len(Y1)} points "
                         f"left after holding out {holdout!r} (in every factor it belongs to)")
    obj = Objective(law, np.log(X1), Y1, residual=residual, delta=delta)
    theta, f_scaled, converged, message = optimise(obj, _joint_grid(len(stage1), form))
    n_shared = len(SHARED[form])
    shared_theta = np.asarray(theta[:n_shared])
    mult_law = LAWS[form]
    frozen = frozen_law(mult_law, _SHARED_COLUMNS[form])
    factors = {}
    for name in names:
        p = points[name]
        t1 = time.perf_counter()
        fit_x, fit_y = p.x[~p.heldout], p.y[~p.heldout]
        o = Objective(frozen, np.log(fit_x), fit_y, residual=residual, delta=delta)
        th, fs, conv, msg = optimise(o, _stage2_grid(form, shared_theta), prune=((10, 0.25),), n_polish=2)
        r = FitResult(law=form, params=mult_law.to_natural(th), objective=float(fs / o.scale),
                      converged=bool(conv and converged), n_starts=int(len(_stage2_grid(form, shared_theta))),
                      seconds=time.perf_counter() - t1, n_fit=int(len(fit_y)), n_heldout=int(p.heldout.sum()),
                      fit_mad=float(np.mean(np.abs(mult_law.predict(th, fit_x) - fit_y))), residual=residual,
                      delta=delta, group={**(group or {}), "factor": name}, inputs=[name, df_name], target=target,
                      message=msg if conv else f"per-factor refit: {msg}; joint: {message}",
                      theta=[float(v) for v in th], fit_range=float(fit_y.max() - fit_y.min()))
        if p.heldout.any():
            held_x, held_y = p.x[p.heldout], p.y[p.heldout]
            r.heldout_mad = float(np.mean(np.abs(mult_law.predict(th, held_x) - held_y)))
            r.heldout_naive_mad = naive_nearest_mad(fit_x, fit_y, held_x, held_y)
        factors[name] = r
    shared = {k: v for k, v in mult_law.to_natural(factors[names[0]].theta).items() if k not in ("A", "alpha")}
    return JointFit(shared=shared, factors=factors, objective=float(f_scaled / obj.scale), converged=converged,
                    seconds=time.perf_counter() - t0, form=form, group=dict(group or {}), message=message,
                    theta=[float(v) for v in theta], holdout=holdout, shared_from=stage1, residual=residual,
                    delta=delta, excluded=excluded, notes=notes)
