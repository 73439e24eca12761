"""Real-data check: the bundled OPT validation-perplexity trajectories (125M-175B), plotted with the
trajectory plotting code and fitted per size with laws (ppl = E + A / tokens^alpha, last checkpoint held out).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from eval.trajectory_analysis import plot_curves
from laws import fit_law
from laws.datasets import load

DATASET = "opt_trajectories_colpret"


def opt_fits(law: str = "power", holdout: str = "max", sizes: Sequence[str] | None = None
             ) -> tuple[dict[str, dict], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """({size: fitted params + fit/held-out MAD}, {size: (tokens, ppl)}) of the OPT trajectories (all sizes or `sizes`)."""
    data = load(DATASET)
    if sizes is not None:
        unknown = sorted(set(sizes) - set(data.model_size))
        if unknown:
            raise ValueError(f"unknown OPT sizes {unknown}; valid: {sorted(set(data.model_size))}")
        data = data[data.model_size.isin(list(sizes))]
    fits, curves = {}, {}
    for size, group in data.groupby("model_size", sort=False):
        tokens = 10.0 ** group.num_token.to_numpy(float)  # the CSV stores log10(tokens)
        ppl = group.ppl.to_numpy(float)
        curves[str(size)] = (tokens, ppl)
        if len(tokens) < 5:
            fits[str(size)] = {"error": f"{len(tokens)} checkpoints: too few to fit"}
            continue
        result = fit_law(law, tokens, ppl, holdout=holdout, names=["tokens"], target="ppl", group={"model_size": size})
        grid = np.geomspace(tokens.min(), tokens.max(), 50)
        fits[str(size)] = {**{k: float(v) for k, v in result.params.items()}, "fit_mad": result.fit_mad,
                           "heldout_mad": result.heldout_mad, "converged": result.converged,
                           "curve": (grid, result.predict(grid))}
    return fits, curves


def opt_section(out_dir: str | Path, law: str = "power", sizes: Sequence[str] | None = None) -> str:
    """Markdown: per-size fit table and the trajectories plot (opt_trajectories.png under out_dir)."""
    fits, curves = opt_fits(law, sizes=sizes)
    path = plot_curves({"OPT validation ppl": curves}, Path(out_dir) / "opt_trajectories.png", x_label="tokens seen",
                       y_label="validation perplexity",
                       fits={"OPT validation ppl": {k: v["curve"] for k, v in fits.items() if "curve" in v}})
    lines = ["### Real-data check: OPT trajectories", "",
             f"Bundled {DATASET} (laws.datasets); law `{law}` (L(D) = A / D^beta + E, D = tokens) fitted per size on all but the last checkpoint.", "",
             "| size | checkpoints | E | A | beta (tokens exponent) | fit MAD | held-out MAD (last ckpt) |", "|---|---|---|---|---|---|---|"]
    for size, fit in fits.items():
        n = len(curves[size][0])
        if "error" in fit:
            lines.append(f"| {size} | {n} | {fit['error']} | | | | |")
            continue
        held = "-" if fit["heldout_mad"] is None else f"{fit['heldout_mad']:.3f}"
        lines.append(f"| {size} | {n} | {fit.get('E', float('nan')):.3f} | {fit.get('A', float('nan')):.4g} | "
                     f"{fit.get('beta', float('nan')):.3f} | {fit['fit_mad']:.3f} | {held} |")
    lines += ["", f"![OPT trajectories]({path.name})", ""]
    return "\n".join(lines)
