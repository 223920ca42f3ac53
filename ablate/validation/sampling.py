"""Which mixtures a validation really trains: uniform subsets or weights on the simplex.

Na et al. (EMNLP 2024) validate uniform subsets of base units (the *proportional* setting).
A mixture optimizer decides proportions at a fixed budget, so the fixed-budget validation
also draws weight vectors from a symmetric Dirichlet (alpha = 1: uniform on the simplex;
smaller: sparser mixtures; larger: more balanced ones). Every draw is sequential, so a
larger sample with the same seed extends a smaller one and reuses its trained models.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ablate.mixture import Mixture, MixtureError

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 1.0


@dataclass(frozen=True)
class WeightSampler:
    """``subsets`` (uniform subsets of the given sizes) or ``dirichlet`` with ``alpha``."""

    kind: Literal["subsets", "dirichlet"] = "subsets"
    alpha: float = DEFAULT_ALPHA

    @classmethod
    def parse(cls, text: str) -> WeightSampler:
        """``"subsets"``, ``"dirichlet"`` or ``"dirichlet:ALPHA"`` (ALPHA > 0)."""
        kind, _, alpha = text.strip().partition(":")
        if kind == "subsets" and not alpha:
            return cls("subsets")
        if kind == "dirichlet":
            try:
                a = float(alpha) if alpha else DEFAULT_ALPHA
            except ValueError:
                a = math.nan
            if not (math.isfinite(a) and a > 0):
                raise MixtureError(
                    f"--weights dirichlet:ALPHA needs a number ALPHA > 0, got {alpha!r}"
                )
            return cls("dirichlet", a)
        raise MixtureError(
            f"--weights must be 'subsets', 'dirichlet' or 'dirichlet:ALPHA', got {text!r}"
        )

    def sample(
        self, partitions: Sequence[str], n: int, *, sizes: Iterable[int] = (2, 3, 4), seed: int = 0
    ) -> list[Mixture]:
        if self.kind == "subsets":
            return sample_mixtures(partitions, n, sizes, seed)
        return sample_weighted(partitions, n, self.alpha, seed)


def sample_weighted(
    partitions: Sequence[str], n: int, alpha: float = 1.0, seed: int = 0
) -> list[Mixture]:
    """``n`` distinct weight vectors over ``partitions`` from a symmetric Dirichlet(alpha).

    Weights below 0.5% are dropped (renormalised): a partition with a few sequences of a
    budget is noise in the real model and a rounding error in the proxy.
    """
    if n < 1:
        raise MixtureError(f"--sample must be at least 1, got {n}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise MixtureError(f"the Dirichlet alpha must be > 0, got {alpha}")
    names = sorted(partitions)
    if len(names) < 2:
        raise MixtureError("weighted mixtures need a pool of at least 2 partitions")
    rng = np.random.default_rng(seed)
    seen: dict[str, Mixture] = {}
    while len(seen) < n:
        w = rng.dirichlet(np.full(len(names), alpha))  # (n_partitions,)
        w = np.where(w < 0.005, 0.0, w)
        if w.sum() == 0:
            continue
        m = Mixture.of({p: float(x) for p, x in zip(names, w, strict=True) if x > 0})
        seen.setdefault(m.key, m)
    return list(seen.values())


def sample_mixtures(
    partitions: Sequence[str], n: int, sizes: Iterable[int] = (2, 3, 4), seed: int = 0
) -> list[Mixture]:
    """``n`` distinct uniform subsets: a size drawn from ``sizes``, then a subset of that size.

    The draw is sequential, so a larger ``n`` with the same seed extends a smaller one
    (a validation can grow without discarding its trained models).
    """
    from math import comb

    names = sorted(partitions)
    usable = sorted({s for s in sizes if 1 <= s <= len(names)})
    if not usable:
        raise MixtureError(
            f"no subset size in {sorted(set(sizes))} fits a pool of {len(names)} partition(s)"
        )
    if n < 1:
        raise MixtureError(f"--sample must be at least 1, got {n}")
    available = sum(comb(len(names), s) for s in usable)
    if n > available:
        log.warning("only %d subsets of sizes %s exist; validating all of them", available, usable)
        n = available
    rng = np.random.default_rng(seed)
    seen: dict[tuple[str, ...], None] = {}
    while len(seen) < n:
        size = int(rng.choice(usable))
        pick = tuple(sorted(rng.choice(names, size=size, replace=False).tolist()))
        seen.setdefault(pick, None)
    return [Mixture.uniform(s) for s in seen]


__all__ = ["WeightSampler", "sample_mixtures", "sample_weighted"]
