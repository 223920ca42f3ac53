"""Executors: the local and the Ray executor share one protocol; a run scores the eval set
and the tasks asked for on the same merge."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from support import write_jsonl

from ablate import Mixture, Pool
from ablate.data.evalset import EvalSet
from ablate.data.tasks import Task
from ablate.engine.executor import Executor, LocalExecutor, Scored, Scorers
from ablate.engine.layout import MemberLayout
from ablate.engine.ray import RayExecutor


def test_local_and_ray_executors_implement_the_protocol():
    for name in ("run", "close"):
        want = inspect.signature(getattr(Executor, name))
        for cls in (LocalExecutor, RayExecutor):
            got = inspect.signature(getattr(cls, name))
            assert list(got.parameters) == list(want.parameters), (cls.__name__, name)


def test_a_run_scores_perplexity_and_tasks_on_one_merge(full_pool_dir, corpus, tmp_path):
    pool = Pool.open(full_pool_dir)
    eval_set = EvalSet.load(pool, corpus["eval"], by="domain")
    quiz = write_jsonl(
        tmp_path / "quiz.jsonl",
        [{"context": "the code", "choices": ["def", "wiki"], "gold": 0}],
    )
    task = Task.load(pool, quiz)
    scorers = Scorers(pool, MemberLayout(pool), device_name="cpu", progress=False)
    run = LocalExecutor(scorers)
    mixtures = [Mixture.parse("code=0.3,wiki=0.7"), Mixture.parse("code,wiki")]
    got = {s.mixture.key: s for s in run.run(mixtures, eval_set, [task])}
    assert set(got) == {m.key for m in mixtures}
    for m in mixtures:
        s = got[m.key]
        assert isinstance(s, Scored) and set(s.scores) == set(eval_set.domains)
        scorers.merged().load(m)
        for d, want in scorers.scorer(eval_set).score().items():  # walked: within rounding
            assert s.scores[d].tokens == want.tokens
            assert s.scores[d].nll == pytest.approx(want.nll, rel=1e-5)
        alone = scorers.task_scorer(task).score()
        np.testing.assert_allclose(s.tasks["quiz"].choice_nll, alone.choice_nll, rtol=1e-5)
    only_tasks = list(run.run(mixtures[:1], None, [task]))
    assert len(only_tasks) == 1 and only_tasks[0].scores == {} and "quiz" in only_tasks[0].tasks
    assert list(run.run([], eval_set, [task])) == []
