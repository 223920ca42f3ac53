"""The study summary a person opens first: ``report.md`` beside ``heatmap.png``."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.pool.atomic import write_bytes
from ablate.present.heatmap import CLIP_PERCENTILE, plot_heatmap
from ablate.present.tables import best_per_domain, ranked
from ablate.version import __version__

if TYPE_CHECKING:
    import pandas as pd

_TOP = 15  # ranked rows shown in the table: enough to see the winners, short enough to read


@dataclass(frozen=True)
class Report:
    markdown: Path
    heatmap: Path
    summary: str


def write_report(
    frame: pd.DataFrame, out: Path, title: str, tasks: pd.DataFrame | None = None
) -> Report:
    """Write ``report.md`` and ``heatmap.png`` into ``out``; ``tasks`` (``task_frame``) adds each task's best and worst mixtures by accuracy."""
    table = ranked(frame)
    best = best_per_domain(frame)
    heatmap = plot_heatmap(frame, out / "heatmap.png", title, table)
    top = table.head(_TOP)
    lines = [
        f"# {title}",
        "",
        f"{len(table)} mixtures scored on {len(table.columns) - 1} eval domains "
        f"(ablate {__version__}).",
        "",
    ]
    lines += [
        "## Ranked by macro perplexity",
        "",
        top.to_markdown(floatfmt=".3f") if _has_tabulate() else top.round(3).to_string(),
        "",
    ]
    lines += ["## Best mixture per eval domain", "", best.round(4).to_string(), ""]
    lines += [
        "## Heatmap",
        "",
        "Colour: perplexity over the best perplexity in the same column, on a log scale",
        f"clipped at the {CLIP_PERCENTILE}th percentile (grey cells are worse than the scale's",
        "end); a star marks each column's best mixture. The macro column, the ranking, has a",
        "scale of its own.",
        "",
        "![perplexity heatmap](heatmap.png)",
        "",
    ]
    task_text = task_section(tasks) if tasks is not None and not tasks.empty else ""
    if task_text:
        lines += [task_text, ""]
    md = out / "report.md"
    write_bytes(md, "\n".join(lines).encode("utf-8"))
    summary = f"top mixtures by macro perplexity:\n{top.head(10).round(3).to_string()}\n\nbest per domain:\n{best.round(4).to_string()}"
    return Report(md, heatmap, summary)


def task_section(tasks: pd.DataFrame, k: int = 5) -> str:
    """Markdown: per task, the ``k`` best and ``k`` worst mixtures by accuracy."""
    import pandas as pd

    cols = ["mixture", "acc", "acc_lo", "acc_hi", "acc_norm", "gold_nll"]
    lines = [
        "## Multiple-choice tasks",
        "",
        "Accuracy (lowest-NLL choice), its 95% bootstrap interval over items, accuracy by NLL "
        "per byte of the choice (acc_norm) and the gold choice's mean NLL.",
    ]
    for name, g in tasks.groupby("task", sort=True):
        g = g.sort_values(["acc", "gold_nll"], ascending=[False, True], kind="stable")
        shown = g if len(g) <= 2 * k else pd.concat([g.head(k), g.tail(k)])
        body = shown[cols].reset_index(drop=True)
        lines += [
            "",
            f"### {name} ({int(g['n'].iloc[0])} items; best and worst of {len(g)} mixtures)",
            "",
            body.to_markdown(floatfmt=".3f") if _has_tabulate() else body.round(3).to_string(),
        ]
    return "\n".join(lines)


def _has_tabulate() -> bool:
    return importlib.util.find_spec("tabulate") is not None


__all__ = ["Report", "task_section", "write_report"]
