"""ResultsCache: each table (perplexity, tasks, partial) read and written through one path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ablate import Evaluator, Mixture
from ablate.data.tasks import Task, TaskItem
from ablate.engine.results import ResultsCache, ResultsStore
from ablate.engine.scores import DomainScore, TaskScore


@dataclass(frozen=True)
class _EvalSet:  # what ResultsCache reads of an eval set: its fingerprint and domains
    fingerprint: str
    domains: tuple[str, ...]


def _task(fingerprint: str = "t1") -> Task:
    items = (TaskItem("a", ("x", "y"), 0, "1"), TaskItem("b", ("x", "y", "z"), 2, "2"))
    return Task("quiz", Path("quiz.jsonl"), items, fingerprint)


@pytest.fixture
def cache(tmp_path) -> ResultsCache:
    return ResultsCache(ResultsStore(tmp_path / "r.sqlite"), _EvalSet("e1", ("code", "wiki")))


def test_perplexity_rows_round_trip_per_pool_key_and_eval_set(cache):
    m = Mixture.parse("code,wiki")
    scores = {"code": DomainScore(10, 12.5, 40), "wiki": DomainScore(7, 3.0, 30)}
    assert cache.lookup(m, "k") is None
    fresh = cache.record(m, scores, "k")
    assert not fresh.cached and fresh.scores == scores
    hit = cache.lookup(m, "k")
    assert hit.cached and hit.scores == scores and hit.mixture == m
    assert cache.lookup(m, "other members") is None
    other = ResultsCache(cache.store, _EvalSet("e2", ("code", "wiki")))
    assert other.lookup(m, "k") is None  # another eval set never reads these rows
    fewer = ResultsCache(cache.store, _EvalSet("e1", ("code", "wiki", "math")))
    assert fewer.lookup(m, "k") is None  # a domain without a score is a miss


def test_task_rows_round_trip_and_a_changed_task_misses(cache):
    m, task = Mixture.parse("code"), _task()
    nll = np.array([1.0, 2.0, 0.5, 0.25, 3.0])
    assert cache.lookup_task(task, m, "k") is None
    kept = cache.record_task(task, m, "k", TaskScore.of(task, nll))
    assert kept.acc == 0.5
    hit = cache.lookup_task(task, m, "k")
    assert hit.cached and np.array_equal(hit.choice_nll, nll) and hit.acc == kept.acc
    assert cache.lookup_task(_task("t2"), m, "k") is None  # other items or seed
    short = Task("quiz", Path("q"), task.items[:1], "t1")  # same key, other choice count
    assert cache.lookup_task(short, m, "k") is None


def test_partial_rows_are_kept_apart_from_full_scores(cache):
    m = Mixture.parse("wiki")
    part = {"code": DomainScore(3, 4.0, 10), "wiki": DomainScore(2, 1.0, 8)}
    cache.record_partial(m, "k", part, {"code": 10, "wiki": 7})
    assert cache.lookup_partial(m, "k") == {"code": (3, 4.0, 10), "wiki": (2, 1.0, 7)}
    assert cache.lookup(m, "k") is None  # never served as a full score


def test_without_a_store_nothing_is_remembered():
    c = ResultsCache(None, _EvalSet("e1", ("code",)))
    m, task = Mixture.parse("code"), _task()
    c.record(m, {"code": DomainScore(1, 1.0, 1)}, "k")
    c.record_task(task, m, "k", TaskScore.of(task, np.zeros(5)))
    c.record_partial(m, "k", {"code": DomainScore(1, 1.0, 1)}, {"code": 2})
    assert c.lookup(m, "k") is c.lookup_task(task, m, "k") is c.lookup_partial(m, "k") is None


def test_cache_hits_do_not_recompute(full_pool, corpus, monkeypatch):
    ev = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)
    first = ev.evaluate("code,math")
    assert not first.cached
    again = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)
    from ablate.engine.merge import MergedModel

    # A cache hit neither scores nor loads the members.
    monkeypatch.setattr(MergedModel, "__init__", lambda *a, **k: pytest.fail("loaded members"))
    hit = again.evaluate("math,code")
    assert hit.cached and hit.ppl == first.ppl
