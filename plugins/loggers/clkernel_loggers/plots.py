"""Matplotlib figures for the loggers, drawn with the Agg canvas (no pyplot, no global backend change).

Figures have a fixed size (``FIGSIZE`` inches at ``dpi``), so their PNG files are ``FIGSIZE * dpi`` pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["FIGSIZE", "accuracy_curves_figure", "figure_png", "figure_to_array", "matrix_figure", "save_figure"]

FIGSIZE = (6.4, 4.8)


def _figure(dpi: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _rows(matrix: Any) -> list[list[float]]:
    values = matrix.tolist() if hasattr(matrix, "tolist") else matrix
    return [[math.nan if v is None else float(v) for v in row] for row in values]


def matrix_figure(matrix: Any, title: str, *, xlabel: str = "", ylabel: str = "", dpi: int = 100,
                  vmin: float | None = None, vmax: float | None = None) -> Any:
    """A heatmap of a 2-D tensor / array / nested list, values written in the cells when there are few."""
    rows = _rows(matrix)
    fig = _figure(dpi)
    ax = fig.add_subplot()
    image = ax.imshow(rows if rows and rows[0] else [[math.nan]], cmap="viridis", vmin=vmin, vmax=vmax,
                      aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    n_rows, n_cols = len(rows), len(rows[0]) if rows else 0
    if n_rows * n_cols <= 144:
        finite = [v for row in rows for v in row if math.isfinite(v)]
        middle = (max(finite) + min(finite)) / 2 if finite else 0.0
        integers = all(float(v).is_integer() for v in finite)
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(j, i, f"{int(v)}" if integers else f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if v > middle else "white")
    if n_cols <= 30:
        ax.set_xticks(range(n_cols))
    if n_rows <= 30:
        ax.set_yticks(range(n_rows))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def accuracy_curves_figure(matrix: Any, title: str, *, dpi: int = 100) -> Any:
    """One line per evaluated experience j: its accuracy ``R[i, j]`` after each training experience i."""
    rows = _rows(matrix)
    fig = _figure(dpi)
    ax = fig.add_subplot()
    n_cols = len(rows[0]) if rows else 0
    x = list(range(len(rows)))
    for j in range(n_cols):
        ax.plot(x, [row[j] for row in rows], marker="o", label=f"exp {j}")
    ax.set_xlabel("after training experience")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    if len(x) <= 30:
        ax.set_xticks(x)
    if 0 < n_cols <= 20:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def figure_to_array(fig: Any) -> Any:
    """The figure rendered to an ``H x W x 3`` uint8 array."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Any, path: Path, who: str = "report") -> None:
    """Save ``fig`` as a PNG at ``path`` through a temporary file (readers never see half a file).

    :raises LoggerWriteError: naming ``path`` (and the ``who`` logger) when it cannot be written (a full disk);
        the previous file is left as it was.
    """
    import contextlib
    import os

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from clkernel_loggers.common import writing

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        with writing(path, who):
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def figure_png(fig: Any) -> bytes:
    """``fig`` as PNG bytes: the bytes :func:`save_figure` writes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
