"""Runs tables: mixtures and what they scored, read from CSV, Parquet or a DataFrame, checked.

A run is one row: its mixture, as weight columns named by partition (``arxiv=0.2``,
``github=0.8`` ...) or as a ``mixture`` column in ablate's notation (``a=0.25,b=0.75`` or
``a,b``; the display forms ``a+b`` and ``a:0.25 b:0.75`` of reports are read too), and one
or more numeric targets (a loss, a perplexity, an accuracy). RegMix publishes its mixtures
and its losses as two files joined by an ``index`` column: several files are joined on
the columns they share.

Checks, each failing with one line that names the row or column and the fix: targets
present, numeric and finite; weights finite and non-negative with a positive sum; rows
whose weights sum to 1 within ``SUM_TOLERANCE`` are rescaled exactly, other rows are
normalised with a warning when the weight columns were named (``weights=``) and refused when
they were guessed (an accuracy column in [0, 1] would otherwise pass for a weight); weight
columns must be partitions of the pool when one is given.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ablate.mixture import Mixture, MixtureError
from ablate.pool.errors import AblateError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SUM_TOLERANCE = 0.01  # published mixtures are rounded (RegMix: 3 decimals, sums 0.996-1.003)
MIN_RUNS = 4  # fewer runs than this cannot be k-fold checked
MIXTURE_COLUMN = "mixture"
ID_COLUMNS = frozenset({"index", "id", "run", "run_id", "name", "seed", "fidelity"})


class RunsTableError(AblateError):
    """A runs table cannot be read or does not describe mixtures and their scores."""


@dataclass(frozen=True)
class Runs:
    """A checked runs table.

    Attributes:
        partitions: Weight columns, sorted (the order of every weight row).
        weights: ``(M, n)`` float64, each row on the simplex.
        targets: ``{column: (M,) float64}`` of the targets asked for (present ones only
            when read with ``need_targets=False``).
        source: Where the table came from, for messages.
    """

    partitions: tuple[str, ...]
    weights: np.ndarray
    targets: Mapping[str, np.ndarray]
    source: str

    def __len__(self) -> int:
        return len(self.weights)

    def mixture_keys(self) -> list[str]:
        """Each row's mixture in ablate's notation (``a=0.25,b=0.75``)."""
        return [key_of(self.partitions, row) for row in self.weights]


def key_of(partitions: Sequence[str], row: np.ndarray) -> str:
    """A weight row in ablate's notation, zeros left out, 4 decimals (``a=0.25,b=0.75``)."""
    return ",".join(f"{p}={w:.4g}" for p, w in zip(partitions, row, strict=True) if w > 5e-5)


