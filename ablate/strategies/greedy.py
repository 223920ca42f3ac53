"""Greedy search: forward selection, then backward elimination, until neither helps.

Stepwise selection (Efroymson, 1960) applied to partitions, in the spirit of the greedy
soup of Wortsman et al. (ICML 2022, "Model soups"), which adds a model to an average only
when that improves held-out accuracy. Forward: from the required partitions, score every
one-partition extension and keep the best while it improves the target. Backward: score
every one-partition removal of the current set and keep the best while it improves. The
two phases alternate until a full round improves nothing. Each round's candidates are one
batch, which the evaluator walks in Gray-code order. Cost: O(n^2) subsets instead of 2^n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ablate.mixture import Mixture
from ablate.strategies.base import SearchContext, Trial, register


@register("greedy", spaces=("subsets",))
class Greedy:
    """Forward selection then backward elimination of partitions (greedy soup)."""

    def __init__(self, ctx: SearchContext):
        self._space = ctx.space
        self._current: frozenset[str] = frozenset(ctx.space.require)
        self._score = math.inf  # the empty start set has no score
        self._phase = "start" if ctx.space.require else "forward"  # score the required set first
        self._improved_since_switch = False
        self._stuck_phases = 0  # phases in a row that improved nothing
        self._done = False

    def _candidates(self) -> list[Mixture]:
        space, cur = self._space, self._current
        if self._phase == "start":
            return [Mixture.uniform(sorted(cur))]
        if self._phase == "forward":
            sets = [cur | {p} for p in space.free if p not in cur]
        else:
            sets = [cur - {p} for p in cur if p not in space.require]
        return [Mixture.uniform(sorted(s)) for s in sets if space.feasible(s)]

    def propose(self, n: int) -> list[Mixture]:
        while not self._done:
            batch = self._candidates()
            if batch:
                return batch
            self._switch()
        return []

    def _switch(self) -> None:
        self._stuck_phases = 0 if self._improved_since_switch else self._stuck_phases + 1
        if self._stuck_phases >= 2 or (self._stuck_phases == 1 and self._score == math.inf):
            self._done = True
        self._phase = "backward" if self._phase == "forward" else "forward"
        self._improved_since_switch = False

    def observe(self, trials: Sequence[Trial]) -> None:
        if not trials:
            self._done = True
            return
        best = min(trials, key=lambda t: (t.score, t.evaluation))
        if self._phase == "start":
            self._score, self._phase = best.score, "forward"
            return
        if best.score < self._score:
            self._current, self._score = frozenset(best.mixture.names), best.score
            self._improved_since_switch = True
        else:
            self._switch()
