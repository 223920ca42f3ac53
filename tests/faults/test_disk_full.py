"""A full disk: the write fails with a clear one-line error and what was there stays intact.

The failure is injected where the bytes go (safetensors' writer, ``numpy.save``, the JSON
writer's file object, SQLite's insert), raising what a full disk raises: ``OSError(ENOSPC)``
or SQLite's "database or disk is full". The pool is compared byte for byte before and
after (``tree_digest``, hidden lock files included).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import eval_cli_args, make_docs, tree_digest, write_jsonl

from ablate import Evaluator
from ablate.cli import main
from ablate.engine.results import ResultsStore
from ablate.pool import PoolError
from ablate.pool.atomic import write_json
from ablate.pool.atomic import write_jsonl as atomic_jsonl


def _enospc(filename: object = None) -> OSError:
    return OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC), None if filename is None else str(filename)
    )


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate: error:"), lines
    return lines[0]


def test_full_disk_while_writing_a_member(full_pool, monkeypatch, capsys) -> None:
    import safetensors.torch

    victim = full_pool.members[-1]
    shutil.rmtree(full_pool.member_folder(victim.partition, victim.unit))
    before = tree_digest(full_pool.path)
    real = safetensors.torch.save_file

    def save_file(tensors: Any, filename: Any, metadata: Any = None) -> None:
        real(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)  # what fitted before the disk filled
        raise _enospc(filename)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    assert main(["-q", "pool", "grow", str(full_pool.path)]) == 2
    line = _one_error_line(capsys)
    assert "No space left on device" in line and "run the same command again" in line
    assert tree_digest(full_pool.path) == before  # no staged leftovers, nothing else touched


def test_full_disk_while_tokenizing(full_pool, tmp_path: Path, monkeypatch, capsys) -> None:
    new = write_jsonl(
        tmp_path / "new.jsonl", [dict(r, domain="extra") for r in make_docs("math", 4, 9)]
    )
    before = tree_digest(full_pool.path)
    real = np.save

    def save(file: Any, arr: Any, *args: Any, **kw: Any) -> None:
        real(file, arr, *args, **kw)
        raise _enospc(file)

    monkeypatch.setattr(np, "save", save)
    assert (
        main(["-q", "pool", "add", str(full_pool.path), str(new), "--partition-by", "domain"]) == 2
    )
    assert "No space left on device" in _one_error_line(capsys)
    assert tree_digest(full_pool.path) == before


@pytest.mark.parametrize("write", [write_json, atomic_jsonl], ids=["json", "jsonl"])
def test_full_disk_while_replacing_a_json_record(tmp_path: Path, monkeypatch, write) -> None:
    """An atomic rewrite that fails half-way leaves the old record, byte for byte (a JSON
    record, or a JSON-lines file such as the demo's corpus)."""
    record = tmp_path / "pool.json"
    write(record, [{"format_version": 1, "old": True}])
    before = tree_digest(tmp_path)
    real_fdopen = os.fdopen

    class HalfFull:
        def __init__(self, f: Any):
            self._f = f

        def write(self, data: bytes) -> int:
            self._f.write(data[: len(data) // 2])
            raise _enospc()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

        def __enter__(self) -> HalfFull:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

    monkeypatch.setattr(
        "ablate.pool.atomic.os.fdopen", lambda *a, **k: HalfFull(real_fdopen(*a, **k))
    )
    with pytest.raises(OSError) as err:
        write(record, [{"format_version": 1, "new": True}])
    assert err.value.errno == errno.ENOSPC
    assert tree_digest(tmp_path) == before  # old bytes, and no temporary left beside them


class _DiskFull:
    """A sqlite3 connection whose inserts fail the way SQLite fails on a full disk."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def executemany(self, *args: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    def __enter__(self) -> _DiskFull:
        self._db.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._db.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _rows(path: Path) -> list[tuple]:
    store = ResultsStore(path)
    try:
        return store._db.execute("SELECT * FROM results ORDER BY 1, 2, 3, 4").fetchall()
    finally:
        store.close()


def test_full_disk_while_storing_scores(full_pool, corpus, monkeypatch, capsys) -> None:
    db = full_pool.path / "results.sqlite"
    ev = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)
    ev.evaluate("math")
    before = _rows(db)
    assert len(before) == 3

    ev.store._db = _DiskFull(ev.store._db)
    with pytest.raises(
        PoolError, match=r"results store .*results\.sqlite .*database or disk is full"
    ):
        ev.evaluate("wiki")
    assert _rows(db) == before

    real_init = ResultsStore.__init__

    def init(self: ResultsStore, *args: Any, **kw: Any) -> None:
        real_init(self, *args, **kw)
        self._db = _DiskFull(self._db)

    monkeypatch.setattr(ResultsStore, "__init__", init)
    args = ["-q", *eval_cli_args("eval", full_pool.path, corpus["eval"])]
    assert main([*args, "--mixture", "code"]) == 2
    assert "database or disk is full" in _one_error_line(capsys)
    assert main([*args, "--mixture", "math"]) == 0  # a stored score needs no write
    monkeypatch.undo()
    assert _rows(db) == before