def load_frame(source: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a CSV/TSV/Parquet path, or several paths joined on
    the columns they share (RegMix: mixtures and losses, joined on ``index``)."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source.copy()
    if isinstance(source, str | Path):
        return _read_one(Path(source))
    paths = [Path(p) for p in source]
    if not paths:
        raise RunsTableError("no runs table given")
    frame = _read_one(paths[0])
    for p in paths[1:]:
        other = _read_one(p)
        on = [c for c in frame.columns if c in set(other.columns)]
        if not on:
            raise RunsTableError(
                f"{p} shares no column with {paths[0]}; tables are joined on a shared "
                "column such as `index`"
            )
        joined = frame.merge(other, on=on, how="inner")
        if len(joined) != len(frame) or len(joined) != len(other):
            raise RunsTableError(
                f"joining {p} on {', '.join(on)} matched {len(joined)} of {len(frame)} and "
                f"{len(other)} rows; each run must appear once in every table"
            )
        frame = joined
    return frame


def _read_one(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise RunsTableError(f"runs table {path} does not exist (or is not a file)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except (ValueError, OSError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunsTableError(f"cannot read runs table {path}: {first}") from None
    raise RunsTableError(f"runs table {path}: expected a .csv, .tsv or .parquet file")


def read_runs(
    source: Any,
    targets: Sequence[str] = (),
    *,
    weights: Sequence[str] | None = None,
    partitions: Sequence[str] | None = None,
    need_targets: bool = True,
) -> Runs:
    """Read and check a runs table.

    Args:
        source: A DataFrame, a CSV/TSV/Parquet path, or several paths (joined).
        targets: Target columns (numeric, finite).
        weights: Weight columns, by name or glob pattern (``train_*``); default: the
            ``mixture`` column if there is one, else every other numeric column except
            id-like ones (``index``, ``id``, ...), and those must lie in [0, 1].
        partitions: The pool's (or a law's) partitions: a weight column outside them is
            refused by name; missing ones weigh 0. The rows then follow ``sorted(partitions)``.
        need_targets: False: ``targets`` absent from the table are skipped (candidates).
    """
    frame = load_frame(source)
    where = _describe(source)
    if frame.empty:
        raise RunsTableError(f"runs table {where} has no rows")
    dup = sorted({str(c) for c in frame.columns if list(frame.columns).count(c) > 1})
    if dup:
        raise RunsTableError(f"runs table {where} names column(s) twice: {', '.join(dup)}")
    frame.columns = [str(c) for c in frame.columns]
    missing = [t for t in targets if t not in frame.columns]
    if missing and need_targets:
        raise RunsTableError(
            f"--target {missing[0]!r} is not a column of {where}; it has: "
            + ", ".join(frame.columns[:30])
            + (" ..." if len(frame.columns) > 30 else "")
        )
    present = [t for t in targets if t in frame.columns]
    ys = {t: _numeric(frame[t], t, where) for t in present}
    names, x = _weights(frame, where, weights, present)
    if partitions is not None:
        names, x = _onto(names, x, tuple(partitions), where)
    order = np.argsort(names, kind="stable")
    names, x = tuple(names[i] for i in order), np.ascontiguousarray(x[:, order])
    return Runs(names, x, ys, where)


def _describe(source: Any) -> str:
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, Sequence):
        return " + ".join(str(s) for s in source)
    return "the DataFrame"


def _numeric(col: pd.Series, name: str, where: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raw = col.iloc[bad[0]]
        raise RunsTableError(
            f"column {name!r} of {where} has {len(bad)} missing or non-numeric value(s) "
            f"(first: row {bad[0] + 1}, {raw!r}); fill or drop those rows"
        )
    return values


def _weights(
    frame: pd.DataFrame, where: str, patterns: Sequence[str] | None, targets: Sequence[str]
) -> tuple[tuple[str, ...], np.ndarray]:
    """Weight columns and rows ``(M, n)`` on the simplex."""
    if patterns:
        names: list[str] = []
        for pat in patterns:
            hit = [c for c in frame.columns if fnmatch.fnmatchcase(c, pat) and c not in targets]
            if not hit:
                raise RunsTableError(f"--weights {pat!r} matches no column of {where}")
            names += [c for c in hit if c not in names]
        if names == [MIXTURE_COLUMN]:
            return _mixture_column(frame[MIXTURE_COLUMN], where)
        return _checked(frame, names, where, inferred=False)
    if MIXTURE_COLUMN in frame.columns:
        return _mixture_column(frame[MIXTURE_COLUMN], where)
    import pandas as pd

    names = [
        c
        for c in frame.columns
        if c not in targets
        and c.lower() not in ID_COLUMNS
        and pd.api.types.is_numeric_dtype(frame[c])
    ]
    if not names:
        raise RunsTableError(
            f"runs table {where} has no weight columns: give a `mixture` column "
            "(a=0.25,b=0.75) or numeric columns named by partition (or name them with --weights)"
        )
    return _checked(frame, names, where, inferred=True)


def _checked(
    frame: pd.DataFrame, names: list[str], where: str, *, inferred: bool
) -> tuple[tuple[str, ...], np.ndarray]:
    x = np.stack([_numeric(frame[c], c, where) for c in names], axis=1)  # (M, n)
    if inferred and (x > 1 + SUM_TOLERANCE).any():
        j = int(np.flatnonzero((x > 1 + SUM_TOLERANCE).any(0))[0])
        raise RunsTableError(
            f"column {names[j]!r} of {where} has values above 1 (up to {x[:, j].max():.4g}): "
            "it is not a mixture weight; name the weight columns with --weights "
            "(e.g. --weights 'train_*') or pass it as a --target"
        )
    neg = np.argwhere(x < 0)
    if len(neg):
        i, j = neg[0]
        raise RunsTableError(
            f"weight {names[j]!r} of row {i + 1} of {where} is negative ({x[i, j]:g}); "
            "mixture weights must be >= 0"
        )
    return tuple(names), _normalised(x, where, names if inferred else None)


def _normalised(x: np.ndarray, where: str, inferred: Sequence[str] | None = None) -> np.ndarray:
    """Rows divided by their sums; off-one sums warn, or fail when the columns were guessed
    (``inferred``: an accuracy column in [0, 1] must not pass for a weight)."""
    sums = x.sum(1)  # (M,)
    empty = np.flatnonzero(sums <= 0)
    if len(empty):
        raise RunsTableError(
            f"row {empty[0] + 1} of {where} has no positive weight; every run needs a mixture"
        )
    off = np.flatnonzero(np.abs(sums - 1) > SUM_TOLERANCE)
    if len(off) and inferred is not None:
        shown = ", ".join(inferred[:8]) + (" ..." if len(inferred) > 8 else "")
        raise RunsTableError(
            f"the columns taken for weights ({shown}) sum to {sums[off[0]]:.4g} in row "
            f"{off[0] + 1} of {where}; name the weight columns with --weights (rows are then "
            "normalised) or make each run's weights sum to 1"
        )
    if len(off):
        log.warning(
            "the weights of %d run(s) of %s do not sum to 1 (row %d: %.4g); each run's "
            "weights were divided by their sum",
            len(off),
            where,
            off[0] + 1,
            sums[off[0]],
        )
    return x / sums[:, None]


def parse_mixture(text: str) -> Mixture:
    """A mixture from ablate's notation (``a=0.25,b=0.75``, ``a,b``) or a report's display
    form (``a+b``, ``a:0.25 b:0.75``)."""
    text = str(text).strip()
    if "=" in text or "," in text:
        return Mixture.parse(text)
    if ":" in text:
        parts = [p.partition(":") for p in text.split()]
        return Mixture.parse(",".join(f"{n}={w}" for n, _, w in parts))
    return Mixture.uniform(text.split("+"))


def _mixture_column(col: pd.Series, where: str) -> tuple[tuple[str, ...], np.ndarray]:
    mixtures = []
    for i, text in enumerate(col.tolist()):
        if not isinstance(text, str):
            raise RunsTableError(
                f"row {i + 1} of {where}: the mixture column holds {text!r}, not a mixture "
                "such as a=0.25,b=0.75"
            )
        try:
            mixtures.append(parse_mixture(text))
        except MixtureError as e:
            raise RunsTableError(f"row {i + 1} of {where}: {e}") from None
    names = tuple(sorted({n for m in mixtures for n in m.names}))
    index = {n: j for j, n in enumerate(names)}
    x = np.zeros((len(mixtures), len(names)))
    for i, m in enumerate(mixtures):
        for n, w in m.weights:
            x[i, index[n]] = w
    return names, x


def _onto(
    names: Sequence[str], x: np.ndarray, partitions: tuple[str, ...], where: str
) -> tuple[tuple[str, ...], np.ndarray]:
    """Rows over ``partitions`` (absent ones weigh 0); a column outside them is refused."""
    unknown = [n for n in names if n not in partitions]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise RunsTableError(
            f"{where} weighs unknown partition(s) {shown}; known: {', '.join(partitions)}"
        )
    out = np.zeros((len(x), len(partitions)))
    for j, n in enumerate(names):
        out[:, partitions.index(n)] = x[:, j]
    return partitions, out


def check_runs(runs: Runs, target: str) -> None:
    """Refuse a table too small or too flat to fit a law on ``target``."""
    if len(runs) < MIN_RUNS:
        raise RunsTableError(
            f"{runs.source} has {len(runs)} run(s); a law needs at least {MIN_RUNS} "
            "(its error is measured by k-fold cross-validation)"
        )
    y = runs.targets[target]
    if np.ptp(y) == 0 or not math.isfinite(float(np.ptp(y))):
        raise RunsTableError(
            f"--target {target!r} has the same value in every run of {runs.source}; "
            "there is nothing to fit"
        )
