"""Huber objective and a batched L-BFGS in numpy where all starts advance together.

The fit of a law from a grid of starts is many small independent problems with the same
data. Stepping them as one [S, P] array turns thousands of tiny scipy calls into a few
hundred vectorised numpy passes; hopeless starts are pruned as the run goes, and the
best few are polished with a tight scipy L-BFGS-B so the optimum is really reached.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from .forms import Law

__all__ = ["huber", "Objective", "batched_lbfgs", "polish"]


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber_delta(r): r^2/2 inside |r| <= delta, delta(|r| - delta/2) outside."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass
class Objective:
    """Sum of Huber residuals for one law on one data set, vectorised over starts.

    residual='log': log(prediction) - log(y) (Hoffmann et al.); 'raw': prediction - y
    (Zhang et al.). `weights` ([n] or [S, n]) multiplies each point's term; bootstrap
    resamples are count weights. `y` may be [S, n] too (one target vector per start: a
    bootstrap over runs averages the resampled runs of each point). The optimiser works on the
    objective times `scale` (1/delta^2 by default) so that tolerances are not met prematurely.
    """

    law: Law
    logx: np.ndarray          # [n, k]
    y: np.ndarray             # [n] or [S, n]
    residual: str = "log"
    delta: float = 1e-3
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.logy = np.log(self.y) if self.residual == "log" else None
        self.scale = 1.0 / self.delta ** 2

    def _w(self, idx):
        if self.weights is None:
            return None
        w = self.weights
        return w[idx] if w.ndim == 2 else w[None, :]

    def _target(self, idx):
        """The targets (log targets for residual 'log') of the starts `idx`, broadcastable to [S, n]."""
        t = self.logy if self.residual == "log" else self.y
        return t[idx] if t.ndim == 2 else t[None, :]

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """Residuals [S, n] for internal parameters theta [S, P]."""
        with np.errstate(over="ignore", invalid="ignore"):
            logpred, _ = self.law.log_predict(theta, self.logx)
            pred = logpred if self.residual == "log" else np.exp(logpred)
            return pred - self._target(slice(None))

    def value(self, theta: np.ndarray, idx=None) -> np.ndarray:
        """Unscaled objective (the sum of Huber terms) per start."""
        r = self.residuals(np.atleast_2d(theta))
        h = huber(r, self.delta)
        w = self._w(idx if idx is not None else slice(None))
        if w is not None:
            h = h * w
        out = h.sum(1)
        return np.where(np.isfinite(out), out, np.inf)

    def value_and_grad(self, theta: np.ndarray, idx=None) -> tuple[np.ndarray, np.ndarray]:
        """Scaled objective [S] and its analytic gradient [S, P]; inf where the law is undefined.

        Large batches are evaluated in row chunks of about CHUNK elements so the [S, n]
        temporaries stay in cache (the evaluation is memory-bound).
        """
        theta = np.atleast_2d(theta)
        rows = max(1, self.CHUNK // max(1, self.logx.shape[0]))
        if theta.shape[0] <= rows:
            return self._value_and_grad(theta, idx)
        fs, gs = [], []
        for lo in range(0, theta.shape[0], rows):
            sub = None if idx is None else idx[lo:lo + rows]
            f, g = self._value_and_grad(theta[lo:lo + rows], sub)
            fs.append(f)
            gs.append(g)
        return np.concatenate(fs), np.concatenate(gs)

    CHUNK = 1 << 15

    def _value_and_grad(self, theta: np.ndarray, idx=None) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            logpred, cache = self.law.log_predict(theta, self.logx)
            target = self._target(idx if idx is not None else slice(None))
            if self.residual == "log":
                r = logpred - target
                dr = 1.0
            else:
                pred = np.exp(logpred)
                r = pred - target
                dr = pred
            dh = np.clip(r, -self.delta, self.delta)
            h = dh * (r - 0.5 * dh)          # = Huber_delta(r), one pass fewer than huber()
            w = self._w(idx if idx is not None else slice(None))
            if w is not None:
                h = h * w
                dh = dh * w
            f = h.sum(1) * self.scale
            g = self.law.vjp(cache, dh * dr * self.scale, self.logx)
        bad = ~np.isfinite(f) | ~np.all(np.isfinite(g), axis=1)
        f = np.where(bad, np.inf, f)
        g = np.where(bad[:, None], 0.0, g)
        return f, g


def batched_lbfgs(objective: Objective, x0: np.ndarray, *, max_iter: int = 300, memory: int = 10,
                  ftol: float = 1e-10, gtol: float = 1e-7, prune: tuple = ((5, 0.15), (20, 32)),
                  per_start_weights: bool = False, settle: int | None = None) -> dict:
    """Minimise the objective from every row of x0 at once; returns x, f (scaled), iterations, status.

    prune: (iteration, keep) pairs; at that iteration only the best `keep` starts (a
    fraction if < 1, else a count) go on, the rest are dropped as hopeless. Pass () to
    keep all (bootstrap: each row is a different resample). status per start: 0 running,
    1 converged (f or gradient tolerance), 2 line search failed, 3 pruned, 4 iteration cap.
    settle: after the last prune, stop once the best `settle` starts have finished and every
    start still running is more than 1% worse than them (the polish takes it from there).
    """
    x = np.array(x0, dtype=float)
    S, P = x.shape
    idx_all = np.arange(S)
    f, g = objective.value_and_grad(x, idx_all if per_start_weights else None)
    status = np.where(np.isfinite(f), 0, 3)
    s_hist = np.zeros((S, memory, P))
    y_hist = np.zeros((S, memory, P))
    rho = np.zeros((S, memory))
    gamma = np.ones(S)
    first = np.ones(S, dtype=bool)
    prune = list(prune)
    it = n_eval = 0
    for it in range(1, max_iter + 1):
        act = np.flatnonzero(status == 0)
        if act.size == 0:
            break
        slot = (it - 1) % memory
        # two-loop recursion for the active starts; zero history pairs are no-ops
        q = g[act].copy()
        Sa, Ya, Ra = s_hist[act], y_hist[act], rho[act]
        alphas = np.zeros((act.size, memory))
        order = [(slot - 1 - j) % memory for j in range(memory)]  # newest pair first
        n_hist = min(it - 1, memory)
        for j in order[:n_hist]:
            a_j = Ra[:, j] * np.einsum("sp,sp->s", Sa[:, j], q)
            alphas[:, j] = a_j
            q -= a_j[:, None] * Ya[:, j]
        r = gamma[act, None] * q
        for j in reversed(order[:n_hist]):
            b_j = Ra[:, j] * np.einsum("sp,sp->s", Ya[:, j], r)
            r += (alphas[:, j] - b_j)[:, None] * Sa[:, j]
        d = -r
        gd = np.einsum("sp,sp->s", g[act], d)
        reset = ~(gd < 0) | ~np.all(np.isfinite(d), axis=1)
        if reset.any():
            d[reset] = -g[act][reset]
            gd[reset] = -np.einsum("sp,sp->s", g[act][reset], g[act][reset])
            rho[act[reset]] = 0.0
            gamma[act[reset]] = 1.0
            first[act[reset]] = True
        step = np.ones(act.size)
        gnorm = np.sqrt(np.maximum(-gd, 0))
        step[first[act]] = np.minimum(1.0, 1.0 / np.maximum(np.abs(d[first[act]]).max(axis=1), 1e-300))
        # backtracking Armijo line search, all active starts together
        f_new = np.full(act.size, np.inf)
        g_new = np.zeros((act.size, P))
        pending = np.arange(act.size)
        for _ in range(40):
            if pending.size == 0:
                break
            xs = x[act[pending]] + step[pending, None] * d[pending]
            fp, gp = objective.value_and_grad(xs, act[pending] if per_start_weights else None)
            n_eval += 1
            f0, gd0, t = f[act[pending]], gd[pending], step[pending]
            ok = fp <= f0 + 1e-4 * t * gd0
            f_new[pending[ok]] = fp[ok]
            g_new[pending[ok]] = gp[ok]
            # next trial: minimiser of the quadratic through f(0), f'(0), f(t), kept in [0.1t, 0.5t]
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                curv = fp - f0 - gd0 * t
                t_q = np.where(np.isfinite(fp) & (curv > 0), -gd0 * t * t / (2 * curv), 0.1 * t)
            t_next = np.clip(t_q, 0.1 * t, 0.5 * t)
            step[pending[~ok]] = t_next[~ok]
            pending = pending[~ok]
        failed = np.zeros(act.size, dtype=bool)
        failed[pending] = True
        okm = ~failed
        ia = act[okm]
        s_vec = step[okm, None] * d[okm]
        y_vec = g_new[okm] - g[ia]
        sy = np.einsum("sp,sp->s", s_vec, y_vec)
        yy = np.einsum("sp,sp->s", y_vec, y_vec)
        good = sy > 1e-12 * np.sqrt(yy * np.einsum("sp,sp->s", s_vec, s_vec)) + 1e-300
        s_hist[ia, slot] = np.where(good[:, None], s_vec, 0.0)
        y_hist[ia, slot] = np.where(good[:, None], y_vec, 0.0)
        rho[ia, slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma[ia] = np.where(good, sy / np.where(yy > 0, yy, 1.0), gamma[ia])
        first[ia] = False
        f_old = f[ia]
        x[ia] += s_vec
        f[ia] = f_new[okm]
        g[ia] = g_new[okm]
        conv = (np.abs(f_old - f[ia]) <= ftol * np.maximum(np.maximum(np.abs(f_old), np.abs(f[ia])), 1.0)) | \
               (np.abs(g[ia]).max(axis=1) <= gtol)
        status[ia[conv]] = 1
        status[act[failed]] = 2
        if settle and not prune and it % 5 == 0:
            alive = np.flatnonzero(status != 3)
            top = alive[np.argsort(f[alive], kind="stable")[:settle]]
            running = np.flatnonzero(status == 0)
            if np.all(status[top] != 0) and np.all(f[running] > f[top].max() + 1e-2 * abs(f[top].max())):
                break
        while prune and it >= prune[0][0]:
            _, keep = prune.pop(0)
            alive = np.flatnonzero(status != 3)
            n_keep = int(np.ceil(keep * S)) if keep < 1 else int(keep)
            if alive.size > n_keep:
                worst = alive[np.argsort(f[alive], kind="stable")[n_keep:]]
                status[worst] = 3
    status[status == 0] = 4
    return {"x": x, "f": f, "iterations": it, "status": status, "evaluations": n_eval}


def polish(objective: Objective, x0: np.ndarray, *, max_iter: int = 3000) -> tuple[np.ndarray, float, bool, str]:
    """Tight scipy L-BFGS-B from x0 on the scaled objective; returns x, scaled f, converged, message.

    Tolerances are far below scipy's defaults (which stop about 14% above the optimum on
    Chinchilla-style data). Converged means scipy met its tolerance, or a restart from
    the end point cannot lower the objective by more than 1e-9 relative.
    """
    def fun(t):
        fv, gv = objective.value_and_grad(t[None, :])
        return float(fv[0]), gv[0]

    x = np.asarray(x0, float)
    f0 = fun(x)[0]
    if not np.isfinite(f0):
        return x, float("inf"), False, "objective is not finite at the start"
    best_x, best_f, msg, success = x, f0, "", False
    for _ in range(3):  # restart while the line search keeps stopping at a kink
        res = minimize(fun, best_x, jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "maxfun": 4 * max_iter, "ftol": 1e-15,
                                "gtol": 1e-11, "maxcor": 20, "maxls": 50})
        improved = res.fun < best_f - 1e-9 * max(abs(best_f), 1.0)
        if res.fun <= best_f:
            best_x, best_f = res.x, float(res.fun)
        msg = str(res.message)
        if res.success and res.status == 0:
            success = True
        if not improved:
            # a restart that stopped on its own (not at the iteration cap) and could not go lower
            success = success or (res.status != 1 and np.isfinite(best_f))
            break
    return best_x, best_f, bool(success and np.isfinite(best_f)), msg
