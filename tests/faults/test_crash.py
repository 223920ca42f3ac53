"""SIGKILL at the critical moment of each write: nothing half-written shows, resuming finishes.

A pool is days of GPU time, so the crash that matters is the one no cleanup code sees: the
process is SIGKILLed (``inject.py``) while a member, a tokenized partition or a score is
being written. Afterwards the pool must open, show only finished work, and the same command
must complete the job.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from support import make_docs, write_jsonl

from ablate.cli import main
from ablate.engine.results import ResultsStore
from ablate.pool import Pool
from ablate.pool.tokens import content_hash

SIGKILLED = -signal.SIGKILL


def test_kill_during_member_write_then_grow_resumes(
    full_pool, inject, visible_tree, leftovers
) -> None:
    path = full_pool.path
    done, victim = [m for m in full_pool.members if m.partition == "wiki"][:2]
    for rec in (done, victim):
        shutil.rmtree(full_pool.member_folder(rec.partition, rec.unit))
    before = visible_tree(path)

    # the first member is written whole; the second is killed with half its file on disk
    r = inject("kill-in-member-save", 2, "pool", "grow", path, "--only", "wiki")
    assert r.returncode == SIGKILLED, r.stderr
    assert leftovers(path / "members"), "the kill should land mid-write"
    # nothing half-written is visible: the only new files are the finished member's
    folder = f"members/wiki/{done.unit:04d}/"
    assert {k: v for k, v in visible_tree(path).items() if not k.startswith(folder)} == before
    pool = Pool.open(path)
    kept = pool.member(done.partition, done.unit)
    assert kept is not None and kept.weights_sha256 == done.weights_sha256  # finished work is kept
    assert [u.member_id for u in pool.missing()] == [victim.member_id]
    report = pool.verify()
    assert report.corrupt == [] and report.missing == [victim.member_id]

    # resuming trains the lost member only
    assert [m.member_id for m in pool.grow(progress=False)] == [victim.member_id]
    again = pool.member(victim.partition, victim.unit)
    # training is deterministic on CPU: the resumed member has the same bytes as the lost one
    assert again is not None and again.weights_sha256 == victim.weights_sha256
    assert pool.verify().ok and leftovers(path / "members") == []


def test_kill_during_add_then_add_resumes(
    full_pool, tmp_path, inject, visible_tree, leftovers
) -> None:
    path = full_pool.path
    docs = {"alpha": make_docs("code", 5, seed=7), "beta": make_docs("wiki", 5, seed=7)}
    new = write_jsonl(
        tmp_path / "new.jsonl", [dict(r, domain=d) for d, rs in docs.items() for r in rs]
    )
    before = visible_tree(path)
    add = ("pool", "add", path, new, "--partition-by", "domain")

    r = inject("kill-at-publish", 1, *add)  # alpha fully staged, not yet renamed
    assert r.returncode == SIGKILLED, r.stderr
    assert leftovers(path / "data") and visible_tree(path) == before
    assert sorted(Pool.open(path).partitions) == ["code", "math", "wiki"]

    r = inject("kill-in-tokenize", 2, *add)  # alpha written, half-way through tokenizing beta
    assert r.returncode == SIGKILLED, r.stderr
    pool = Pool.open(path)
    assert sorted(pool.partitions) == ["alpha", "code", "math", "wiki"]
    now = visible_tree(path)
    assert {k: v for k, v in now.items() if not k.startswith("data/alpha/")} == before
    assert pool.verify().corrupt == []
    # alpha's stale stage was swept; beta's tokens stream into its own stage, left hidden
    [stage] = leftovers(path / "data")
    assert stage.startswith(".beta.") and stage.endswith(".tmp")

    assert pool.add([new], by="domain", progress=False) == ["beta"]  # alpha is kept, not redone
    pool = Pool.open(path)
    for name, records in docs.items():
        assert pool.partitions[name].index.content_hash == content_hash(
            [d["text"] for d in records]
        )
    assert pool.verify().corrupt == [] and leftovers(path / "data") == []


def _rows(store_path: Path) -> list[tuple]:
    store = ResultsStore(store_path)
    try:
        assert store._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return store._db.execute(
            "SELECT mixture_key, domain, tokens, nll, bytes, created_at FROM results ORDER BY 1, 2"
        ).fetchall()
    finally:
        store.close()


def test_kill_during_store_write_then_eval_resumes(full_pool, corpus, inject, capsys) -> None:
    path = full_pool.path
    args = ["eval", path, "--eval-data", corpus["eval"], "--eval-by", "domain", "--json"]
    args += ["--mixture", "code", "--mixture", "math", "--mixture", "wiki"]
    r = inject("kill-in-store-put", 2, *args)  # rows of the 2nd mixture inserted, not committed
    assert r.returncode == SIGKILLED, r.stderr
    first = _rows(path / "results.sqlite")
    assert {row[0] for row in first} == {"code=1.0"}  # the committed mixture, every domain
    assert len(first) == 3

    assert main(["-q", *map(str, args)]) == 0  # resume in-process: same CLI, no new interpreter
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 * 4  # 3 mixtures x (3 domains + macro)
    after = _rows(path / "results.sqlite")
    assert {row[0] for row in after} == {"code=1.0", "math=1.0", "wiki=1.0"} and len(after) == 9
    assert set(first) <= set(after)  # the stored score was reused, not recomputed
