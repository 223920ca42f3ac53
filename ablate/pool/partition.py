"""Split a corpus into named partitions, and a partition into base units.

Following Na et al. (EMNLP 2024, "Scalable Data Ablation Approximations for Language Models
through Modular Training and Merging"), one model is trained per partition and mixtures are
simulated by averaging those models. A partition is grouped by a metadata field, by
first-level subfolder, or dealt at random into K equal-sized units; it is then cut into
*base units* of roughly equal token count, so that every member of the pool sees about the
same amount of data and averaged mixtures stay comparable.

Partition names become folder names in the pool, so they are validated, never silently
rewritten: a surprising name must be fixed in the data, where the user can see it.
"""

from __future__ import annotations

import heapq
import logging
import random
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from ablate.pool.corpus import Document
from ablate.pool.errors import DataError

logger = logging.getLogger(__name__)

# 64 characters keeps names readable in tables and far below filesystem limits; a letter or
# digit first so a name is never hidden (".x") or mistaken for a flag ("-x").
PARTITION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_FIELD_JOIN = "__"  # joins the values of `--partition-by a,b` into one partition name
_NAME_RULE = (
    "names are 1-64 characters from A-Z a-z 0-9 _ . + -, start with a letter or digit "
    "and contain no '..'"
)


def _name_problem(name: Any) -> str | None:
    """Say what is wrong with a partition name, or None if it is valid."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if len(name) > 64:
        return f"it is {len(name)} characters long (at most 64)"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if ".." in name:
        return "it contains '..'"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "it contains a control character"
    if not PARTITION_NAME_RE.match(name):
        if not name[0].isascii() or not name[0].isalnum():
            return f"it starts with {name[0]!r}"
        bad = next(c for c in name if not (c.isascii() and (c.isalnum() or c in "_.+-")))
        return f"it contains {bad!r}"
    return None


def _shown(name: Any, limit: int = 70) -> str:
    """``repr`` of a name for an error message, cut short: a 100 kB name is not echoed back."""
    text = repr(name)
    if len(text) <= limit:
        return text
    size = f" ({len(name)} characters)" if isinstance(name, str) else ""
    return f"{text[: limit - 5]}...{text[-1]}{size}"


def validate_partition_name(name: str) -> str:
    """Return ``name`` if it is safe to use as a folder name in the pool.

    Raises:
        DataError: Naming the value and the rule it breaks.
    """
    problem = _name_problem(name)
    if problem is not None:
        raise DataError(f"invalid partition name {_shown(name)}: {problem}; {_NAME_RULE}")
    return name


def partition_documents(
    docs: Sequence[Document],
    *,
    by: str | None = None,
    by_folder: bool = False,
    units: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> dict[str, list[Document]]:
    """Group documents into named partitions, using exactly one mode.

    Args:
        docs: The corpus, as read by :func:`ablate.pool.corpus.read_documents`.
        by: Group by ``str(doc.meta[by])``; ``"a,b"`` groups by the pair of values, one
            partition per value tuple named ``A__B``.
        by_folder: Group by first-level subfolder (``doc.meta["folder"]``).
        units: Shuffle with ``seed`` and deal into ``units`` partitions of about equal
            character count, named ``unit00``, ``unit01``, ... (for corpora with no natural
            grouping, where ablation studies random equal-sized slices).
        seed: Seed of the shuffle in ``units`` mode; ignored otherwise.
        name: With no mode given, put every document in one partition of this name.

    Returns:
        Partitions sorted by name. Inside a partition documents keep their input order,
        except in ``units`` mode, where they keep the shuffled order.

    Raises:
        DataError: No mode or several modes, no documents, a document without the field or
            folder asked for, an invalid partition name, or names equal up to case (they
            would share a folder on case-insensitive filesystems).
    """
    asked = {"by=": by is not None, "by_folder": by_folder, "units=": units is not None}
    modes = [mode for mode, on in asked.items() if on]
    if len(modes) > 1:
        raise DataError(f"choose one way to partition, not {' and '.join(modes)}")
    if modes and name is not None:
        raise DataError(
            f"name= names the single partition of an unpartitioned corpus; drop it or {modes[0]}"
        )
    if not modes and name is None:
        raise DataError(
            "no partitioning asked for; give by=FIELD, by_folder=True, units=K or name=NAME"
        )
    if not docs:
        raise DataError("no documents to partition; check the corpus")

    if by is not None:
        groups = _group_by_field(docs, by)
    elif by_folder:
        groups = _group_by_folder(docs)
    elif units is not None:
        groups = _deal_units(docs, units, seed)
    elif name is not None:
        problem = _name_problem(name)
        if problem is not None:
            raise DataError(
                f"invalid partition name {_shown(name)}: {problem}; choose another name ({_NAME_RULE})"
            )
        groups = {name: list(docs)}

    seen: dict[str, str] = {}
    for key in groups:
        other = seen.setdefault(key.lower(), key)
        if other != key:
            raise DataError(
                f"partitions {other!r} and {key!r} differ only by case and would share a folder "
                f"on case-insensitive filesystems; rename one of them in the data"
            )
    return {key: groups[key] for key in sorted(groups)}


def _fields_of(by: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``: the fields of a (multi-field) ``by``, checked."""
    fields = tuple(f.strip() for f in by.split(","))
    if any(not f for f in fields) or len(set(fields)) != len(fields):
        raise DataError(
            f"--partition-by {by!r}: name distinct fields separated by single commas, e.g. field,period"
        )
    return fields


