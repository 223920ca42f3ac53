"""Make a pool mergeable the way it says: compute what its merge reads beside the weights.

A pool's merge (``Pool.merge``, ``pool init --merge``) may read a statistic of each member:
``fisher_damped`` (the default where members start from the seed's second moments) reads
each member's diagonal Fisher, ``regmean`` its input Grams (``ablate.pool.statistics``).
``ablate pool grow`` computes it once the members are trained (a Ray task right after its
own member), and an evaluator or export of the pool's merge (or of another reading the same
statistic) computes whatever is still missing (members grown by ``Pool.grow`` from Python,
by an older ablate, or by a run interrupted between the weights and the statistic), so that
a user never has to know the statistic exists. Both go through the same resumable, atomic
``ensure_stats``; a merge asked for by name that reads another statistic (``regmean`` on a
``fisher_damped`` pool) still needs its ``ablate pool fisher|gram`` first (refused in one
line by ``MemberLayout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ablate.pool.fisher import ensure_fisher
from ablate.pool.gram import ensure_gram
from ablate.pool.statistics import stat_record
from ablate.pool.storage import MERGE_STATISTIC, MemberRecord
from ablate.pool.train import is_main_rank

if TYPE_CHECKING:
    from ablate.pool.pool import Pool

_ENSURE = {"fisher": ensure_fisher, "gram": ensure_gram}


def prepares(pool: Pool, merge: str | None) -> bool:
    """Whether merging ``pool``'s members by ``merge`` (None: the pool's) may compute what
    it reads: the pool's own merge, or another that reads the same statistic (``fisher``
    on a ``fisher_damped`` pool). Any other is refused while a member lacks its statistic,
    and an unknown name by ``MemberLayout``, in one line."""
    if merge is not None and merge not in MERGE_STATISTIC:
        return False
    return MERGE_STATISTIC[merge or pool.merge] is MERGE_STATISTIC[pool.merge]


def prepare_merge(
    pool: Pool,
    members: Sequence[MemberRecord] | None = None,
    *,
    progress: bool = True,
    device: str | None = None,
) -> list:
    """Compute the statistic the pool's merge reads for the ``members`` (default: all) that
    lack one for their current weights; returns the records computed now (none for the
    plain average, and none on a torchrun rank other than 0: rank 0 writes)."""
    stat = MERGE_STATISTIC[pool.merge]
    if stat is None or not is_main_rank():
        return []
    lacking = [
        r
        for r in (pool.members if members is None else members)
        if stat_record(pool, r, stat) is None
    ]
    if not lacking:
        return []
    return _ENSURE[stat.name](pool, members=lacking, progress=progress, device=device)


__all__ = ["prepare_merge", "prepares"]
