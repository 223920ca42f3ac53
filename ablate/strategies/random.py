"""Random search: mixtures drawn uniformly from the search space, without repeats.

Bergstra & Bengio (JMLR 2012, "Random Search for Hyper-Parameter Optimization"): a strong
baseline whose best-of-k is easy to reason about. Subsets are drawn uniformly among those
that obey the member rules (a shuffled list when the space is small; otherwise a size
weighted by how many subsets have it, then a subset of that size); weights are Dirichlet(1) draws, i.e. uniform on the simplex of a
random support.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ablate.mixture import Mixture
from ablate.strategies.base import SearchContext, Trial, register

_TRIES_PER_DRAW = 200  # redraws before concluding the space has no unseen mixture
_ENUMERATE_UP_TO = 2**16  # smaller subset spaces are shuffled outright: exact, no rejections


@register("random")
class RandomSearch:
    """Uniform draws from the space, never the same mixture twice."""

    def __init__(self, ctx: SearchContext):
        self._space = ctx.space
        self._rng = np.random.default_rng(ctx.seed)
        self._proposed: set[str] = set()
        self._order: list[Mixture] | None = None
        if not ctx.space.continuous and ctx.space.size <= _ENUMERATE_UP_TO:
            subsets = ctx.space.subsets()
            self._order = [subsets[i] for i in self._rng.permutation(len(subsets))]

    def propose(self, n: int) -> list[Mixture]:
        if self._order is not None:
            batch, self._order = self._order[:n], self._order[n:]
            return batch
        out: list[Mixture] = []
        for _ in range(n):
            for _ in range(_TRIES_PER_DRAW):
                m = self._space.random_mixture(self._rng)
                if m.key not in self._proposed:
                    self._proposed.add(m.key)
                    out.append(m)
                    break
            else:
                break
        return out

    def observe(self, trials: Sequence[Trial]) -> None:
        pass  # draws do not depend on scores
