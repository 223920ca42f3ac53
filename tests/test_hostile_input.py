"""Hostile input gets one clear line, exit status 2, no traceback, and an untouched pool.

Partition names and mixture strings become folder names and cache keys, so path tricks,
control characters (a terminal escape in an error message is an attack too) and absurd
sizes must be refused before anything is written. Eval files can be any bytes at all.
Most cases call the CLI's ``main`` in-process (the same code path, without paying for a
new interpreter each time); a few run the real console entry to prove the end-to-end shape.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import unicodedata
from pathlib import Path

import pytest
from support import make_docs, run_cli, tree_digest, write_jsonl

from ablate.cli import main
from ablate.data.evalset import EvalSet
from ablate.pool import Pool

MAX_LINE = 1200  # an error may quote the input, but never echo 200 kB of it


@pytest.fixture(scope="module")
def pool_dir(full_pool_dir: Path, tmp_path_factory) -> Path:
    """A private copy of the trained pool; every case must leave it as it was."""
    path = tmp_path_factory.mktemp("hostile") / "pool"
    shutil.copytree(full_pool_dir, path)
    return path


def _pool_state(path: Path) -> dict[str, bytes]:
    """The pool's files, less what any evaluation may create (results store, eval cache)."""
    return {
        k: v
        for k, v in tree_digest(path).items()
        if not k.startswith(("results.sqlite", "eval_cache"))
    }


