"""The law registry: each law's parameters, log-prediction, gradient (as a VJP) and init grid.

Every law is evaluated for many parameter vectors at once (one row per optimiser start),
so `log_predict` takes theta of shape [S, P] and inputs of shape [n, k] and returns
[S, n]. Optimisation happens in an internal, unconstrained space (log-coefficients,
Hoffmann et al.'s log-sum-exp form); `to_natural` / `from_natural` convert to the
parameters a paper reports (A, alpha, beta, E, ...).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["Law", "LAWS", "get_law", "grid_preset", "GRID_PRESETS"]


def _lse_terms(terms: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Log-sum-exp over a list of equally shaped arrays, plus the softmax weight of each term."""
    top = np.array(terms[0], copy=True)
    for t in terms[1:]:
        np.maximum(top, t, out=top)
    exps = []
    for t in terms:
        e = np.subtract(t, top)
        np.exp(e, out=e)
        exps.append(e)
    total = exps[0].copy()
    for e in exps[1:]:
        total += e
    inv = np.reciprocal(total)
    for e in exps:
        e *= inv
    np.log(total, out=total)
    total += top
    return total, exps


def _lse_const(varying: list[np.ndarray], const: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log(sum(exp(varying)) + exp(const)) with softmax weights; const is one value per row [S, 1].

    Fast path without the max shift (the terms stay far inside exp's range for any sensible
    parameters); rows that over- or underflow are redone with the shifted, stable form.
    """
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        exps = [np.exp(t) for t in varying]
        c = np.exp(const)
        total = exps[0] + c
        for e in exps[1:]:
            total += e
        inv = np.reciprocal(total)
        out = np.log(total)
    bad = ~np.isfinite(out).all(axis=1) | ~np.isfinite(inv).all(axis=1) | (total <= 0).any(axis=1)
    for e in exps:
        e *= inv
    weights = exps + [c * inv]
    if bad.any():
        rows = np.flatnonzero(bad)
        o2, w2 = _lse_terms([t[rows] for t in varying] + [np.broadcast_to(const[rows], varying[0][rows].shape)])
        out[rows] = o2
        for w, wr in zip(weights, w2):
            w[rows] = wr
    return out, weights


@dataclass(frozen=True)
class Law:
    """One law form: internal parameter names, how to predict, and how to differentiate."""

    name: str
    formula: str
    param_names: tuple[str, ...]          # internal (optimised) parameters
    natural_names: tuple[str, ...]        # reported parameters
    input_names: tuple[str, ...]          # what each input column means
    log_predict_fn: Callable = field(repr=False)   # (theta[S,P], logx[n,k]) -> (logpred[S,n], cache)
    vjp_fn: Callable = field(repr=False)           # (cache, gbar[S,n], logx) -> grad[S,P]
    to_natural_fn: Callable = field(repr=False)    # theta[P] -> dict
    from_natural_fn: Callable = field(repr=False)  # dict -> theta[P]
    default_grid: dict = field(repr=False, default_factory=dict)
    citation: str = ""

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def n_inputs(self) -> int:
        return len(self.input_names)

    def log_predict(self, theta: np.ndarray, logx: np.ndarray):
        """log of the prediction for every start (rows of theta) and point (rows of logx)."""
        return self.log_predict_fn(np.atleast_2d(theta), logx)

    def vjp(self, cache, gbar: np.ndarray, logx: np.ndarray) -> np.ndarray:
        """Gradient of sum(gbar * logpred) w.r.t. theta, per start: shape [S, P]."""
        return self.vjp_fn(cache, gbar, logx)

    def predict(self, params: dict | np.ndarray, x: np.ndarray) -> np.ndarray:
        """Prediction in natural units for natural params (dict) or internal theta, at inputs x [n, k]."""
        theta = self.from_natural(params) if isinstance(params, dict) else np.asarray(params, float)
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            logpred, _ = self.log_predict(theta[None, :], np.log(x))
        return np.exp(logpred[0])

    def to_natural(self, theta: np.ndarray) -> dict:
        # exp of a huge log-parameter is inf in natural units; FitResult.theta keeps the finite log value.
        with np.errstate(over="ignore"):
            return {k: float(v) for k, v in self.to_natural_fn(np.asarray(theta, float)).items()}

    def from_natural(self, params: dict) -> np.ndarray:
        missing = [k for k in self.natural_names if k not in params]
        if missing:
            raise ValueError(f"law {self.name!r} needs parameters {list(self.natural_names)}; missing {missing}")
        return np.asarray(self.from_natural_fn(params), dtype=float)

    def grid(self, preset: str | np.ndarray | None = "default") -> np.ndarray:
        return grid_preset(self, preset)


def _log(v: float) -> float:
    return float(np.log(v)) if v > 0 else -np.inf


# --- power: L = A / D^beta + E  (internal a, beta, e) --------------------------------

def _power_lp(theta, logx):
    a, beta, e = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
    t1 = a - beta * logx[None, :, 0]
    return _lse_const([t1], e)


def _power_vjp(cache, gbar, logx):
    w1, w2 = cache
    g1 = gbar * w1
    return np.stack([g1.sum(1), -(g1 * logx[None, :, 0]).sum(1), (gbar * w2).sum(1)], axis=1)


# --- pure power: L = A / D^beta (internal a, beta) -------------------------------------

def _pure_lp(theta, logx):
    return theta[:, 0:1] - theta[:, 1:2] * logx[None, :, 0], None


def _pure_vjp(cache, gbar, logx):
    return np.stack([gbar.sum(1), -(gbar @ logx[:, 0])], axis=1)


# --- Isik downstream CE: L = E + A / Dp^alpha (internal a, alpha, e) -------------------
# (same computation as power, different names)

# --- multiplicative joint: L = A / (X^alpha Df^beta) + E (internal a, alpha, beta, e) --

def _mult_lp(theta, logx):
    a, alpha, beta, e = (theta[:, i:i + 1] for i in range(4))
    t1 = a - alpha * logx[None, :, 0] - beta * logx[None, :, 1]
    return _lse_const([t1], e)


def _mult_vjp(cache, gbar, logx):
    w1, w2 = cache
    g1 = gbar * w1
    return np.stack([g1.sum(1), -(g1 @ logx[:, 0]), -(g1 @ logx[:, 1]), (gbar * w2).sum(1)], axis=1)


# --- additive joint: L = A / X^alpha + B / Df^beta + E (internal a, b, e, alpha, beta) --

def _add_lp(theta, logx):
    a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
    t1 = a - alpha * logx[None, :, 0]
    t2 = b - beta * logx[None, :, 1]
    return _lse_const([t1, t2], e)


def _add_vjp(cache, gbar, logx):
    w1, w2, w3 = cache
    g1, g2 = gbar * w1, gbar * w2
    return np.stack([g1.sum(1), g2.sum(1), (gbar * w3).sum(1), -(g1 @ logx[:, 0]), -(g2 @ logx[:, 1])], axis=1)


# --- Isik log-law: f = (log(A Dp^alpha))^beta (internal a = log A, alpha, beta) --------

def _loglaw_lp(theta, logx):
    a, alpha, beta = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
    u = a + alpha * logx[None, :, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        logu = np.where(u > 0, np.log(np.where(u > 0, u, 1.0)), np.nan)
    return beta * logu, (u, logu, beta)


def _loglaw_vjp(cache, gbar, logx):
    u, logu, beta = cache
    gu = gbar * beta / u
    return np.stack([gu.sum(1), gu @ logx[:, 0], (gbar * logu).sum(1)], axis=1)


_HOFFMANN = {  # Hoffmann et al. 2022 approach 3 (internal names of the additive law)
    "a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0), "e": np.arange(-1, 1.5, 0.5),
    "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5),
}

LAWS: dict[str, Law] = {
    "power": Law(
        "power", "L(D) = A / D^beta + E", ("a", "beta", "e"), ("A", "beta", "E"), ("D",),
        _power_lp, _power_vjp,
        lambda t: {"A": np.exp(t[0]), "beta": t[1], "E": np.exp(t[2])},
        lambda p: [_log(p["A"]), p["beta"], _log(p["E"])],
        {"a": np.arange(0, 30, 5.0), "beta": np.arange(0, 2.5, 0.5), "e": np.arange(-1, 1.5, 0.5)},
        "Kaplan et al. 2020; Hoffmann et al. 2022 (log-sum-exp form)"),
    "pure_power": Law(
        "pure_power", "L(D) = A / D^beta", ("a", "beta"), ("A", "beta"), ("D",), _pure_lp, _pure_vjp,
        lambda t: {"A": np.exp(t[0]), "beta": t[1]}, lambda p: [_log(p["A"]), p["beta"]],
        {"a": np.arange(-5, 30, 5.0), "beta": np.arange(-0.5, 2.5, 0.5)}, "Kaplan et al. 2020 (no offset)"),
    "multiplicative": Law(
        "multiplicative", "L(X, Df) = A / (X^alpha * Df^beta) + E", ("a", "alpha", "beta", "e"),
        ("A", "alpha", "beta", "E"), ("X", "Df"), _mult_lp, _mult_vjp,
        lambda t: {"A": np.exp(t[0]), "alpha": t[1], "beta": t[2], "E": np.exp(t[3])},
        lambda p: [_log(p["A"]), p["alpha"], p["beta"], _log(p["E"])],
        {"a": np.arange(0, 30, 5.0), "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5),
         "e": np.arange(-1, 1.5, 0.5)},
        "Zhang et al. 2024, Eq. 1"),
    "additive": Law(
        "additive", "L(X, Df) = A / X^alpha + B / Df^beta + E", ("a", "b", "e", "alpha", "beta"),
        ("A", "alpha", "B", "beta", "E"), ("X", "Df"), _add_lp, _add_vjp,
        lambda t: {"A": np.exp(t[0]), "alpha": t[3], "B": np.exp(t[1]), "beta": t[4], "E": np.exp(t[2])},
        lambda p: [_log(p["A"]), _log(p["B"]), _log(p["E"]), p["alpha"], p["beta"]],
        _HOFFMANN, "Hoffmann et al. 2022 (Chinchilla), approach 3"),
    "isik_ce": Law(
        "isik_ce", "L(Dp) = E + A / Dp^alpha", ("a", "alpha", "e"), ("A", "alpha", "E"), ("Dp",),
        _power_lp, _power_vjp,
        lambda t: {"A": np.exp(t[0]), "alpha": t[1], "E": np.exp(t[2])},
        lambda p: [_log(p["A"]), p["alpha"], _log(p["E"])],
        {"a": np.arange(0, 30, 5.0), "alpha": np.arange(0, 2.5, 0.5), "e": np.arange(-1, 1.5, 0.5)},
        "Isik et al. 2024, downstream cross-entropy"),
    "isik_loglaw": Law(
        "isik_loglaw", "f(Dp) = (log(A * Dp^alpha))^beta", ("a", "alpha", "beta"), ("A", "alpha", "beta"),
        ("Dp",), _loglaw_lp, _loglaw_vjp,
        lambda t: {"A": np.exp(t[0]), "alpha": t[1], "beta": t[2]},
        lambda p: [_log(p["A"]), p["alpha"], p["beta"]],
        {"a": np.array([-20.0, -10.0, -5.0, -2.0, 0.0, 2.0, 5.0]),
         "alpha": np.array([0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
         "beta": np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])},
        "Isik et al. 2024, translation quality (BLEU/COMET) log-law"),
}

GRID_PRESETS: dict[str, dict[str, dict]] = {
    # preset name -> law name -> internal-parameter axes
    "hoffmann": {"additive": _HOFFMANN},
    "porian": {name: {"a": np.arange(0, 30, 5.0), names[1]: np.arange(0, 0.4, 0.1), "e": np.arange(-1, 1.5, 0.5)}
               for name, names in (("power", ("a", "beta", "e")), ("isik_ce", ("a", "alpha", "e")))},
}


def get_law(name: str | Law) -> Law:
    """The registered law called `name` (a Law passes through)."""
    if isinstance(name, Law):
        return name
    if name not in LAWS:
        raise ValueError(f"unknown law {name!r}; valid laws: {sorted(LAWS)}")
    return LAWS[name]


def _product(axes: dict, order: tuple[str, ...]) -> np.ndarray:
    return np.array(list(itertools.product(*(np.asarray(axes[k], float) for k in order))), dtype=float)


def grid_preset(law: Law, preset: str | np.ndarray | None = "default") -> np.ndarray:
    """Initial points [S, P] in the law's internal space: 'default', a named preset, or an array."""
    if preset is None or (isinstance(preset, str) and preset == "default"):
        return _product(law.default_grid, law.param_names)
    if isinstance(preset, str):
        if preset not in GRID_PRESETS:
            raise ValueError(f"unknown grid preset {preset!r}; valid: ['default', {', '.join(map(repr, GRID_PRESETS))}]")
        if law.name not in GRID_PRESETS[preset]:
            raise ValueError(f"grid preset {preset!r} does not fit law {law.name!r} (params {list(law.param_names)}); "
                             f"it is defined for laws {sorted(GRID_PRESETS[preset])}")
        return _product(GRID_PRESETS[preset][law.name], law.param_names)
    grid = np.asarray(preset, dtype=float)
    if grid.ndim != 2 or grid.shape[1] != law.n_params:
        raise ValueError(f"grid array must have shape [starts, {law.n_params}] for law {law.name!r} "
                         f"(internal params {list(law.param_names)}); got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise ValueError("grid array contains NaN or inf")
    return grid
