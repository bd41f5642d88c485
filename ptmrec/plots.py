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


def label_points(ax, x, y, names, fontsize: float = 5, gap_pt: float = 1.3) -> list:
    """Label scatter points without overlapping labels: a label that would cover an earlier one moves down
    (with a leader line to its point). Call after the axes' scales and limits are set. Returns the texts.

    Greedy, top label first, in display points: a label is ``fontsize * gap_pt`` tall and about
    0.55 em per character wide.
    """
    fig = ax.figure
    xy = ax.transData.transform(np.column_stack([x, y])) * 72 / fig.dpi  # [n, 2] in points
    order = np.lexsort((xy[:, 0], -xy[:, 1]))  # top to bottom, then left to right
    height, placed, texts = fontsize * gap_pt, [], [None] * len(names)
    for i in order:
        x0, y0 = xy[i, 0] + 2, xy[i, 1] + 2  # label's lower-left corner, points
        width = 0.55 * fontsize * len(str(names[i]))
        while any(abs(y0 - py) < height and x0 < px + pw and px < x0 + width for px, py, pw in placed):
            y0 -= height
        placed.append((x0, y0, width))
        moved = y0 < xy[i, 1] + 2
        texts[i] = ax.annotate(str(names[i]), (x[i], y[i]), xytext=(x0 - xy[i, 0], y0 - xy[i, 1]),
                               textcoords="offset points", fontsize=fontsize,
                               arrowprops=dict(arrowstyle="-", lw=0.3, color="grey") if moved else None)
    return texts


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


def method_kind(methods: pd.Index | list[str], estimators: set[str]) -> np.ndarray:
    """'ranker' (the ranker and its ablations), 'estimator' (a stage-05 scorer), 'prior' or 'reference'."""
    priors = {"popularity", "popularity_z", "most_params", "imagenet_first"}
    return np.array(["ranker" if m.startswith("ranker") else "estimator" if m in estimators - {"random"} else
                     "prior" if m in priors else "reference" for m in methods])


KIND_COLOURS = {"ranker": "C3", "estimator": "C0", "prior": "C2", "reference": "C7"}


def method_boxes(per_task: pd.DataFrame, order: list[str], metric: str = "weighted_tau", height_in: float = 4.0):
    """One box per method of ``metric`` over held-out tasks, methods in ``order`` (best first)."""
    import seaborn as sns

    fig, ax = figure(height_in)
    sns.boxplot(per_task, y="method", x=metric, order=order, ax=ax, fliersize=1, linewidth=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    ax.tick_params(axis="y", labelsize=6)
    return fig


def method_bars(values: pd.Series, xlabel: str, estimators: set[str], err: pd.Series | None = None,
                height_in: float = 3.6):
    """Horizontal bars of one number per method (sorted ascending), coloured by kind, with optional error bars."""
    values = values.sort_values()
    fig, ax = figure(height_in)
    colours = [KIND_COLOURS[k] for k in method_kind(values.index, estimators)]
    ax.barh(values.index, values.to_numpy(), color=colours,
            xerr=None if err is None else err.reindex(values.index).fillna(0).to_numpy())
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", labelsize=6)
    return fig


def cost_quality(summary: pd.DataFrame, estimators: set[str], height_in: float = 3.2):
    """Mean weighted tau against seconds per recommendation (log scale), one labelled point per method."""
    pts = summary[summary.seconds > 0]
    fig, ax = figure(height_in)
    kinds = method_kind(pts.index, estimators)
    for k, colour in KIND_COLOURS.items():
        m = kinds == k
        if m.any():
            ax.scatter(pts.seconds[m], pts.weighted_tau[m], s=12, color=colour, label=k)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per recommendation")
    ax.set_ylabel("mean weighted tau")
    ax.legend(loc="upper center", fontsize=6)
    label_points(ax, pts.seconds.to_numpy(), pts.weighted_tau.to_numpy(), pts.index.tolist())
    return fig


def frontier(front: pd.DataFrame, estimators: set[str], height_in: float = 3.4):
    """Quality against cost of the frontier table (``evaluate.frontier``): a line per probed ranker over k,
    a point per estimator on every model, dashed lines for estimators restricted to k probes, a dotted line for
    the oracle on the same probes (their ceiling)."""
    fig, ax = figure(height_in)
    for name, g in front.groupby("method"):
        g = g.sort_values("seconds")
        if name == "oracle":  # a ceiling, not a method: what a perfect estimator on the same k probes gives
            ax.plot(g.seconds, g.weighted_tau, ls=":", lw=1.0, color=KIND_COLOURS["reference"],
                    label="oracle on the k probes (ceiling)")
        elif name.startswith("ranker"):
            ax.plot(g.seconds, g.weighted_tau, marker="o", ms=3, lw=1.2, label=name, color=KIND_COLOURS["ranker"]
                    if "top" in name else "C1")
        elif len(g) > 1:
            ax.plot(g.seconds, g.weighted_tau, ls="--", lw=0.6, alpha=0.6, color=KIND_COLOURS["estimator"])
            ax.annotate(name, (g.seconds.iloc[-1], g.weighted_tau.iloc[-1]), fontsize=5)
        else:
            colour = KIND_COLOURS["estimator"] if name in estimators else KIND_COLOURS["reference"]
            ax.scatter(g.seconds, g.weighted_tau, s=10, color=colour)
            ax.annotate(name, (g.seconds.iloc[0], g.weighted_tau.iloc[0]), fontsize=5)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per recommendation")
    ax.set_ylabel("mean weighted tau")
    ax.legend(fontsize=6, loc="lower right")
    return fig
