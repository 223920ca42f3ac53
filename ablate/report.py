"""Turn a results frame into what a person reads: ranked table, best per domain, heatmap."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pool.atomic import write_bytes

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

_TOP = 15  # ranked rows shown in the table: enough to see the winners, short enough to read


@dataclass(frozen=True)
class Report:
    markdown: Path
    heatmap: Path
    summary: str


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


def ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """Mixtures as rows, domains as columns of perplexity, sorted by macro perplexity."""
    table = frame.pivot_table(index="mixture", columns="domain", values="ppl", sort=False)
    return table.sort_values("macro") if "macro" in table else table


def best_per_domain(frame: pd.DataFrame) -> pd.DataFrame:
    """For each eval domain, the mixture with the lowest perplexity."""
    rows = frame.loc[frame.groupby("domain")["ppl"].idxmin(), ["domain", "mixture", "ppl", "bpb"]]
    return rows.set_index("domain")


def plot_heatmap(
    frame: pd.DataFrame, path: Path, title: str, table: pd.DataFrame | None = None
) -> Path:
    """Perplexity relative to each domain's best (1.0 = best), mixtures x domains.

    ``table`` is ``ranked(frame)`` when the caller already has it.
    """
    # A bare Figure (no pyplot) renders headless without switching the process's backend,
    # so notebooks that call this keep their inline plots.
    from matplotlib.figure import Figure

    table = ranked(frame) if table is None else table
    rel = table / table.min(axis=0)
    fig = Figure(figsize=(1.2 * len(rel.columns) + 4, 0.22 * len(rel) + 2))
    ax = fig.subplots()
    im = ax.imshow(rel.to_numpy(), aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(len(rel.columns)), rel.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rel)), rel.index, fontsize=7)
    ax.set_xlabel("eval domain")
    ax.set_ylabel("mixture (sorted by macro perplexity)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="perplexity / best perplexity in domain")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def write_report(frame: pd.DataFrame, out: Path, title: str) -> Report:
    """Write ``report.md`` and ``heatmap.png`` into ``out``."""
    table = ranked(frame)
    best = best_per_domain(frame)
    heatmap = plot_heatmap(frame, out / "heatmap.png", title, table)
    top = table.head(_TOP)
    lines = [
        f"# {title}",
        "",
        f"{len(table)} mixtures scored on {len(table.columns) - 1} eval domains.",
        "",
    ]
    lines += [
        "## Ranked by macro perplexity",
        "",
        top.to_markdown(floatfmt=".3f") if _has_tabulate() else top.round(3).to_string(),
        "",
    ]
    lines += ["## Best mixture per eval domain", "", best.round(4).to_string(), ""]
    lines += ["## Heatmap", "", "![perplexity heatmap](heatmap.png)", ""]
    md = out / "report.md"
    write_bytes(md, "\n".join(lines).encode("utf-8"))
    summary = f"top mixtures by macro perplexity:\n{top.head(10).round(3).to_string()}\n\nbest per domain:\n{best.round(4).to_string()}"
    return Report(md, heatmap, summary)


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None
