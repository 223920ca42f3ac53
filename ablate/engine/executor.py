"""Executors score a batch of mixtures: here (``LocalExecutor``) or on Ray actors
(``ablate.engine.ray.RayExecutor``), behind one ``Executor`` protocol.

The caller (the evaluator) answers what the results store knows and records what comes
back; an executor only scores, so only the caller's process touches the store. Both
executors are built from the same engine pieces (``Scorers``: the merged model and one
scorer per eval set and task), so a mixture scores the same wherever it runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from ablate.engine.layout import MemberLayout
from ablate.engine.scoring import DomainScore, Scorer, TaskScore, TaskScorer
from ablate.pool.train import pick_device

if TYPE_CHECKING:
    from ablate.data.evalset import EvalSet
    from ablate.data.tasks import Task
    from ablate.engine.merge import MergedModel
    from ablate.mixture import Mixture
    from ablate.pool import Pool

ExecutorName = Literal["local", "ray"]


@dataclass(frozen=True)
class Scored:
    """One mixture's new scores: per eval domain (empty when no eval set was asked for)
    and per task asked for."""

    mixture: Mixture
    scores: Mapping[str, DomainScore]
    tasks: Mapping[str, TaskScore] = field(default_factory=dict)


class Executor(Protocol):
    """Scores mixtures and yields them as they finish (in any order)."""

    def run(
        self,
        mixtures: Sequence[Mixture],
        eval_set: EvalSet | None,
        tasks: Sequence[Task] = (),
    ) -> Iterator[Scored]:
        """Score every mixture on ``eval_set`` (None: none) and on each of ``tasks``."""
        ...

    def close(self) -> None:
        """Release workers (a no-op where there are none)."""
        ...


@dataclass
class Scorers:
    """The lazily loaded merged model of a pool and its scorers, one per eval set and task.

    Everything that scores in one process shares one ``Scorers``: evaluators of the pool on
    other eval sets, the local executor, and each Ray actor (which builds its own).
    """

    pool: Pool
    layout: MemberLayout
    device_name: str | None = None
    batch_tokens: int = 8192
    progress: bool = True
    stack_budget_bytes: int | None = None
    model: MergedModel | None = None
    scorers: dict[str, Scorer] = field(default_factory=dict)
    task_scorers: dict[str, TaskScorer] = field(default_factory=dict)

    def merged(self) -> MergedModel:
        """The merged model, loading the members on first call (cache hits never pay)."""
        if self.model is None:
            from ablate.engine.merge import MergedModel  # torch: only once something is scored

            self.model = MergedModel(
                self.pool,
                self.layout.members,
                device=pick_device(self.device_name),
                progress=self.progress,
                stack_budget_bytes=self.stack_budget_bytes,
                layout=self.layout,
            )
        return self.model

    def scorer(self, eval_set: EvalSet) -> Scorer:
        """The ``Scorer`` of ``eval_set`` on the merged model (built once)."""
        if eval_set.fingerprint not in self.scorers:
            self.scorers[eval_set.fingerprint] = Scorer(
                self.merged(), eval_set, batch_tokens=self.batch_tokens
            )
        return self.scorers[eval_set.fingerprint]

    def task_scorer(self, task: Task) -> TaskScorer:
        """The ``TaskScorer`` of ``task`` on the merged model (built once)."""
        if task.fingerprint not in self.task_scorers:
            self.task_scorers[task.fingerprint] = TaskScorer(
                self.merged(), task, batch_tokens=self.batch_tokens
            )
        return self.task_scorers[task.fingerprint]

    def score(
        self, mixtures: Sequence[Mixture], eval_set: EvalSet | None, tasks: Sequence[Task] = ()
    ) -> Iterator[Scored]:
        """Each mixture's scores, on the weights ``MergedModel.visit`` loads (one merge or
        walk step per mixture, shared by the eval set and every task)."""
        if not mixtures:
            return
        model = self.merged()
        scorer = None if eval_set is None else self.scorer(eval_set)
        task_scorers = [self.task_scorer(t) for t in tasks]
        for m in model.visit(mixtures):
            yield Scored(
                m,
                {} if scorer is None else scorer.score(),
                {s.task.name: s.score() for s in task_scorers},
            )


class LocalExecutor:
    """Scores in this process on one lazily loaded ``MergedModel`` (``Scorers``)."""

    def __init__(self, scorers: Scorers):
        self.scorers = scorers

    def run(
        self,
        mixtures: Sequence[Mixture],
        eval_set: EvalSet | None,
        tasks: Sequence[Task] = (),
    ) -> Iterator[Scored]:
        return self.scorers.score(mixtures, eval_set, tasks)

    def close(self) -> None:
        pass


__all__ = ["Executor", "ExecutorName", "LocalExecutor", "Scored", "Scorers"]
