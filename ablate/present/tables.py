"""Terminal tables (and their CSV twins), the ranked table of a study, and task tables.

Every table the CLI prints goes through :func:`format_table` / :func:`format_csv`, so all of
them size their columns from the data, truncate long names with an ellipsis and write the
same columns to CSV.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

    from ablate.engine.scores import EvalResult

_ELLIPSIS = "\u2026"


# ---------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Column:
    """One column of a terminal table: which row key it shows and how.

    Attributes:
        key: Key of the value in each row mapping (also the CSV header).
        header: Title printed above the column (default: ``key``).
        fmt: Format spec for numbers, e.g. ``".3f"``; ignored for text.
        align: ``"<"`` (text) or ``">"`` (numbers).
        max_width: Longer cells and headers are cut to this width, ending in an ellipsis.
    """

    key: str
    header: str | None = None
    fmt: str = ""
    align: Literal["<", ">"] = ">"
    max_width: int | None = None

    @property
    def title(self) -> str:
        return self.key if self.header is None else self.header

    def cell(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (int, float)) and self.fmt:
            return format(value, self.fmt)
        return str(value)


def truncate(text: str, width: int | None) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when anything was cut."""
    if width is None or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + _ELLIPSIS


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as an aligned text table; each column as wide as its widest cell (capped)."""
    cells = [[truncate(c.cell(r.get(c.key)), c.max_width) for c in columns] for r in rows]
    heads = [truncate(c.title, c.max_width) for c in columns]
    widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(heads)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(f"{v:{c.align}{w}}" for v, c, w in zip(values, columns, widths)).rstrip()

    return "\n".join([line(heads), *(line(v) for v in cells)])


def format_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """The same rows and columns as CSV: full names, full-precision numbers, empty for none."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c.key for c in columns])
    for r in rows:
        w.writerow(["" if r.get(c.key) is None else r.get(c.key) for c in columns])
    return buf.getvalue()


def ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """Mixtures as rows, domains as columns of perplexity, sorted by macro perplexity."""
    table = frame.pivot_table(index="mixture", columns="domain", values="ppl", sort=False)
    return table.sort_values("macro") if "macro" in table else table


def best_per_domain(frame: pd.DataFrame) -> pd.DataFrame:
    """For each eval domain, the mixture with the lowest perplexity."""
    rows = frame.loc[frame.groupby("domain")["ppl"].idxmin(), ["domain", "mixture", "ppl", "bpb"]]
    return rows.set_index("domain")


# ---------------------------------------------------------------------- task tables
def task_frame(results: Sequence[EvalResult]) -> pd.DataFrame:
    """One row per mixture x task: ``mixture``, ``size``, ``task``, ``n``, ``acc`` (with
    ``acc_lo``/``acc_hi``, 95% bootstrap over items), ``acc_norm``, ``gold_nll``, ``cached``,
    ``weights`` (reports and notebooks read it)."""
    import pandas as pd

    rows = []
    for r in results:
        for name, s in getattr(r, "tasks", {}).items():
            lo, hi = s.intervals()["acc"]
            rows.append(
                {
                    "mixture": str(r.mixture),
                    "size": len(r.mixture.names),
                    "task": name,
                    "n": s.n,
                    "acc": s.acc,
                    "acc_lo": lo,
                    "acc_hi": hi,
                    "acc_norm": s.acc_norm,
                    "gold_nll": s.gold_nll,
                    "cached": s.cached,
                    "weights": r.mixture.as_dict(),
                }
            )
    return pd.DataFrame.from_records(rows)


def task_rows(results: Sequence[EvalResult]) -> list[dict]:
    """The ``"task"`` objects of ``--json``: one per mixture x task."""
    return [s.row(r.mixture.as_dict()) for r in results for s in getattr(r, "tasks", {}).values()]


__all__ = [
    "Column",
    "best_per_domain",
    "format_csv",
    "format_table",
    "ranked",
    "task_frame",
    "task_rows",
    "truncate",
]
