"""Publication figures: fixed sizes for a LaTeX page, saved as PDF + PNG beside the stage outputs."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

WIDTH_IN = 6.0  # a LaTeX text width, in inches
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": 110, "savefig.bbox": "tight"}


def figure(height_in: float = 3.0, ncols: int = 1, width_in: float = WIDTH_IN):
    """A figure of LaTeX text width and the given height."""
    plt.rcParams.update(STYLE)
    return plt.subplots(1, ncols, figsize=(width_in, height_in))


def save(fig, out_dir: Path, name: str) -> list[Path]:
    """Save ``fig`` as figures/<name>.pdf and .png under ``out_dir``; return the paths.

    The files have exactly the figure's size (WIDTH_IN = the thesis text width, 6.0 in, by the height
    asked for; the PNG at 200 dpi, 1200 px wide): a figure without a layout engine is laid out with
    matplotlib's constrained layout, which keeps legends and colour bars inside, and is never cropped
    or grown by a "tight" bounding box. So a LaTeX figure of width \\linewidth shows it at 1:1, with 8-9 pt text.
    """
    from .paths import atomic_path

    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    paths = []
    for ext in ("pdf", "png"):
        path = Path(out_dir) / "figures" / f"{name}.{ext}"
        with atomic_path(path) as tmp, plt.rc_context({"savefig.bbox": "standard"}):
            fig.savefig(tmp, format=ext, dpi=200 if ext == "png" else None)
        paths.append(path)
    return paths


def image_grid(rows: list[tuple[str, np.ndarray]], per_row: int = 8, height_per_row: float = 0.75):
    """Rows of example images: [(label, uint8 [n, S, S, 3]), ...]."""
    fig, axes = plt.subplots(len(rows), per_row, figsize=(WIDTH_IN, height_per_row * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c])
        axes[r, 0].set_title(label, fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    return fig


def heatmap(table: pd.DataFrame, title: str = "", cmap: str = "viridis", height_in: float = 5.0):
    """A models x tasks (or any) matrix as a heatmap with a colour bar."""
    import seaborn as sns

    fig, ax = figure(height_in)
    sns.heatmap(table, ax=ax, cmap=cmap, cbar_kws={"shrink": 0.6}, xticklabels=True, yticklabels=True)
    ax.tick_params(labelsize=5)
    ax.set_title(title)
    return fig
