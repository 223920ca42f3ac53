"""The strategy plug-in contract: a ``Protocol`` (propose / observe) and its registry.

A strategy proposes mixtures, the search loop scores them through the evaluator (so every
score is read from and written to the results store), and the strategy observes the
scores. Strategies register themselves with ``@register("name")``; adding one touches two
files: the strategy's own module and the import line in ``ablate/strategies/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ablate.evaluator import EvalResult, Evaluator
    from ablate.laws.table import Runs
    from ablate.mixture import Mixture
    from ablate.racing.policy import PartialResult
    from ablate.strategies.space import SearchSpace, Target

SpaceKind = Literal["subsets", "weights"]


@dataclass(frozen=True)
class Trial:
    """One scored mixture as a strategy sees it (lower ``score`` is better).

    With racing, a mixture dropped early carries a ``PartialResult`` and an estimated
    ``score`` (above the incumbent's full score); every other trial a full ``EvalResult``.
    """

    mixture: Mixture
    score: float  # the target's perplexity on the search documents
    result: EvalResult | PartialResult
    evaluation: int  # 1-based position among this search's distinct evaluations


@dataclass(frozen=True)
class SearchContext:
    """Everything a strategy may read: where it searches, what it minimises, its limits."""

    evaluator: Evaluator  # scores the search documents; strategies read, the loop scores
    space: SearchSpace
    target: Target
    budget: int
    seed: int
    storage: str | None = None  # Optuna RDB URL shared by several workers
    study_name: str | None = None
    also: Runs | None = None  # real runs over space.allowed, scored under targets[target.spec]


class Strategy(Protocol):
    """A mixture optimiser: ``propose`` up to ``n`` mixtures, then ``observe`` their scores.

    ``observe`` receives one ``Trial`` per proposed mixture, in proposal order (a mixture
    scored earlier in the same search comes back from memory at no cost). ``propose``
    returning an empty list ends the search.
    """

    def propose(self, n: int) -> list[Mixture]: ...

    def observe(self, trials: Sequence[Trial]) -> None: ...


StrategyFactory = Callable[[SearchContext], Strategy]


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: its factory and which search spaces it can walk."""

    name: str
    factory: StrategyFactory
    spaces: tuple[SpaceKind, ...]
    summary: str


STRATEGIES: dict[str, StrategyInfo] = {}


def register(
    name: str, *, spaces: tuple[SpaceKind, ...] = ("subsets", "weights")
) -> Callable[[StrategyFactory], StrategyFactory]:
    """Class decorator: make a strategy available as ``--strategy NAME``."""

    def deco(factory: StrategyFactory) -> StrategyFactory:
        if name in STRATEGIES:
            raise ValueError(f"search strategy {name!r} is registered twice")
        doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
        STRATEGIES[name] = StrategyInfo(name, factory, spaces, doc[0].rstrip(".") if doc else "")
        return factory

    return deco