def refused(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """Run ``ablate ARGS`` in-process; assert the one-line refusal; return that line."""
    code = main(["-q", *map(str, args)])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, (out.out, out.err)
    assert len(lines) == 1 and lines[0].startswith("ablate: error: "), lines
    line = lines[0]
    assert len(line) < MAX_LINE, line[:300]
    assert not any(unicodedata.category(c) == "Cc" for c in line), repr(line)
    return line


# ---------------------------------------------------------------- partition names

BAD_NAMES = [
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("../../etc", "path separator"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    (".hidden", "starts with '.'"),
    ("-rf", "starts with '-'"),
    ("bell\x07", "control character"),
    ("esc\x1b[2Jclear", "control character"),
    ("new\nline", "control character"),
    ("nul\x00byte", "control character"),
    ("x" * 65, "65 characters long"),
    ("x" * 100_000, "100000 characters long"),
    ("", "empty"),
    (" ", "starts with ' '"),
    ("a b", "contains ' '"),
    ("ünïcode", "starts with 'ü'"),
    ("semi;colon", "contains ';'"),
]


@pytest.mark.parametrize(("name", "says"), BAD_NAMES, ids=[repr(n[:12]) for n, _ in BAD_NAMES])
def test_partition_name_is_refused(
    name: str, says: str, pool_dir: Path, tmp_path: Path, capsys
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", make_docs("math", 3, 5))
    before = tree_digest(pool_dir)
    line = refused(capsys, "pool", "add", pool_dir, data, f"--name={name}")
    assert "invalid partition name" in line and says in line
    assert tree_digest(pool_dir) == before


BAD_VALUES = ["a/b", "..", "\x1b[2J", "x" * 5000, {"nested": 1}, [1, 2], "", "tab\there"]


@pytest.mark.parametrize("value", BAD_VALUES, ids=[repr(v)[:12] for v in BAD_VALUES])
def test_partition_field_value_is_refused(
    value: object, pool_dir: Path, tmp_path: Path, capsys
) -> None:
    records = make_docs("math", 3, 5) + [{"text": "a fine text", "domain": value}]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    before = tree_digest(pool_dir)
    line = refused(capsys, "pool", "add", pool_dir, data, "--partition-by", "domain")
    assert "is not a valid partition name" in line
    assert tree_digest(pool_dir) == before


@pytest.mark.parametrize(
    ("units", "says"), [("0", ">= 1"), ("-3", ">= 1"), ("5000", "cannot deal")]
)
def test_unit_count_is_refused(
    units: str, says: str, pool_dir: Path, tmp_path: Path, capsys
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", make_docs("math", 3, 5))
    before = tree_digest(pool_dir)
    assert says in refused(capsys, "pool", "add", pool_dir, data, "--units", units)
    assert tree_digest(pool_dir) == before


# ---------------------------------------------------------------- mixtures and weights

BAD_MIXTURES = [
    ("../code", "path separator"),
    ("code/../wiki", "path separator"),
    ("..", "'..'"),
    ("co\x07de", "control character"),
    ("code\nwiki", "control character"),
    (",".join(f"p{i}" for i in range(5000)), r"unknown partition\(s\) 'p0'.* \.\.\."),
    (",".join(["code"] * 5000), "named twice in a subset: code"),
    ("code," * 40_000 + "wiki", "characters long"),
    ("code,,wiki", "empty entry"),
    (" , ", "empty entry"),
    ("code=1,wiki", "has no weight"),
    ("=1", "it is empty"),
    ("code=1=2", "not a number"),
]
BAD_WEIGHTS = [
    ("code=nan,wiki=1", "must be finite"),
    ("code=NaN", "must be finite"),
    ("code=inf", "must be finite"),
    ("code=-inf,wiki=1", "must be finite"),
    ("code=1e309", "must be finite"),
    ("code=1e308,wiki=1e308", "too large"),
    ("code=-1,wiki=2", "negative"),
    ("code=0,wiki=0", "positive weight"),
    ("code=abc", "not a number"),
    ("code=0x10", "not a number"),
]


def _eval(pool_dir: Path, eval_file: Path, *more: object) -> list[object]:
    return ["eval", pool_dir, "--eval-data", eval_file, "--eval-by", "domain", *more]


@pytest.mark.parametrize(
    ("flag", "spec", "says"),
    [("--mixture", s, m) for s, m in BAD_MIXTURES] + [("--weights", s, m) for s, m in BAD_WEIGHTS],
    ids=[repr(s[:16]) for s, _ in BAD_MIXTURES + BAD_WEIGHTS],
)
def test_mixture_is_refused(
    flag: str, spec: str, says: str, pool_dir: Path, corpus, capsys
) -> None:
    before = _pool_state(pool_dir)
    line = refused(capsys, *_eval(pool_dir, corpus["eval"], flag, spec))
    assert re.search(says, line), line
    assert _pool_state(pool_dir) == before


# ---------------------------------------------------------------- eval files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _gz_truncated(path: Path) -> Path:
    blob = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in make_docs("code", 50, 3)))
    return _write(path, blob[: len(blob) // 2])


EVAL_FILES = {
    "invalid-utf8": (
        lambda d: _write(d / "e.jsonl", b'{"text": "ok \xff\xfe bad"}\n'),
        "invalid UTF-8",
    ),
    "all-empty": (
        lambda d: write_jsonl(
            d / "e.jsonl", [{"text": "", "domain": "a"}, {"text": "  ", "domain": "a"}]
        ),
        "no documents found .*2 had empty text",
    ),
    "zero-bytes": (lambda d: _write(d / "e.jsonl", b""), "no documents found"),
    "not-json": (
        lambda d: _write(d / "e.jsonl", b'{"text": "fine"}\nhello world\n'),
        "line 2: invalid JSON",
    ),
    "json-but-not-object": (lambda d: _write(d / "e.jsonl", b"[1, 2]\n"), "expected a JSON object"),
    "text-not-string": (lambda d: _write(d / "e.jsonl", b'{"text": 5}\n'), "is int, not a string"),
    "text-null": (lambda d: _write(d / "e.jsonl", b'{"text": null}\n'), "is null"),
    "no-text-field": (lambda d: _write(d / "e.jsonl", b'{"body": "x"}\n'), "no field 'text'"),
    "random-bytes": (lambda d: _write(d / "e.jsonl", os.urandom(4096) + b"\xff\n"), "invalid"),
    "truncated-gzip": (lambda d: _gz_truncated(d / "e.jsonl.gz"), "corrupt or truncated"),
    "unknown-format": (
        lambda d: _write(d / "e.csv", b"text\nhello\n"),
        "unknown corpus format '.csv'",
    ),
    "missing": (lambda d: d / "nope.jsonl", "no such file or folder"),
    "no-domain-field": (
        lambda d: write_jsonl(d / "e.jsonl", [{"text": "hello"}]),
        "has no field 'domain'",
    ),
}


@pytest.mark.parametrize("case", list(EVAL_FILES))
def test_eval_file_is_refused(case: str, pool_dir: Path, tmp_path: Path, capsys) -> None:
    make, says = EVAL_FILES[case]
    before = _pool_state(pool_dir)
    line = refused(capsys, *_eval(pool_dir, make(tmp_path), "--mixture", "code"))
    assert re.search(says, line), line
    assert _pool_state(pool_dir) == before


def test_empty_eval_documents_are_skipped_not_scored(
    pool_dir: Path, corpus, tmp_path: Path
) -> None:
    """Some empty documents among real ones: skipped (they hold nothing to score)."""
    real = [json.loads(x) for x in corpus["eval"].read_text().splitlines()]
    padded = write_jsonl(
        tmp_path / "e.jsonl", [{"text": "", "domain": "code"}, *real, {"text": "\n"}]
    )
    pool = Pool.open(pool_dir)
    a = EvalSet.load(pool, padded, by="domain")
    b = EvalSet.load(pool, corpus["eval"], by="domain")
    assert a.fingerprint == b.fingerprint and len(a.docs) == len(real)


def test_garbage_results_store_is_refused(pool_dir: Path, corpus, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "pool"
    shutil.copytree(pool_dir, copy)
    for journal in ("results.sqlite-wal", "results.sqlite-shm"):  # the store is all three
        (copy / journal).unlink(missing_ok=True)
    (copy / "results.sqlite").write_bytes(b"this is not a database" * 100)
    line = refused(capsys, *_eval(copy, corpus["eval"], "--mixture", "code"))
    assert "results store" in line and "move it aside" in line


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    "args",
    [
        ["--mixture", "../code,co\x07de"],
        ["--weights", "code=nan,wiki=1"],
    ],
)
def test_console_entry_refuses_in_one_line(args: list[str], pool_dir: Path, corpus) -> None:
    r = run_cli(*_eval(pool_dir, corpus["eval"], *args))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate: error: "), lines
