"""Candidate mixtures for a surrogate to rank, and per-partition caps on them.

The regression search strategy and ``MixtureLaw.propose`` draw candidates the same way
(``candidates``): random points of the search space (a random support, Dirichlet(1)
weights on it) plus Dirichlet moves around the best mixture so far. ``propose`` repeats
that a few rounds around the law's current best and returns the best distinct points.

Caps (``max_weight``) are what RegMix and Marin users ask for: "at most 4 epochs of this
partition at the target budget" is a cap of 4 x its tokens / the budget. ``cap_rows``
projects rows onto the capped simplex by water-filling: clip, hand the excess to the
uncapped partitions in proportion to their weight, repeat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ablate.pool.errors import AblateError

if TYPE_CHECKING:  # ablate.strategies imports this module: SearchSpace is imported on use
    from ablate.strategies.space import SearchSpace

RANDOM_CANDIDATES = 2048  # random candidates per round
LOCAL_CANDIDATES = 512  # perturbations of the best mixture per round (weight spaces)
LOCAL_CONCENTRATION = 50.0  # Dirichlet concentration around the best: ~+-10% moves
PROPOSE_ROUNDS = 8  # rounds of random + local candidates behind one ``propose``
MIN_DISTANCE = 0.1  # L1 distance between two proposals (else they are one mixture, twice)
_CAP_TOLERANCE = 1e-9


def candidates(
    space: SearchSpace, rng: np.random.Generator, center: np.ndarray | None = None
) -> np.ndarray:
    """Candidate weight rows ``(C, len(space.allowed))``: random draws, plus moves near
    ``center`` (a weight row) in a weight space."""
    rows = [space.random_vectors(rng, RANDOM_CANDIDATES)]
    if center is not None and space.continuous:
        local = rng.dirichlet(LOCAL_CONCENTRATION * center + 0.1, size=LOCAL_CANDIDATES)
        rows.append(space.project_rows(local))
    return np.vstack(rows)


@dataclass(frozen=True)
class Constraints:
    """Limits on proposed mixtures: ``max_weight`` caps a partition's weight (0 excludes it)."""

    max_weight: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, w in self.max_weight.items():
            if not isinstance(w, int | float) or not math.isfinite(w) or not 0 <= w <= 1:
                raise AblateError(f"--max-weight {name}={w}: a cap is a weight between 0 and 1")

    @classmethod
    def parse(cls, spec: str | None) -> Constraints:
        """``"a=0.3,b=0.05"`` (partition=cap, ...); None or empty means no caps."""
        if not spec:
            return cls()
        caps: dict[str, float] = {}
        for part in spec.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not name:
                raise AblateError(f"--max-weight {spec!r}: write PARTITION=W,PARTITION=W")
            if name in caps:
                raise AblateError(f"--max-weight: partition {name!r} is capped twice")
            try:
                caps[name] = float(value)
            except ValueError:
                raise AblateError(
                    f"--max-weight: cap {value.strip()!r} of {name!r} is not a number"
                ) from None
        return cls(caps)

    def caps(self, partitions: Sequence[str]) -> np.ndarray:
        """Caps over ``partitions`` ``(n,)`` (1 where none), checked: names known, feasible."""
        unknown = [p for p in self.max_weight if p not in partitions]
        if unknown:
            raise AblateError(
                f"--max-weight names unknown partition(s) {', '.join(unknown)}; "
                f"the runs have: {', '.join(partitions)}"
            )
        c = np.array([float(self.max_weight.get(p, 1.0)) for p in partitions])
        if c.sum() < 1 - _CAP_TOLERANCE:
            raise AblateError(
                f"--max-weight caps sum to {c.sum():.3g} over all partitions; no mixture fits "
                "(weights sum to 1): raise some caps"
            )
        return c


def cap_rows(x: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Rows ``(k, n)`` on the simplex with every weight at most its cap ``(n,)`` (sum >= 1).

    Water-filling: clip to the caps, give the clipped excess to partitions below their cap
    in proportion to their weight (evenly where they all have none), until nothing exceeds.
    """
    x = np.clip(x, 0.0, None)
    x = x / x.sum(1, keepdims=True)
    for _ in range(x.shape[1] + 1):
        over = x > caps + _CAP_TOLERANCE
        if not over.any():
            break
        x = np.minimum(x, caps)
        excess = 1.0 - x.sum(1, keepdims=True)  # (k, 1)
        room = x < caps - _CAP_TOLERANCE  # (k, n) may still grow
        share = np.where(room, x, 0.0)
        flat = share.sum(1, keepdims=True) <= 0
        share = np.where(flat & room, 1.0, share)  # nobody with weight has room: spread evenly
        total = share.sum(1, keepdims=True)  # 0 where every weight sits at its cap
        x = x + np.divide(excess * share, total, out=np.zeros_like(x), where=total > 0)
    return np.minimum(x, caps) / np.minimum(x, caps).sum(1, keepdims=True)


def propose(
    predict: Callable[[np.ndarray], np.ndarray],
    partitions: Sequence[str],
    n: int,
    constraints: Constraints | None = None,
    *,
    seed: int = 0,
    extra: Sequence[np.ndarray] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best distinct mixtures by ``predict`` (lower is better) on the capped simplex.

    Args:
        predict: Maps weight rows ``(k, len(partitions))`` to predicted scores ``(k,)``.
        partitions: The weight columns, in order.
        n: How many mixtures (each at least ``MIN_DISTANCE`` in L1 from the better ones).
        constraints: Per-partition caps.
        seed: Seeds the candidate draws.
        extra: Rows worth ranking too (the runs themselves), clipped to the caps.

    Returns:
        ``(weights (n', len(partitions)), predictions (n',))``, best first; ``n' <= n``.
    """
    if n < 1:
        raise AblateError(f"--propose must be at least 1, got {n}")
    caps = (constraints or Constraints()).caps(partitions)
    if list(partitions) != sorted(partitions):
        raise ValueError("propose needs the partitions sorted (SearchSpace.allowed order)")
    from ablate.strategies.space import SearchSpace  # lazy: a cycle through strategies' face

    space = SearchSpace(tuple(partitions), continuous=True)
    rng = np.random.default_rng(seed)
    rows = [cap_rows(np.asarray(e, dtype=float), caps) for e in extra if len(e)]
    preds = [predict(r) for r in rows]
    center = None
    for _ in range(PROPOSE_ROUNDS):
        if preds:
            best = min(range(len(preds)), key=lambda k: float(preds[k].min()))
            center = rows[best][int(np.argmin(preds[best]))]
        x = cap_rows(candidates(space, rng, center), caps)  # (C, n)
        rows.append(x)
        preds.append(predict(x))
    allx, pred = np.vstack(rows), np.concatenate(preds)
    picked: list[int] = []
    for i in np.argsort(pred, kind="stable"):
        if all(np.abs(allx[i] - allx[j]).sum() >= MIN_DISTANCE for j in picked):
            picked.append(int(i))
            if len(picked) == n:
                break
    return allx[picked], pred[picked]
