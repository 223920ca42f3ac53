"""Tests for pool.partition: name rules, the four partition modes, and base-unit cutting."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ablate.pool.corpus import Document, read_documents
from ablate.pool.errors import DataError
from ablate.pool.partition import (
    PARTITION_NAME_RE,
    cut_units,
    partition_documents,
    validate_partition_name,
)


def doc(text: str = "x", source: str = "c.jsonl", **meta: object) -> Document:
    return Document(text=text, meta=meta, source=source)


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "a", "Wiki_2024", "c++", "v1.2-beta", "0", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_partition_name(name) == name
    assert PARTITION_NAME_RE.match(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "it is empty"),
        ("x" * 65, "65 characters long"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("a..b", r"contains '\.\.'"),
        ("a\nb", "control character"),
        ("a\x00", "control character"),
        (".hidden", r"starts with '\.'"),
        ("-flag", "starts with '-'"),
        ("_x", "starts with '_'"),
        ("web site", "contains ' '"),
        ("café", "contains 'é'"),
        ("é", "starts with 'é'"),
        (3, "int, not a string"),
    ],
)
def test_invalid_names(name: str, problem: str) -> None:
    with pytest.raises(DataError, match=rf"invalid partition name .*{problem}.*1-64 characters"):
        validate_partition_name(name)


# --- modes ------------------------------------------------------------------------------


def test_by_field_groups_sorted_and_keeps_order() -> None:
    docs = [
        doc("1", domain="web"),
        doc("2", domain="code"),
        doc("3", domain="web"),
        doc("4", domain=7),
    ]
    parts = partition_documents(docs, by="domain")
    assert list(parts) == ["7", "code", "web"]
    assert [d.text for d in parts["web"]] == ["1", "3"]
    assert [d.text for d in parts["7"]] == ["4"]


def test_by_field_missing() -> None:
    docs = [doc(domain="web"), doc(source="b.jsonl", lang="en", id=2)]
    with pytest.raises(
        DataError, match=r"b\.jsonl: a document has no field 'domain' .*\(fields: 'lang', 'id'\)"
    ):
        partition_documents(docs, by="domain")


def test_by_field_null() -> None:
    with pytest.raises(DataError, match="'domain' = null"):
        partition_documents([doc(domain=None)], by="domain")


@pytest.mark.parametrize("value", ["../etc", "web/news", "", "a b", ".x"])
def test_by_field_invalid_value(value: str) -> None:
    with pytest.raises(
        DataError, match=r"'domain' value .* is not a valid partition name.*rename it in the data"
    ):
        partition_documents([doc(domain="ok"), doc(domain=value)], by="domain")


def test_names_equal_up_to_case() -> None:
    with pytest.raises(DataError, match="'Web' and 'web' differ only by case"):
        partition_documents([doc(domain="Web"), doc(domain="web")], by="domain")


def test_by_folder(tmp_path: Path) -> None:
    for folder, files in {"web": ["a.txt", "b.txt"], "code": ["x.py"]}.items():
        (tmp_path / folder / "sub").mkdir(parents=True)
        for name in files:
            (tmp_path / folder / name).write_text(f"{folder} {name}")
    (tmp_path / "web" / "sub" / "c.txt").write_text("nested")
    parts = partition_documents(read_documents([tmp_path]), by_folder=True)
    assert list(parts) == ["code", "web"]
    assert [d.meta["path"] for d in parts["web"]] == ["web/a.txt", "web/b.txt", "web/sub/c.txt"]


def test_by_folder_top_level_file() -> None:
    with pytest.raises(DataError, match=r"top\.txt: sits at the top of the corpus folder"):
        partition_documents([doc(source="top.txt", folder="", path="top.txt")], by_folder=True)


def test_by_folder_not_from_a_folder() -> None:
    with pytest.raises(DataError, match="not read from a folder .*use by=FIELD or units=K"):
        partition_documents([doc(domain="web")], by_folder=True)


def test_by_folder_invalid_name() -> None:
    with pytest.raises(DataError, match="folder 'my docs' is not a valid partition name"):
        partition_documents([doc(folder="my docs", path="my docs/a.txt")], by_folder=True)


def test_units_deterministic_and_balanced() -> None:
    docs = [doc("x" * n, i=i) for i, n in enumerate([5, 80, 13, 40, 7, 60, 22, 1, 35, 50, 9, 70])]
    parts = partition_documents(docs, units=3, seed=1)
    assert list(parts) == ["unit00", "unit01", "unit02"]
    assert parts == partition_documents(docs, units=3, seed=1)
    assert parts != partition_documents(docs, units=3, seed=2)
    ids = sorted(d.meta["i"] for p in parts.values() for d in p)
    assert ids == list(range(len(docs)))  # every document exactly once
    sizes = [sum(len(d.text) for d in p) for p in parts.values()]
    assert max(sizes) - min(sizes) <= max(len(d.text) for d in docs)


def test_units_every_unit_non_empty() -> None:
    docs = [doc("x" * 100), doc(""), doc("")]
    parts = partition_documents(docs, units=3)
    assert all(len(p) == 1 for p in parts.values())


def test_units_names_sort_numerically() -> None:
    parts = partition_documents([doc() for _ in range(120)], units=101)
    assert list(parts)[:3] == ["unit000", "unit001", "unit002"]
    assert list(parts)[-1] == "unit100"


@pytest.mark.parametrize("k", [0, -1])
def test_units_too_few(k: int) -> None:
    with pytest.raises(DataError, match="units must be a whole number >= 1"):
        partition_documents([doc()], units=k)


def test_units_more_than_documents() -> None:
    with pytest.raises(DataError, match=r"cannot deal 2 document\(s\) into 3 units.*units <= 2"):
        partition_documents([doc(), doc()], units=3)


def test_single_named_partition() -> None:
    docs = [doc("a"), doc("b")]
    assert partition_documents(docs, name="all") == {"all": docs}


def test_single_named_partition_invalid() -> None:
    with pytest.raises(DataError, match=r"invalid partition name '\.\./x'.*choose another name"):
        partition_documents([doc()], name="../x")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "no partitioning asked for"),
        ({"by": "a", "units": 2}, "not by= and units="),
        ({"by_folder": True, "units": 2}, "not by_folder and units="),
        ({"by": "a", "name": "x"}, "name= names the single partition"),
    ],
)
def test_exactly_one_mode(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        partition_documents([doc(a="1", folder="f")], **kwargs)  # type: ignore[arg-type]


def test_no_documents() -> None:
    with pytest.raises(DataError, match="no documents to partition"):
        partition_documents([], name="all")


# --- base units -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "unit", "expected"),
    [
        ([10, 10, 10], 10, [(0, 1), (1, 2), (2, 3)]),
        ([4, 4, 4, 4, 4, 4], 8, [(0, 2), (2, 4), (4, 6)]),
        ([6, 6, 6], 10, [(0, 2), (2, 3)]),  # remainder 6 >= 5: its own unit
        ([6, 6, 5], 10, [(0, 2), (2, 3)]),  # exactly half a unit still stands alone
        ([6, 6, 4], 10, [(0, 3)]),  # remainder 4 < 5: merged into the previous unit
        ([10, 10, 2, 2], 10, [(0, 1), (1, 4)]),
        ([25], 10, [(0, 1)]),  # one big document is one unit
        ([3, 0, 0], 10, [(0, 3)]),  # short partition
        ([10, 0, 0], 10, [(0, 3)]),  # zero-token tail merges
        ([0, 0, 10], 10, [(0, 3)]),
        ([1], 1, [(0, 1)]),
    ],
)
def test_cut_units_examples(tokens: list[int], unit: int, expected: list[tuple[int, int]]) -> None:
    assert cut_units(tokens, unit) == expected


def test_cut_units_short_partition_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ablate.pool.partition"):
        assert cut_units([3, 4], 100) == [(0, 2)]
    assert "holds 7 tokens, less than one unit of 100 tokens" in caplog.text


def test_cut_units_full_partition_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ablate.pool.partition"):
        cut_units([50, 50], 100)
    assert not caplog.records


@pytest.mark.parametrize(
    ("tokens", "unit", "match"),
    [
        ([1, 2], 0, "unit_tokens must be >= 1"),
        ([1, 2], -5, "unit_tokens must be >= 1"),
        ([], 10, "empty partition"),
        ([1, -1], 10, "negative token count"),
    ],
)
def test_cut_units_errors(tokens: list[int], unit: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cut_units(tokens, unit)


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=60),
    unit=st.integers(min_value=1, max_value=120),
)
def test_cut_units_properties(tokens: list[int], unit: int) -> None:
    ranges = cut_units(tokens, unit)
    # the ranges partition the documents, in order
    assert ranges[0][0] == 0 and ranges[-1][1] == len(tokens)
    assert all(a < b for a, b in ranges)
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
    sums = [sum(tokens[a:b]) for a, b in ranges]
    if sum(tokens) < unit:  # the single short unit
        assert ranges == [(0, len(tokens))]
        return
    # every unit but the last is full, and closed as soon as it was full
    for (a, b), total in zip(ranges[:-1], sums[:-1], strict=True):
        assert total >= unit
        assert sum(tokens[a : b - 1]) < unit
    # trailing rule: the last unit is at least half a unit; if it is less than a full one it
    # is an unmerged remainder, and a remainder below half a unit was merged into it
    assert 2 * sums[-1] >= unit
    a, b = ranges[-1]
    if sums[-1] < unit:
        assert len(ranges) > 1
    else:
        # find where the last unit first became full; what follows is a sub-half remainder
        held, close = 0, b
        for i in range(a, b):
            held += tokens[i]
            if held >= unit:
                close = i + 1
                break
        assert 2 * sum(tokens[close:b]) < unit
