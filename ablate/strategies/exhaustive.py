"""Exhaustive search: score every subset of partitions, the ground truth for the others.

Na et al. (EMNLP 2024) make this affordable: with one model per partition, each of the
2^n - 1 subsets costs one merge and one perplexity pass. Subsets are proposed in reflected
Gray-code order (Gray, 1953), so ``Evaluator.run_many`` walks them with a running sum of
members and each step adds or removes one partition instead of re-merging from scratch.
Required and excluded partitions and ``--max-size`` restrict the walk; ``--evaluations`` cuts
it short after that many subsets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from ablate.engine.layout import MAX_ALL_SUBSETS
from ablate.mixture import Mixture
from ablate.strategies.base import SearchContext, Trial, register

_BATCH = 4096  # mixtures per proposal of a lazily enumerated space: bounded memory


@register("exhaustive", spaces=("subsets",))
class Exhaustive:
    """Every subset within --max-size, in Gray-code order (one member changes per step)."""

    def __init__(self, ctx: SearchContext):
        space = ctx.space
        self._todo: Iterator[Mixture]
        if space.size > MAX_ALL_SUBSETS:
            # Too many to list (``--evaluations`` cut it short): smallest subsets first, lazily;
            # each batch is still walked in Gray-code order by ``Evaluator.run_many``.
            self._todo = space.iter_subsets()
        elif not space.require and not space.exclude:
            self._todo = iter(ctx.evaluator.all_subsets(space.max_size))  # the evaluator's walk
        else:
            self._todo = iter(space.subsets())

    def propose(self, n: int) -> list[Mixture]:
        return list(itertools.islice(self._todo, min(n, _BATCH)))

    def observe(self, trials: Sequence[Trial]) -> None:
        pass  # nothing to learn: the plan is fixed
