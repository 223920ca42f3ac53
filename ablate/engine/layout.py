"""Which members a mixture merges, with which weights, and in which order to visit subsets.

A ``MemberLayout`` is the cheap, model-free view of a pool's trained members: the rows of the
``[N, P]`` stack that belong to each partition, the weight vector over rows for a mixture,
the exact cache key of that weight vector, and the reflected Gray-code order that lets a
running sum visit uniform subsets with one member update per step. The evaluator, the
merge engine and the Ray driver share it; none of it loads a tensor.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np

from ablate.engine.merges import PoolMerge, merge_method
from ablate.mixture import Mixture, MixtureError
from ablate.pool import Pool
from ablate.pool.atomic import sha256_json
from ablate.pool.errors import PoolError
from ablate.pool.storage import MemberRecord, check_merge

# Most mixtures one `eval --all-subsets` (or an exhaustive search) lists at once: each is a
# merge and a perplexity pass, so 100K is already hours on a GPU; beyond it a search samples.
MAX_ALL_SUBSETS = 100_000


def count_subsets(n: int, max_size: int | None = None) -> int:
    """Non-empty subsets of ``n`` items with at most ``max_size`` members (exact integer)."""
    k = n if max_size is None else min(max_size, n)
    return sum(math.comb(n, j) for j in range(1, k + 1))


def iter_subsets(n: int, max_size: int | None = None) -> Iterator[tuple[int, ...]]:
    """Non-empty subsets of ``range(n)``, smallest first, lazily (``itertools.combinations``):
    nothing of size 2^n is built, so 128 partitions with ``max_size=4`` cost only what is read."""
    k = n if max_size is None else min(max_size, n)
    for size in range(1, k + 1):
        yield from itertools.combinations(range(n), size)


def subsets_limit_message(n: int, max_size: int | None, limit: int = MAX_ALL_SUBSETS) -> str:
    """Why an enumeration of all subsets is refused, and how to restrict it."""
    total = count_subsets(n, max_size)
    fits = max((k for k in range(1, n + 1) if count_subsets(n, k) <= limit), default=0)
    shown = f"2^{n} - 1 = {total:,}" if max_size is None or max_size >= n else f"{total:,}"
    fix = f"--max-size {fits} ({count_subsets(n, fits):,} mixtures), " if fits else ""
    return (
        f"all subsets of {n} partitions{'' if max_size is None else f' up to size {max_size}'} "
        f"are {shown} mixtures, more than {limit:,} at once; restrict them with {fix}"
        f"score chosen ones with --mixture/--weights, or sample them with `ablate search "
        f"--strategy random --evaluations N`"
    )


def gray_subsets(n: int, max_size: int | None = None) -> list[tuple[int, ...]]:
    """All non-empty subsets of ``range(n)`` in reflected Gray-code order (size-filtered).

    The order is the Gray walk's with larger subsets skipped, built from the subsets that are
    kept (never from 2^n codes). Raises ``MixtureError`` above ``MAX_ALL_SUBSETS`` subsets,
    saying how many there are and how to restrict them.
    """
    if count_subsets(n, max_size) > MAX_ALL_SUBSETS:
        raise MixtureError(subsets_limit_message(n, max_size))
    return sorted(iter_subsets(n, max_size), key=lambda s: gray_rank(sum(1 << j for j in s)))


def gray_rank(mask: int) -> int:
    """Position of the subset ``mask`` in the reflected Gray code (the inverse of i ^ i>>1)."""
    rank = mask
    shift = mask >> 1
    while shift:
        rank ^= shift
        shift >>= 1
    return rank


class MemberLayout:
    """A pool's trained members as rows, grouped by partition.

    Raises ``PoolError`` when the pool has no members or some partition has untrained
    units: a mixture of a half-grown pool would silently mean something else.
    """

    def __init__(self, pool: Pool, merge: PoolMerge | None = None):
        """``merge``: how every mixture's members become one model (``ablate.engine.merges``;
        None: the pool's, ``Pool.merge``); one that reads a per-member statistic (Fisher,
        Grams) is refused here, before anything loads, when a member has none (the
        evaluator first computes what the pool's own merge reads: ``prepare_merge``)."""
        members = pool.members
        if not members:
            raise PoolError(
                f"pool {pool.path} has no trained members; run `ablate pool grow {pool.path}`"
            )
        missing = pool.missing()
        if missing:
            names = sorted({u.partition for u in missing})
            raise PoolError(
                f"partitions {', '.join(names)} have untrained members; run `ablate pool grow {pool.path}`"
            )
        self.pool = pool
        self.members: list[MemberRecord] = members
        self.partitions: tuple[str, ...] = tuple(sorted({m.partition for m in members}))
        self.rows_of: dict[str, tuple[int, ...]] = {
            p: tuple(i for i, m in enumerate(members) if m.partition == p) for p in self.partitions
        }
        self._bit = {p: 1 << i for i, p in enumerate(self.partitions)}
        self.merge: PoolMerge = pool.merge if merge is None else check_merge(merge)
        self.method = merge_method(self.merge)
        # The statistic each member is merged with (its Fisher or Grams), as recorded when
        # it was computed: part of the keys.
        self._stat_sha: list[str] = []
        if self.method.statistic is not None:
            from ablate.pool.statistics import require_stats
            from ablate.pool.storage import MEMBER_STATISTICS

            stat = next(s for s in MEMBER_STATISTICS if s.name == self.method.statistic)
            self._stat_sha = [stat.sha(r) for r in require_stats(pool, members, stat)]

    def member_weights(self, mixture: Mixture) -> np.ndarray:
        """Weights over members ``(N,)``: a partition's weight spread evenly over its units."""
        mixture.check(self.partitions)
        w = np.zeros(len(self.members))
        for name, weight in mixture.weights:
            rows = self.rows_of[name]
            w[list(rows)] = weight / len(rows)
        return w

    def pool_key(self, mixture: Mixture) -> str:
        """Fingerprint of exactly the members this mixture merges (and their weights)."""
        w = self.member_weights(mixture)
        used = [
            (m.member_id, m.weights_sha256, round(float(w[i]), 12))
            for i, m in enumerate(self.members)
            if w[i] > 0
        ]
        key: dict[str, object] = {
            "seed": self.pool.manifest.base_sha256,
            "method": self.pool.manifest.recipe.method,
            "members": used,
        }
        if self.merge != "average":  # the plain average's keys are those of older pools
            key["merge"] = self.merge
            if self._stat_sha:  # "fisher" or "gram"
                key[self.method.statistic] = [
                    self._stat_sha[i] for i in range(len(self.members)) if w[i] > 0
                ]
        return sha256_json(key)

    def walk_order(self, mixtures: Sequence[Mixture]) -> tuple[list[Mixture], list[Mixture]]:
        """``(walk, rest)``: uniform subsets in Gray-code order, for a pool whose method
        supports running-sum walks under a merge they compute (the plain average), and every
        other mixture in its given order."""
        if not (self.pool.method.running_sum_walks and self.method.linear):
            return [], list(mixtures)
        walk = sorted(
            (m for m in mixtures if m.is_uniform),
            key=lambda m: gray_rank(sum(self._bit[n] for n in m.names)),
        )
        return walk, [m for m in mixtures if not m.is_uniform]

    def all_subsets(self, max_size: int | None = None) -> list[Mixture]:
        """Every uniform subset of the partitions, in Gray-code order."""
        return [
            Mixture.uniform([self.partitions[i] for i in s])
            for s in gray_subsets(len(self.partitions), max_size)
        ]


__all__ = [
    "MAX_ALL_SUBSETS",
    "MemberLayout",
    "count_subsets",
    "gray_rank",
    "gray_subsets",
    "iter_subsets",
    "subsets_limit_message",
]
