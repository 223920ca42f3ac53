"""The results store: every scored (pool members, mixture, eval set) is remembered.

SQLite in WAL mode next to the pool, so several processes (search workers, notebooks) can
read while one writes, and a repeated or resumed study never scores a mixture twice. A
mixture's key includes the sha256 of exactly the members it merges, so growing the pool
invalidates only the mixtures whose members changed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.engine.scores import DocScores, DomainScore, EvalResult, TaskScore
from ablate.pool.errors import PoolError

if TYPE_CHECKING:
    from ablate.data.evalset import EvalSet
    from ablate.data.tasks import Task
    from ablate.engine.levels import LevelShift
    from ablate.mixture import Mixture

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    pool_key    TEXT NOT NULL,
    eval_key    TEXT NOT NULL,
    mixture_key TEXT NOT NULL,
    domain      TEXT NOT NULL,
    mixture     TEXT NOT NULL,
    tokens      INTEGER NOT NULL,
    nll         REAL NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (pool_key, eval_key, mixture_key, domain)
)
"""
# Multiple-choice task scores (ablate.data.tasks): one row per (members, task, mixture); every
# choice's summed NLL as a float64 blob, so metrics and per-item differences derive from it.
# A table of its own (IF NOT EXISTS), so stores of older releases open unchanged.
_TASK_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_results (
    pool_key    TEXT NOT NULL,
    task_key    TEXT NOT NULL,
    mixture_key TEXT NOT NULL,
    mixture     TEXT NOT NULL,
    choice_nll  BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (pool_key, task_key, mixture_key)
)
"""
# Scores of mixtures a race dropped (ablate.racing.policy): tokens and summed NLL over the documents
# scored, and the domain's full token count beside them. A table of its own, never read by
# ``get``, so a partial score cannot be served as a full one.
_PARTIAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS partial_results (
    pool_key     TEXT NOT NULL,
    eval_key     TEXT NOT NULL,
    mixture_key  TEXT NOT NULL,
    domain       TEXT NOT NULL,
    mixture      TEXT NOT NULL,
    tokens       INTEGER NOT NULL,
    nll          REAL NOT NULL,
    total_tokens INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (pool_key, eval_key, mixture_key, domain)
)
"""
# Per-document scores of a mixture's proxy (what validation bootstraps over): summed NLL
# (float64) and scored tokens (int64) of every eval document, as blobs. A table of its own
# (IF NOT EXISTS), so stores of older releases open unchanged.
_DOC_SCHEMA = """
CREATE TABLE IF NOT EXISTS doc_results (
    pool_key    TEXT NOT NULL,
    eval_key    TEXT NOT NULL,
    mixture_key TEXT NOT NULL,
    mixture     TEXT NOT NULL,
    nll         BLOB NOT NULL,
    tokens      BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (pool_key, eval_key, mixture_key)
)
"""
_BUSY_MS = 60_000  # writers wait this long for another writer's transaction instead of failing

Row = tuple[int, float, int]  # (tokens, summed nll, bytes)