def _group_by_field(docs: Sequence[Document], by: str) -> dict[str, list[Document]]:
    """One partition per value (or per value tuple of ``a,b``: named ``A__B``).

    A tuple's name joins its values with ``__`` (``+`` would read as a mixture of partitions
    in tables); every value must be a valid name on its own,
    and two different tuples that join to the same name (``("a__b", "c")`` and
    ``("a", "b__c")``) are refused rather than silently merged.
    """
    fields = _fields_of(by)
    groups: dict[str, list[Document]] = {}
    first: dict[str, tuple[tuple[str, ...], Document]] = {}  # name -> (values, first doc)
    for doc in docs:
        values = []
        for f in fields:
            if f not in doc.meta:
                present = ", ".join(repr(k) for k in doc.meta) or "none"
                raise DataError(
                    f"{doc.location}: a document has no field {f!r} to partition by (fields: "
                    f"{present}); add it to every record or partition by another field"
                )
            value = doc.meta[f]
            if value is None:
                raise DataError(
                    f"{doc.location}: a document has {f!r} = null; "
                    f"give every record a value to partition by"
                )
            values.append(str(value))
        key = _FIELD_JOIN.join(values)
        if key in groups:
            seen_values, seen_doc = first[key]
            if seen_values != tuple(values):
                raise DataError(
                    f"{doc.location}: values {tuple(values)!r} of {by!r} and {seen_values!r} "
                    f"({seen_doc.location}) both make partition name {_shown(key)}; "
                    f"remove '__' from those values in the data"
                )
            groups[key].append(doc)
            continue
        for f, v in zip(fields, values, strict=True):
            problem = _name_problem(v)
            if problem is not None:
                raise DataError(
                    f"{doc.location}: {f!r} value {_shown(v)} is not a valid partition name: "
                    f"{problem}; rename it in the data ({_NAME_RULE})"
                )
        problem = _name_problem(key)
        if problem is not None:  # each value is fine, but joined they are too long
            raise DataError(
                f"{doc.location}: values of {by!r} make partition name {_shown(key)}, which is "
                f"invalid: {problem}; shorten the values in the data"
            )
        groups[key] = [doc]
        first[key] = (tuple(values), doc)
    return groups


def _group_by_folder(docs: Sequence[Document]) -> dict[str, list[Document]]:
    groups: dict[str, list[Document]] = {}
    for doc in docs:
        folder = doc.meta.get("folder")
        if folder is None:
            raise DataError(
                f"{doc.source}: documents not read from a folder of text files cannot be "
                f"partitioned by folder; use by=FIELD or units=K"
            )
        if folder == "":
            raise DataError(
                f"{doc.source}: sits at the top of the corpus folder, not in a subfolder; move it "
                f"into the subfolder of its partition"
            )
        if folder not in groups:
            problem = _name_problem(folder)
            if problem is not None:
                raise DataError(
                    f"{doc.source}: folder {_shown(folder)} is not a valid partition name: {problem}; "
                    f"rename the folder ({_NAME_RULE})"
                )
            groups[folder] = []
        groups[folder].append(doc)
    return groups


def _deal_units(docs: Sequence[Document], k: int, seed: int) -> dict[str, list[Document]]:
    """Shuffle, then give each document to the unit with the fewest characters so far.

    Greedy least-loaded dealing keeps units within one document's length of each other,
    which round-robin dealing would not when document lengths vary widely.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"units must be a whole number >= 1, got {k!r}")
    if k > len(docs):
        raise DataError(
            f"cannot deal {len(docs)} document(s) into {k} units (each unit needs at least one); "
            f"use units <= {len(docs)}"
        )
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    width = max(2, len(str(k - 1)))  # fixed width so sorting names keeps numeric order
    # (characters, documents, unit index): empty units win ties, so every unit gets a doc
    heap = [(0, 0, u) for u in range(k)]
    dealt: list[list[Document]] = [[] for _ in range(k)]
    for i in order:
        chars, count, u = heapq.heappop(heap)
        dealt[u].append(docs[i])
        heapq.heappush(heap, (chars + len(docs[i].text), count + 1, u))
    return {f"unit{u:0{width}d}": dealt[u] for u in range(k)}


def cut_units(doc_tokens: Sequence[int], unit_tokens: int) -> list[tuple[int, int]]:
    """Cut a partition into base units of whole documents.

    Walks the documents in order and closes a unit as soon as it holds ``>= unit_tokens``
    tokens. The trailing remainder becomes its own unit if it holds at least half a unit,
    otherwise it joins the previous unit (a sliver would train a member on too little data).
    A partition smaller than one unit becomes one short unit, with a warning.

    Args:
        doc_tokens: Token count of each document, in partition order.
        unit_tokens: Target tokens per base unit.

    Returns:
        Half-open document index ranges ``[start, end)`` covering every document once, in order.

    Raises:
        ValueError: ``unit_tokens < 1``, no documents, or a negative token count.
    """
    if unit_tokens < 1:
        raise ValueError(f"unit_tokens must be >= 1, got {unit_tokens}")
    if len(doc_tokens) == 0:
        raise ValueError("cannot cut an empty partition into units")
    ranges: list[tuple[int, int]] = []
    start = 0
    held = 0
    for i, tokens in enumerate(doc_tokens):
        if tokens < 0:
            raise ValueError(f"document {i} has a negative token count ({tokens})")
        held += tokens
        if held >= unit_tokens:
            ranges.append((start, i + 1))
            start, held = i + 1, 0
    n = len(doc_tokens)
    if not ranges:
        logger.warning(
            "partition holds %d tokens, less than one unit of %d tokens; it becomes one short unit",
            held,
            unit_tokens,
        )
        return [(0, n)]
    if start < n:
        if 2 * held >= unit_tokens:  # at least half a unit: worth its own member
            ranges.append((start, n))
        else:
            ranges[-1] = (ranges[-1][0], n)
    return ranges
