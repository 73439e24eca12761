"""The report's figures (matplotlib object API, Agg canvas; written atomically by laws.plots.save_png)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from laws.plots import save_png
from study.report.fits import AlignmentFit, DfFit, JointResults, pretrained, reference_pet
from study.spec import StudySpec


def _figure(n_panels: int, rows: int = 1, size=(4.4, 3.5)) -> tuple[Figure, list]:
    cols = max(1, int(np.ceil(n_panels / rows)))
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="tight")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]


def plot_df_scaling(fits: list[DfFit], spec: StudySpec, path: Path) -> Path | None:
    """Zhang Fig. 1: y vs Df per method (panels) and size (colours): seed means with ranges,
    fitted single-variable law, held-out points open."""
    methods = [m for m in spec.methods if any(f.method == m for f in fits)]
    if not methods:
        return None
    fig, axes = _figure(len(methods))
    for ax, method in zip(axes, methods):
        for i, f in enumerate(x for x in fits if x.method == method):
            color = f"C{i}"
            p = f.points
            x, y = p["finetune_examples"].to_numpy(float), p["mean"].to_numpy(float)
            err = np.vstack([y - p["low"].to_numpy(float), p["high"].to_numpy(float) - y])
            held = p["heldout"].to_numpy(bool)
            ax.errorbar(x[~held], y[~held], yerr=err[:, ~held], fmt="o", color=color, ms=4, capsize=2, label=f.size)
            if held.any():
                ax.errorbar(x[held], y[held], yerr=err[:, held], fmt="o", mfc="none", color=color, ms=7, capsize=2)
            if f.fit is not None:
                grid = np.geomspace(x.min(), x.max() * 1.3, 100)
                ax.plot(grid, f.fit.predict(grid), color=color, lw=1.2, ls="-" if f.fit.converged else ":")
        ax.set_xscale("log")
        ax.set_xlabel("finetuning examples Df")
        ax.set_ylabel(spec.fit_metric)
        pet = reference_pet(spec, method)
        ax.set_title(f"{method}" + (f" (PET size {pet})" if pet else ""), fontsize=10)
        ax.legend(fontsize=7, title="size (open: held out)", title_fontsize=7)
    return Path(save_png(fig, str(path), dpi=90))


def plot_joint(joint: JointResults, spec: StudySpec, path: Path) -> Path | None:
    """Each method's joint multiplicative fit per factor: points vs Df, one curve per factor value."""
    if joint.fits is None or not joint.fits.joint:
        return None
    panels = [(m, f) for m, jf in joint.fits.joint.items() for f in jf.factors]
    fig, axes = _figure(len(panels), rows=len(joint.fits.joint))
    for ax, (method, factor) in zip(axes, panels):
        fit = joint.fits.joint[method].factors[factor]
        X, D, Y, _ = joint.data[method][factor]
        held = np.zeros(len(X), bool)
        if spec.holdout == "max":
            held = (X == X.max()) | (D == D.max())
        grid = np.geomspace(D.min(), D.max() * 1.3, 100)
        for i, level in enumerate(np.unique(X)):
            sel = X == level
            color = f"C{i % 10}"
            ax.scatter(D[sel & ~held], Y[sel & ~held], color=color, s=16, label=f"{level:.3g}")
            ax.scatter(D[sel & held], Y[sel & held], facecolors="none", edgecolors=color, s=36)
            ax.plot(grid, fit.predict(np.column_stack([np.full_like(grid, level), grid])), color=color, lw=1.1)
        ax.set_xscale("log")
        ax.set_xlabel("finetuning examples Df")
        ax.set_ylabel(spec.fit_metric)
        mad = "" if fit.heldout_mad is None else f", held-out MAD {fit.heldout_mad:.3g}"
        ax.set_title(f"{method}: {factor}{mad}", fontsize=9)
        ax.legend(fontsize=6, title=factor, title_fontsize=6)
    return Path(save_png(fig, str(path), dpi=90))


def plot_scale_vs_data(frame: pd.DataFrame, spec: StudySpec, path: Path) -> Path | None:
    """Per method: y vs the factor's multiple of its smallest value, model size (solid) and
    pretraining tokens (dashed), one colour per Df."""
    base = pretrained(frame)
    base = base[base["corpus"] == spec.pretrain_corpora[0]]
    fig, axes = _figure(len(spec.methods))
    drew = False
    for ax, method in zip(axes, spec.methods):
        sub = base[(base["method"] == method) & (base["pet_size"] == reference_pet(spec, method))]
        for i, df_value in enumerate(spec.finetune_examples):
            at_df = sub[sub["finetune_examples"] == df_value]
            model = at_df[at_df["pretrain_tokens"] == spec.token_budget].groupby("model_params")["y"].mean()
            if len(model) > 1:
                ax.plot(model.index / model.index.min(), model.values, "o-", color=f"C{i}", ms=3, label=f"Df={df_value}")
                drew = True
            for size in spec.dp_sweep_sizes[:1]:
                data = at_df[at_df["size"] == size].groupby("pretrain_tokens")["y"].mean()
                if len(data) > 1:
                    ax.plot(data.index / data.index.min(), data.values, "s--", color=f"C{i}", ms=3)
                    drew = True
        ax.set_xscale("log")
        ax.set_xlabel("factor / its smallest value (solid: model size, dashed: pretraining tokens)", fontsize=7)
        ax.set_ylabel(spec.fit_metric)
        ax.set_title(method, fontsize=10)
        ax.legend(fontsize=6)
    return Path(save_png(fig, str(path), dpi=90)) if drew else None


def plot_alignment(fits: list[AlignmentFit], path: Path) -> Path | None:
    """Isik: downstream CE (left) and BLEU (right) vs pretraining tokens per size, aligned vs misaligned."""
    sizes = list(dict.fromkeys(f.size for f in fits))
    if not sizes:
        return None
    fig, axes = _figure(2 * len(sizes), rows=len(sizes))
    styles = {"aligned": ("C0", "o", "-"), "misaligned": ("C3", "s", "--")}
    for row, size in enumerate(sizes):
        ax_ce, ax_bleu = axes[2 * row], axes[2 * row + 1]
        for f in (x for x in fits if x.size == size):
            color, marker, line = styles.get(f.corpus, ("C2", "^", ":"))
            dp = f.points["pretrain_tokens"].to_numpy(float)
            grid = np.geomspace(dp.min(), dp.max() * 1.3, 100)
            ax_ce.scatter(dp, f.points["ce"], color=color, marker=marker, s=18, label=f.corpus)
            ax_bleu.scatter(dp, f.points["bleu"], color=color, marker=marker, s=18, label=f.corpus)
            if f.ce_fit is not None:
                ax_ce.plot(grid, f.ce_fit.predict(grid), color=color, ls=line, lw=1.1)
            if f.bleu_fit is not None:
                ax_bleu.plot(grid, f.bleu_fit.predict(grid), color=color, ls=line, lw=1.1)
            if f.scratch is not None:  # the same size finetuned from scratch (Isik et al.'s black line)
                ax_ce.axhline(f.scratch["ce"], color="k", ls="--", lw=0.9)
                ax_bleu.axhline(f.scratch["bleu"], color="k", ls="--", lw=0.9)
        for ax, name in ((ax_ce, "downstream cross-entropy (test log-PPL)"), (ax_bleu, "BLEU")):
            ax.set_xscale("log")
            ax.set_xlabel("pretraining tokens Dp")
            ax.set_ylabel(name, fontsize=8)
            ax.set_title(f"size {size}", fontsize=9)
            ax.legend(fontsize=7)
    return Path(save_png(fig, str(path), dpi=90))