class ResultsStore:
    """Scores per (pool key, eval key, mixture key, domain)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        deadline = time.monotonic() + _BUSY_MS / 1000
        while True:
            try:
                self._db = self._open()
                return
            except sqlite3.OperationalError as e:
                # Switching a new database to WAL takes an exclusive lock, and SQLite answers a
                # second process racing for it with "locked" at once, without its busy handler.
                if _is_busy(e) and time.monotonic() < deadline:
                    time.sleep(random.uniform(0.01, 0.05))
                    continue
                raise self._unusable(e) from None
            except sqlite3.DatabaseError as e:
                raise self._unusable(e) from None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across app crashes
            db.execute(_SCHEMA)
            db.execute(_TASK_SCHEMA)
            db.execute(_PARTIAL_SCHEMA)
            db.execute(_DOC_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _unusable(self, e: Exception) -> PoolError:
        return PoolError(
            f"results store {self.path} is unusable ({e}); move it aside - scores will be recomputed"
        )

    def get(self, pool_key: str, eval_key: str, mixture_key: str) -> dict[str, Row] | None:
        rows = self._read(
            "SELECT domain, tokens, nll, bytes FROM results WHERE pool_key=? AND eval_key=? AND mixture_key=?",
            (pool_key, eval_key, mixture_key),
        )
        return {d: (t, n, b) for d, t, n, b in rows} or None

    def put(
        self,
        pool_key: str,
        eval_key: str,
        mixture_key: str,
        mixture: Mapping[str, float],
        rows: Mapping[str, Row],
    ) -> None:
        """Store all domains of one mixture in one transaction (all or nothing)."""
        now, text = _stamp(mixture)
        self._write(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (pool_key, eval_key, mixture_key, d, text, t, n, b, now)
                for d, (t, n, b) in rows.items()
            ],
        )

    def get_task(self, pool_key: str, task_key: str, mixture_key: str) -> np.ndarray | None:
        """Every choice's summed NLL ``(C,)`` float64 for a task, or None if never scored."""
        rows = self._read(
            "SELECT choice_nll FROM task_results WHERE pool_key=? AND task_key=? AND mixture_key=?",
            (pool_key, task_key, mixture_key),
        )
        return np.frombuffer(rows[0][0], dtype="<f8").copy() if rows else None

    def put_task(
        self,
        pool_key: str,
        task_key: str,
        mixture_key: str,
        mixture: Mapping[str, float],
        choice_nll: np.ndarray,
    ) -> None:
        """Store one task's per-choice NLL ``(C,)`` for one mixture."""
        now, text = _stamp(mixture)
        blob = np.ascontiguousarray(choice_nll, dtype="<f8").tobytes()
        self._write(
            "INSERT OR REPLACE INTO task_results VALUES (?,?,?,?,?,?)",
            [(pool_key, task_key, mixture_key, text, blob, now)],
        )

    def get_documents(
        self, pool_key: str, eval_key: str, mixture_key: str
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(nll, tokens)`` per eval document, or None if never stored."""
        rows = self._read(
            "SELECT nll, tokens FROM doc_results WHERE pool_key=? AND eval_key=? AND mixture_key=?",
            (pool_key, eval_key, mixture_key),
        )
        if not rows:
            return None
        nll, tokens = rows[0]
        return np.frombuffer(nll, dtype="<f8").copy(), np.frombuffer(tokens, dtype="<i8").copy()

    def put_documents(
        self,
        pool_key: str,
        eval_key: str,
        mixture_key: str,
        mixture: Mapping[str, float],
        nll: np.ndarray,
        tokens: np.ndarray,
    ) -> None:
        """Store one mixture's per-document summed NLL and scored tokens."""
        now, text = _stamp(mixture)
        blobs = (
            np.ascontiguousarray(nll, dtype="<f8").tobytes(),
            np.ascontiguousarray(tokens, dtype="<i8").tobytes(),
        )
        self._write(
            "INSERT OR REPLACE INTO doc_results VALUES (?,?,?,?,?,?,?)",
            [(pool_key, eval_key, mixture_key, text, *blobs, now)],
        )

    def put_partial(
        self,
        pool_key: str,
        eval_key: str,
        mixture_key: str,
        mixture: Mapping[str, float],
        rows: Mapping[str, Row],
    ) -> None:
        """Store a raced-out mixture's partial scores: ``{domain: (tokens scored, summed nll,
        domain's total tokens)}``, all domains in one transaction."""
        now, text = _stamp(mixture)
        self._write(
            "INSERT OR REPLACE INTO partial_results VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (pool_key, eval_key, mixture_key, d, text, t, n, total, now)
                for d, (t, n, total) in rows.items()
            ],
        )

    def get_partial(self, pool_key: str, eval_key: str, mixture_key: str) -> dict[str, Row] | None:
        """A raced-out mixture's ``{domain: (tokens scored, summed nll, total tokens)}``."""
        rows = self._read(
            "SELECT domain, tokens, nll, total_tokens FROM partial_results "
            "WHERE pool_key=? AND eval_key=? AND mixture_key=?",
            (pool_key, eval_key, mixture_key),
        )
        return {d: (t, n, total) for d, t, n, total in rows} or None

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:  # damaged since it was opened
            raise self._unusable(e) from None

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """``rows`` in one transaction (all or nothing), failures as one clear line."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(sql, rows)
        except sqlite3.OperationalError as e:  # disk full, I/O error, locked past the busy timeout
            raise PoolError(
                f"cannot write to results store {self.path} ({e}); scores stored before are kept - "
                "fix the cause and run again"
            ) from None
        except sqlite3.DatabaseError as e:  # damaged since it was opened
            raise self._unusable(e) from None

    def __len__(self) -> int:
        return self._db.execute(
            "SELECT COUNT(DISTINCT pool_key || eval_key || mixture_key) FROM results"
        ).fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _stamp(mixture: Mapping[str, float]) -> tuple[str, str]:
    """``(now, mixture as JSON)``: the columns every stored row carries."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return now, json.dumps(dict(mixture), sort_keys=True)


