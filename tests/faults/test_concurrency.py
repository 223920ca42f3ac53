"""Two writers at once: the results store keeps every row, growers keep out of each other's way."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ablate.engine.results import ResultsStore

# Each writer waits for the other at a file barrier, then both open a fresh store (racing to
# create its schema and switch it to WAL) and commit N small transactions interleaved.
WRITER = """
import sys, time
from pathlib import Path
from ablate.engine.results import ResultsStore

path, me, other, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
Path(f"{path}.{me}.ready").touch()
deadline = time.time() + 120
while not Path(f"{path}.{other}.ready").exists() and time.time() < deadline:
    time.sleep(0.001)
store = ResultsStore(path)
for i in range(n):
    rows = {d: (i, i + 0.5, 10 * i) for d in ("a", "b", "c")}
    store.put("pool", "eval", f"{me}={i}", {me: 1.0}, rows)
store.close()
"""

N = 150


def test_two_processes_write_one_results_store(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), me, other, str(N)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("x", "y"), ("y", "x"))
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and err == "", err  # in particular no "database is locked"
    store = ResultsStore(db)
    try:
        assert len(store) == 2 * N
        for me in ("x", "y"):
            for i in range(N):
                want = {d: (i, i + 0.5, 10 * i) for d in ("a", "b", "c")}
                assert store.get("pool", "eval", f"{me}={i}") == want
    finally:
        store.close()


def test_two_writers_creating_a_new_store_at_once(tmp_path: Path) -> None:
    """Both writers open the store the moment it is created (the WAL switch races).

    SQLite answers the loser of that race "database is locked" at once, without waiting:
    without a retry this failed about one opening in six.
    """
    import threading

    for round_ in range(40):
        db = tmp_path / f"r{round_}.sqlite"
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def write(me: str, db=db, barrier=barrier, errors=errors) -> None:
            barrier.wait()
            try:
                store = ResultsStore(db)
                store.put("pool", "eval", me, {me: 1.0}, {"a": (1, 1.0, 1)})
                store.close()
            except BaseException as e:  # noqa: BLE001  # collected and reported below
                errors.append(e)

        threads = [threading.Thread(target=write, args=(me,)) for me in ("x", "y")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"round {round_}: {errors[0]}"
        store = ResultsStore(db)
        assert len(store) == 2
        store.close()


def test_grow_leaves_another_writers_staging_alone(full_pool) -> None:
    """Cleaning up after a crash must not delete a member another process is writing now."""
    from filelock import FileLock

    mine, theirs = (full_pool.member("code", u) for u in (0, 1))
    assert mine is not None and theirs is not None
    for rec in (mine, theirs):
        shutil.rmtree(full_pool.member_folder(rec.partition, rec.unit))
    parent = full_pool.member_folder("code", 1).parent
    live = parent / ".0001.k3y9.tmp"  # the other writer's half-written member
    live.mkdir()
    (live / "model.safetensors").write_bytes(b"half of it")
    stale = parent / ".0000.zz1q.tmp"  # a crashed earlier attempt at our member
    stale.mkdir()

    with FileLock(str(parent / ".0001.lock")):  # held by the other writer
        trained = full_pool.grow(only=["code"], progress=False)
    assert [m.member_id for m in trained] == ["code/0"]  # code/1 is left to its writer
    assert live.is_dir() and (live / "model.safetensors").read_bytes() == b"half of it"
    assert not stale.exists()


def test_store_damaged_after_opening_is_one_clear_error(tmp_path: Path) -> None:
    """A store that goes bad while open fails lookups and writes with a clear message."""
    import sqlite3

    import pytest

    from ablate.pool.errors import PoolError

    class Malformed:  # what SQLite raises on a page it finds damaged
        def __getattr__(self, name: str):
            def fail(*args: object, **kw: object):
                raise sqlite3.DatabaseError("database disk image is malformed")

            return fail

        def __enter__(self) -> Malformed:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    store = ResultsStore(tmp_path / "results.sqlite")
    real, store._db = store._db, Malformed()  # noqa: SLF001
    try:
        with pytest.raises(PoolError, match="malformed.*move it aside"):
            store.get("pool", "eval", "m")
        with pytest.raises(PoolError, match="malformed.*move it aside"):
            store.put("pool", "eval", "n", {"a": 1.0}, {"a": (1, 1.0, 1)})
    finally:
        real.close()
