"""Executors run a batch of mixtures: here, or on Ray actors (``ablate.distributed``).

Both implement one ``Executor`` protocol, so the evaluator, the search loop and validation
never know where a mixture was scored: the evaluator looks mixtures up in the results
store, orders the rest (uniform subsets in Gray-code order first), hands them to its
executor, and records what comes back. Only the evaluator's process touches the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ablate.data.evalset import EvalSet
    from ablate.engine.layout import MemberLayout
    from ablate.engine.merge import MergedModel
    from ablate.engine.scoring import DomainScore, Scorer
    from ablate.mixture import Mixture

ExecutorName = Literal["local", "ray"]
Scored = tuple["Mixture", dict[str, "DomainScore"]]


class Executor(Protocol):
    """Scores mixtures on an eval set and yields them as they finish (in any order)."""

    def run(
        self, walk: Sequence[Mixture], rest: Sequence[Mixture], eval_set: EvalSet
    ) -> Iterator[Scored]:
        """Score ``walk`` (uniform subsets in Gray-code order, for a running-sum walk) and
        ``rest`` (merged one by one) on ``eval_set``."""
        ...

    def close(self) -> None:
        """Release workers (a no-op where there are none)."""
        ...


class LocalExecutor:
    """Scores in this process on one lazily loaded ``MergedModel``.

    Args:
        model: Returns the merged model, loading the members on first call (a store that
            answers every mixture never pays for loading).
        scorer: Returns the ``Scorer`` of an eval set on that model (cached by the caller).
        layout: The pool's members as rows.
    """

    def __init__(
        self,
        model: Callable[[], MergedModel],
        scorer: Callable[[EvalSet], Scorer],
        layout: MemberLayout,
    ):
        self._model = model
        self._scorer = scorer
        self._layout = layout

    def run(
        self, walk: Sequence[Mixture], rest: Sequence[Mixture], eval_set: EvalSet
    ) -> Iterator[Scored]:
        import torch

        if not walk and not rest:
            return
        model, scorer = self._model(), self._scorer(eval_set)
        for i in model.walk([m.names for m in walk], self._layout.rows_of):
            yield walk[i], scorer.score()
        for m in rest:
            model.merge(torch.from_numpy(self._layout.member_weights(m)).float())
            yield m, scorer.score()

    def close(self) -> None:
        pass


__all__ = ["Executor", "ExecutorName", "LocalExecutor"]