class ResultsCache:
    """The one reader and writer of a store's tables for one eval set: perplexity per
    domain, task scores per choice, per-document scores (validation's proxies), and the
    partial scores of mixtures a race dropped.

    Every method takes the mixture's ``pool_key`` (``MemberLayout.pool_key``: exactly the
    members it merges). ``store=None`` remembers nothing (every lookup misses): the Ray
    actors and throwaway evaluators use that, and only one process writes a store.

    ``level`` (``ablate.engine.levels``) gives the shift each domain's proxy scores are read
    with, asked once, on the first score read: everything stored is as scored, everything
    returned (perplexity, documents, partial scores) as read.
    """

    def __init__(
        self,
        store: ResultsStore | None,
        eval_set: EvalSet,
        level: Callable[[], LevelShift | None] | None = None,
    ):
        self.store = store
        self.eval_set = eval_set
        self._level = level

    @cached_property
    def shift(self) -> LevelShift | None:
        """The proxy level's shift per domain (None: scores are read as scored)."""
        return None if self._level is None else self._level()

    def read(self, scores: Mapping[str, DomainScore]) -> dict[str, DomainScore]:
        """Per-domain proxy scores as read (``shift`` applied)."""
        return dict(scores) if self.shift is None else self.shift.scores(scores)

    def read_documents(self, docs: DocScores) -> DocScores:
        """Per-document proxy scores as read (``shift`` applied)."""
        if self.shift is None:
            return docs
        return self.shift.documents(docs, np.asarray(self.eval_set.doc_domain))

    # ------------------------------------------------------------------ perplexity
    def lookup(self, mixture: Mixture, pool_key: str) -> EvalResult | None:
        """The stored scores of ``mixture``, if every eval domain has one."""
        if self.store is None:
            return None
        scores = self.lookup_model(mixture.key, pool_key)
        return None if scores is None else EvalResult(mixture, self.read(scores), cached=True)

    def record(
        self, mixture: Mixture, scores: Mapping[str, DomainScore], pool_key: str
    ) -> EvalResult:
        """Store ``scores`` (as scored; all domains in one transaction) and return them as
        a result (as read)."""
        self._put(mixture.key, pool_key, mixture.as_dict(), scores)
        return EvalResult(mixture, self.read(scores))

    def lookup_model(self, name: str, pool_key: str) -> dict[str, DomainScore] | None:
        """The stored per-domain scores under ``name`` (a mixture's key, or a model that is
        no mixture: the seed), as scored, if every eval domain has one."""
        if self.store is None:
            return None
        hit = self.store.get(pool_key, self.eval_set.fingerprint, name)
        if hit is None or set(hit) != set(self.eval_set.domains):
            return None
        return {d: DomainScore(*hit[d]) for d in self.eval_set.domains}

    def record_model(
        self, name: str, pool_key: str, scores: Mapping[str, DomainScore]
    ) -> dict[str, DomainScore]:
        """Store a model's per-domain scores under ``name`` (no mixture) and return them."""
        self._put(name, pool_key, {}, scores)
        return dict(scores)

    def _put(
        self,
        name: str,
        pool_key: str,
        mixture: Mapping[str, float],
        scores: Mapping[str, DomainScore],
    ) -> None:
        """Every domain of ``scores`` in one transaction, as scored."""
        if self.store is not None:
            rows: dict[str, Row] = {d: (s.tokens, s.nll, s.bytes) for d, s in scores.items()}
            self.store.put(pool_key, self.eval_set.fingerprint, name, mixture, rows)

    # ------------------------------------------------------------------ tasks
    def lookup_task(self, task: Task, mixture: Mixture, pool_key: str) -> TaskScore | None:
        """``task``'s stored score of ``mixture``, if it was scored before on these items."""
        if self.store is None:
            return None
        hit = self.store.get_task(pool_key, task.fingerprint, mixture.key)
        if hit is None or len(hit) != task.offsets[-1]:
            return None
        return TaskScore.of(task, hit, cached=True)

    def lookup_tasks(
        self, tasks: Mapping[str, Task], mixture: Mixture, pool_key: str
    ) -> dict[str, TaskScore]:
        """The scores of ``mixture`` the store holds for ``tasks`` (by name; missing: absent)."""
        hits = {n: self.lookup_task(t, mixture, pool_key) for n, t in tasks.items()}
        return {n: s for n, s in hits.items() if s is not None}

    def record_task(
        self, task: Task, mixture: Mixture, pool_key: str, score: TaskScore
    ) -> TaskScore:
        """Store ``score`` (every choice's NLL of ``task``) and return it."""
        if self.store is not None:
            self.store.put_task(
                pool_key, task.fingerprint, mixture.key, mixture.as_dict(), score.choice_nll
            )
        return score

    # ------------------------------------------------------------------ per document
    def lookup_documents(self, mixture: Mixture, pool_key: str) -> DocScores | None:
        """``mixture``'s stored per-document scores on this eval set, if complete."""
        if self.store is None:
            return None
        hit = self.store.get_documents(pool_key, self.eval_set.fingerprint, mixture.key)
        if hit is None or len(hit[0]) != len(self.eval_set.docs):
            return None
        return self.read_documents(DocScores(nll=hit[0], tokens=hit[1]))

    def record_documents(self, mixture: Mixture, pool_key: str, docs: DocScores) -> None:
        """Store ``docs``, the per-document scores of ``mixture`` on this eval set (as
        scored)."""
        if self.store is not None:
            self.store.put_documents(
                pool_key,
                self.eval_set.fingerprint,
                mixture.key,
                mixture.as_dict(),
                docs.nll,
                docs.tokens,
            )

    # ------------------------------------------------------------------ partial scores
    def lookup_partial(self, mixture: Mixture, pool_key: str) -> dict[str, Row] | None:
        """A raced-out mixture's ``{domain: (tokens scored, summed nll, total tokens)}``
        (as read)."""
        if self.store is None:
            return None
        hit = self.store.get_partial(pool_key, self.eval_set.fingerprint, mixture.key)
        if hit is None or self.shift is None:
            return hit
        return {d: (t, n - self.shift.of(d) * t, total) for d, (t, n, total) in hit.items()}

    def record_partial(
        self,
        mixture: Mixture,
        pool_key: str,
        partial: Mapping[str, DomainScore],
        total_tokens: Mapping[str, int],
    ) -> None:
        """Store a raced-out mixture's scores (as scored) over the documents it was scored
        on, with each domain's full token count beside them (never read as a full score)."""
        if self.store is not None:
            rows = {d: (s.tokens, s.nll, total_tokens[d]) for d, s in partial.items()}
            self.store.put_partial(
                pool_key, self.eval_set.fingerprint, mixture.key, mixture.as_dict(), rows
            )


def _is_busy(e: sqlite3.OperationalError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # primary code
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg
