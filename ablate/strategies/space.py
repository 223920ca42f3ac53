"""What a search may propose (``SearchSpace``); what it minimises is ``ablate.objective.Target``.

A subset space holds every uniform mixture of the allowed partitions (required members
always in, excluded ones never, at most ``max_size`` members). A weight space holds every
point of the simplex over the allowed partitions (``--continuous``), with the same member
rules applied by ``project``. A target is one eval domain's perplexity, a weighted mean of
several, or the macro average over all of them; several domains give a Pareto front.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from ablate.engine.layout import gray_subsets, iter_subsets
from ablate.mixture import Mixture, MixtureError
from ablate.objective import Target
from ablate.pool.errors import AblateError

_REQUIRED_FLOOR = 1e-3  # smallest weight a required partition keeps in a weight space


@dataclass(frozen=True)
class SearchSpace:
    """Mixtures a search may propose.

    Args:
        partitions: All partitions of the pool, sorted.
        require: Partitions every mixture must contain.
        exclude: Partitions no mixture may contain.
        max_size: Most partitions in one mixture (None: no limit).
        continuous: Weights on the simplex instead of uniform subsets.
    """

    partitions: tuple[str, ...]
    require: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_size: int | None = None
    continuous: bool = False
    free: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "require", tuple(sorted(set(self.require))))
        object.__setattr__(self, "exclude", tuple(sorted(set(self.exclude))))
        known = set(self.partitions)
        for flag, names in (("--require", self.require), ("--exclude", self.exclude)):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise MixtureError(
                    f"{flag}: unknown partition(s) {', '.join(unknown)}; the pool has: {', '.join(self.partitions)}"
                )
        both = set(self.require) & set(self.exclude)
        if both:
            raise AblateError(
                f"partition(s) {', '.join(sorted(both))} are both required and excluded"
            )
        if self.max_size is not None and self.max_size < max(1, len(self.require)):
            raise AblateError(
                f"--max-size {self.max_size} leaves no room for the {len(self.require)} required partition(s)"
            )
        free = tuple(p for p in self.partitions if p not in set(self.require) | set(self.exclude))
        object.__setattr__(self, "free", free)
        if not free and not self.require:
            raise AblateError("every partition is excluded; nothing is left to search")

    # ------------------------------------------------------------------ shape
    @property
    def kind(self) -> str:
        return "weights" if self.continuous else "subsets"

    @property
    def allowed(self) -> tuple[str, ...]:
        """Partitions that may carry weight (required + free), sorted."""
        return tuple(sorted(self.require + self.free))

    @property
    def free_limit(self) -> int:
        """Most free partitions one mixture may add to the required ones."""
        k = len(self.free) if self.max_size is None else self.max_size - len(self.require)
        return min(k, len(self.free))

    @property
    def size(self) -> float:
        """Number of mixtures in a subset space (``inf`` for a weight space)."""
        if self.continuous:
            return math.inf
        n = sum(math.comb(len(self.free), k) for k in range(self.free_limit + 1))
        return n - (0 if self.require else 1)  # the empty mixture is not a mixture

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "partitions": list(self.partitions),
            "require": list(self.require),
            "exclude": list(self.exclude),
            "max_size": self.max_size,
        }

    # ------------------------------------------------------------------ membership
    def feasible(self, names: Iterable[str]) -> bool:
        """Whether a set of partitions obeys the member rules (and is non-empty)."""
        s = set(names)
        if (
            not s
            or not set(self.require) <= s
            or s & set(self.exclude)
            or not s <= set(self.partitions)
        ):
            return False
        return self.max_size is None or len(s) <= self.max_size

    def contains(self, mixture: Mixture) -> bool:
        if not self.feasible(mixture.names):
            return False
        return self.continuous or mixture.is_uniform

    def subset(self, free_members: Iterable[str]) -> Mixture:
        """The uniform mixture of the required partitions plus ``free_members``."""
        return Mixture.uniform(sorted(set(self.require) | set(free_members)))

    def subsets(self) -> list[Mixture]:
        """Every mixture of a subset space, in reflected Gray-code order of the free members
        (refused, with how to restrict it, above ``ablate.engine.layout.MAX_ALL_SUBSETS``)."""
        out = [self.subset(())] if self.require else []
        for idx in gray_subsets(len(self.free), self.free_limit):
            out.append(self.subset(self.free[i] for i in idx))
        return out

    def iter_subsets(self) -> Iterator[Mixture]:
        """Every mixture of a subset space, lazily, smallest first (``itertools.combinations``
        up to ``max_size``): any number of partitions, nothing of size 2^n built."""
        if self.require:
            yield self.subset(())
        for idx in iter_subsets(len(self.free), self.free_limit):
            yield self.subset(self.free[i] for i in idx)

    def project(self, weights: Mapping[str, float]) -> Mixture:
        """The nearest member-rule-abiding mixture: drop excluded, keep required, top-k."""
        w = {p: max(0.0, float(weights.get(p, 0.0))) for p in self.allowed}
        total = sum(w.values())
        if not math.isfinite(total) or total <= 0:
            w = dict.fromkeys(self.allowed, 1.0)
            total = float(len(w))
        w = {p: v / total for p, v in w.items()}
        for p in self.require:
            w[p] = max(w[p], _REQUIRED_FLOOR)
        if self.max_size is not None:
            keep = set(self.require)
            ranked = sorted(self.free, key=lambda p: (-w[p], p))
            keep |= set(ranked[: self.free_limit])
            w = {p: v for p, v in w.items() if p in keep}
        if not self.continuous:
            return Mixture.uniform([p for p, v in w.items() if v > 0])
        return Mixture.of(w)

    # ------------------------------------------------------------------ sampling
    def random_mixture(self, rng: np.random.Generator) -> Mixture:
        """A uniformly drawn subset, or a Dirichlet(1) point on a random support."""
        return self.from_vector(self.random_vectors(rng, 1)[0])

    def random_vectors(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``k`` random mixtures as weight rows over ``allowed``, ``(k, len(allowed))``.

        A subset size is drawn with probability proportional to how many feasible subsets
        have it, then a subset of that size; weights are uniform on it (subset spaces) or
        Dirichlet(1) on it (weight spaces).
        """
        allowed = self.allowed
        req = np.array([p in self.require for p in allowed])
        free_cols = np.flatnonzero(~req)  # (F,)
        counts = np.array(
            [math.comb(len(self.free), j) for j in range(self.free_limit + 1)], dtype=float
        )
        if not self.require:
            counts[0] = 0.0
        sizes = rng.choice(len(counts), size=k, p=counts / counts.sum())  # (k,)
        ranks = (
            rng.random((k, len(free_cols))).argsort(1).argsort(1)
        )  # (k, F) a random permutation per row
        mask = np.zeros((k, len(allowed)), dtype=bool)
        mask[:, req] = True
        mask[:, free_cols] = ranks < sizes[:, None]
        w = (
            rng.exponential(size=mask.shape) if self.continuous else np.ones(mask.shape)
        )  # Dirichlet(1)
        return self.project_rows(np.where(mask, w, 0.0))

    def project_rows(self, x: np.ndarray) -> np.ndarray:
        """``project`` for many weight rows ``(k, len(allowed))`` at once (no Mixture objects)."""
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=0.0), 0.0, None)
        x[x.sum(1) <= 0] = 1.0
        x = x / x.sum(1, keepdims=True)
        req = np.array([p in self.require for p in self.allowed])
        x[:, req] = np.maximum(x[:, req], _REQUIRED_FLOOR)
        if self.max_size is not None:
            free_cols = np.flatnonzero(~req)
            order = np.argsort(-x[:, free_cols], axis=1, kind="stable")  # (k, F) largest first
            drop = free_cols[order[:, self.free_limit :]]
            np.put_along_axis(x, drop, 0.0, axis=1)
        if not self.continuous:
            x = (x > 0).astype(float)
        return x / x.sum(1, keepdims=True)

    def from_vector(self, x: np.ndarray) -> Mixture:
        """The mixture with weights ``x`` over ``allowed`` (as made by ``random_vectors``)."""
        return self.project(dict(zip(self.allowed, x.tolist(), strict=True)))

    def vector(self, mixture: Mixture) -> np.ndarray:
        """Weights over ``allowed`` partitions, ``(len(allowed),)`` float64."""
        d = mixture.as_dict()
        return np.array([d.get(p, 0.0) for p in self.allowed], dtype=float)


__all__ = ["SearchSpace", "Target"]
