"""Figures without pyplot's global state: a Figure with its own Agg canvas, saved atomically as PNG."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from checkpoints.atomic import atomic_path


def new_figure(rows: int, columns: int, *, panel_size: tuple[float, float]) -> tuple[Figure, object]:
    """(figure, 2-D array of axes) of rows x columns panels of panel_size inches each."""
    fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=False)


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Lay out and write the figure to `path` (directories created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path
