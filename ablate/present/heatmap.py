"""Figures: saving one atomically in the format its suffix names, and the heatmap of
mixtures x eval domains (colour = perplexity over the column's best, on a log scale)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.pool.atomic import write_bytes
from ablate.present.tables import ranked, truncate

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# Heatmap scale: the colour is log(ppl / best ppl in the column), clipped at this percentile
# of all cells, so one outlier row (a single-partition mixture 7x the best) cannot spend the
# whole colour range and wash out the differences between the good mixtures.
CLIP_PERCENTILE = 95
_MIN_SPAN = math.log(1.02)  # never stretch a <2% spread over the whole colour range
_HEATMAP_ROWS = 60  # more mixtures than this: the top and bottom _HEATMAP_EDGE, plus the bests
_HEATMAP_EDGE = 20
_CLIP_MIN_CELLS = 40  # fewer cells than this: no clipping
_CELL_TEXT_ROWS = 30  # up to this many rows, each cell also prints its ratio to the best
_RATIO_TICKS = (1.0, 1.02, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
_NAME_WIDTH = 40  # mixture labels longer than this end in an ellipsis


def figure_formats() -> frozenset[str]:
    """File suffixes (without the dot) that :func:`save_figure` can write."""
    from matplotlib.backend_bases import FigureCanvasBase

    return frozenset(FigureCanvasBase.get_supported_filetypes())


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Render ``fig`` in the format its suffix names (PNG without one) and write it atomically.

    The image is rendered in memory first, so an unsupported suffix raises ``ValueError``
    before anything touches the disk, and a crash never leaves a half-written file.
    """
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix[1:].lower() or "png", dpi=dpi)
    write_bytes(path, buf.getvalue())
    return path


