"""Exhaustive search: score every subset of partitions, the ground truth for the others.

Na et al. (EMNLP 2024) make this affordable: with one model per partition, each of the
2^n - 1 subsets costs one merge and one perplexity pass. Subsets are proposed in reflected
Gray-code order (Gray, 1953), so ``Evaluator.run_many`` walks them with a running sum of
members and each step adds or removes one partition instead of re-merging from scratch.
Required and excluded partitions and ``--max-size`` restrict the walk; ``--evaluations`` cuts
it short after that many subsets.
"""

from __future__ import annotations

from collections.abc import Sequence

from ablate.mixture import Mixture
from ablate.strategies.base import SearchContext, Trial, register


@register("exhaustive", spaces=("subsets",))
class Exhaustive:
    """Every subset within --max-size, in Gray-code order (one member changes per step)."""

    def __init__(self, ctx: SearchContext):
        space = ctx.space
        if not space.require and not space.exclude:
            self._todo = ctx.evaluator.all_subsets(space.max_size)  # the evaluator's own walk
        else:
            self._todo = space.subsets()

    def propose(self, n: int) -> list[Mixture]:
        batch, self._todo = self._todo[:n], self._todo[n:]
        return batch

    def observe(self, trials: Sequence[Trial]) -> None:
        pass  # nothing to learn: the plan is fixed