def heatmap_rows(table: pd.DataFrame, *, max_rows: int = _HEATMAP_ROWS) -> list[int]:
    """Positions of the rows a heatmap of ``table`` shows, in ranked order.

    All rows when there are at most ``max_rows``; otherwise the top and bottom
    ``_HEATMAP_EDGE`` and every row that is the best in some column.
    """
    n = len(table)
    if n <= max_rows:
        return list(range(n))
    edge = min(_HEATMAP_EDGE, max_rows // 2)
    keep = set(range(edge)) | set(range(n - edge, n))
    keep |= {int(i) for i in table.to_numpy().argmin(axis=0)}
    return sorted(keep)


def plot_heatmap(
    frame: pd.DataFrame,
    path: Path,
    title: str,
    table: pd.DataFrame | None = None,
    *,
    max_rows: int = _HEATMAP_ROWS,
) -> Path:
    """Mixtures x eval domains, coloured by how far each is from the column's best.

    Colour is ``log(ppl / best ppl in the column)``: 0 is the best, equal steps are equal
    ratios. The scale ends at the ``CLIP_PERCENTILE``-th percentile of the cells; cells past
    it are grey and crossed. A star marks the best mixture of each column and the column
    label names it. The macro column (the ranking) is a panel of its own with its own scale:
    a mean over domains spreads far less than any one domain, and on the shared scale it
    would be one flat colour. With more than ``max_rows`` mixtures only the top and bottom
    ones (and each column's best) are drawn, with a note.

    ``table`` is ``ranked(frame)`` when the caller already has it.
    """
    # A bare Figure (no pyplot) renders headless without switching the process's backend,
    # so notebooks that call this keep their inline plots.
    from matplotlib.figure import Figure

    table = ranked(frame) if table is None else table
    shown = heatmap_rows(table, max_rows=max_rows)
    full = table.to_numpy(dtype=float)  # (M, D) perplexity, ranked rows
    logratio = np.log(full / full.min(axis=0))  # (M, D), 0 = the column's best
    best_pos = full.argmin(axis=0)  # (D,) row of each column's best
    panels = [[c] for c in table.columns if c == "macro"]
    panels.append([c for c in table.columns if c != "macro"])
    panels = [cols for cols in panels if cols]
    n_rows = len(shown)
    n_cols = len(table.columns)
    fig = Figure(figsize=(1.3 * n_cols + 6, 0.24 * n_rows + 3.2))
    axes = fig.subplots(
        1, len(panels), sharey=True, squeeze=False,
        gridspec_kw={"width_ratios": [max(len(c), 1) for c in panels]},
    )[0]  # fmt: skip
    for ax, cols in zip(axes, panels):
        idx = [table.columns.get_loc(c) for c in cols]
        _heatmap_panel(ax, fig, table, logratio[:, idx], best_pos[idx], cols, shown)
    labels = [truncate(str(table.index[r]), _NAME_WIDTH) for r in shown]
    axes[0].set_yticks(range(n_rows), labels, fontsize=7)
    bests = set(best_pos.tolist())
    for tick, r in zip(axes[0].get_yticklabels(), shown):
        if r in bests:
            tick.set_fontweight("bold")
    axes[0].set_ylabel("mixture (best macro first; bold: best in a column)", fontsize=8)
    note = ""
    if n_rows < len(table):
        note = f"\n{len(table) - n_rows} of {len(table)} mixtures not shown (at the dashed lines)"
    fig.suptitle(
        f"{title}{note}\ncolour: perplexity / best in column (log scale); "
        "\u2605 best in column; grey \u00d7: beyond the scale",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _heatmap_panel(ax, fig, table, logratio, best_pos, cols, shown) -> None:
    """One block of heatmap columns with its own clipped log scale and colour bar."""
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter

    # Too few cells for a percentile to mean anything: the scale ends at the worst cell.
    top = CLIP_PERCENTILE if logratio.size >= _CLIP_MIN_CELLS else 100
    vmax = max(float(np.nanpercentile(logratio, top)), _MIN_SPAN)
    data = logratio[shown]  # (R, C)
    n_rows, n_cols = data.shape
    text = n_rows <= _CELL_TEXT_ROWS and len(table.columns) <= 16
    cmap = colormaps["viridis_r"].with_extremes(over="#c8c8c8")
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    clipped = np.argwhere(data > vmax)  # (K, 2) of (row, col)
    if len(clipped) and not text:  # with numbers in the cells, grey alone marks them
        ax.scatter(clipped[:, 1], clipped[:, 0], marker="x", s=18, c="#555555", linewidths=0.8)
    pos = {r: i for i, r in enumerate(shown)}
    if text:  # each cell's ratio to the best, the best cell starred
        for r in range(n_rows):
            for c in range(n_cols):
                v = data[r, c]
                star = "\u2605 " if shown[r] == best_pos[c] else ""
                ax.text(
                    c, r, f"{star}{math.exp(v):.2f}", ha="center", va="center", fontsize=7,
                    color="white" if 0.55 * vmax < v <= vmax else "black",
                )  # fmt: skip
    else:
        ax.scatter(
            range(n_cols), [pos[int(r)] for r in best_pos], marker="*", s=120, c="white",
            edgecolors="black", linewidths=0.8, zorder=3,
        )  # fmt: skip
    for i in range(1, n_rows):  # a gap in the ranks: a dashed line where rows were left out
        if shown[i] != shown[i - 1] + 1:
            ax.axhline(i - 0.5, color="black", linewidth=1, linestyle="--")
    labels = [f"{c}\nbest: {truncate(str(table.index[r]), 22)}" for c, r in zip(cols, best_pos)]
    ax.set_xticks(range(n_cols), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("ranking (mean over domains)" if cols == ["macro"] else "eval domain")
    if n_cols == 1:  # a narrow panel: a short bar on top, so the rows stay aligned
        cax = ax.inset_axes([0.0, 1.01, 1.0, 0.012])
        bar = fig.colorbar(im, cax=cax, orientation="horizontal", extend="max")
        bar.ax.xaxis.set_ticks_position("top")
        bar.set_ticks([0.0, vmax / 2, vmax])
    else:
        bar = fig.colorbar(im, ax=ax, extend="max", fraction=0.04, pad=0.02)
        ticks = []
        for t in (math.log(t) for t in _RATIO_TICKS if math.log(t) <= vmax):
            if not ticks or t - ticks[-1] >= vmax / 12:  # no two labels on top of each other
                ticks.append(t)
        bar.set_ticks(ticks if len(ticks) >= 3 else np.linspace(0.0, vmax, 4))
    bar.formatter = FuncFormatter(lambda v, _: f"\u00d7{math.exp(v):.2f}")
    bar.ax.tick_params(labelsize=7)
    bar.update_ticks()


__all__ = ["CLIP_PERCENTILE", "figure_formats", "heatmap_rows", "plot_heatmap", "save_figure"]
