"""Mixtures: a weight vector over a pool's partitions, in one canonical form.

A subset of partitions means uniform weights over them; a partition's weight is spread
evenly over its base units' members (Na et al., EMNLP 2024, merge the members of the
units a mixture would train on). Weights are normalised to sum to one, zero weights are
dropped and names are sorted, so equal mixtures have equal keys in the results store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ablate.pool.errors import AblateError
from ablate.pool.partition import validate_partition_name

MAX_SPEC_CHARS = 100_000  # a mixture string longer than this is a mistake, not a mixture
_DIGITS = 12  # weights are rounded to 12 decimals so float noise does not split cache keys


class MixtureError(AblateError):
    """A mixture names unknown partitions, has no weight, or has non-finite weights."""


@dataclass(frozen=True)
class Mixture:
    """Normalised partition weights, sorted by name; build with ``uniform``/``of``/``parse``."""

    weights: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        if not self.weights:
            raise MixtureError("a mixture needs at least one partition with a positive weight")

    @classmethod
    def of(cls, weights: Mapping[str, float]) -> Mixture:
        """From ``{partition: weight}``; weights are normalised, zeros dropped."""
        clean: dict[str, float] = {}
        for name, w in weights.items():
            if not isinstance(name, str):
                raise MixtureError(f"partition names must be strings, got {name!r}")
            _check_name(name)
            try:
                w = float(w)
            except (TypeError, ValueError):
                raise MixtureError(f"weight of {name!r} is not a number: {w!r}") from None
            if not math.isfinite(w):
                raise MixtureError(f"weight of {name!r} is {w}; weights must be finite numbers")
            if w < 0:
                raise MixtureError(
                    f"weight of {name!r} is negative ({w}); mixture weights must be >= 0"
                )
            if w > 0:
                clean[name] = clean.get(name, 0.0) + w
        try:
            total = math.fsum(clean.values())
        except OverflowError:
            total = math.inf
        if not clean or total <= 0:
            raise MixtureError("a mixture needs at least one partition with a positive weight")
        if not math.isfinite(total):
            raise MixtureError(
                "mixture weights are too large to normalise; use relative weights like a=1,b=3"
            )
        # Whole parts per 10**_DIGITS that sum to exactly 10**_DIGITS (largest remainder,
        # ties by name): the key's weights then already sum to one, so parsing the key back
        # normalises nothing and gives the same mixture (plain rounding drifts by 1e-12).
        scale = 10**_DIGITS
        exact = {n: w / total * scale for n, w in clean.items()}
        parts = {n: math.floor(x) for n, x in exact.items()}
        missing = max(0, scale - sum(parts.values()))  # < len(parts): each floor lost < 1 part
        for n in sorted(exact, key=lambda n: (parts[n] - exact[n], n))[:missing]:
            parts[n] += 1
        return cls(tuple(sorted((n, u / scale) for n, u in parts.items() if u > 0)))

    @classmethod
    def uniform(cls, names: Iterable[str]) -> Mixture:
        """Equal weights over ``names`` (a subset of partitions)."""
        names = list(names)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise MixtureError(f"partition named twice in a subset: {', '.join(dup)}")
        return cls.of(dict.fromkeys(names, 1.0))

    @classmethod
    def parse(cls, spec: str) -> Mixture:
        """``"a,b,c"`` (uniform subset) or ``"a=0.25,b=0.75"`` (weights, normalised)."""
        if not isinstance(spec, str) or not spec.strip():
            raise MixtureError("empty mixture; write partitions as a,b or weights as a=0.25,b=0.75")
        if len(spec) > MAX_SPEC_CHARS:
            raise MixtureError(
                f"mixture string is {len(spec)} characters long; at most {MAX_SPEC_CHARS}"
            )
        parts = [p.strip() for p in spec.split(",")]
        if any(not p for p in parts):
            raise MixtureError(
                f"empty entry in mixture {spec[:80]!r}; separate names with single commas"
            )
        if not any("=" in p for p in parts):
            return cls.uniform(parts)
        weights: dict[str, float] = {}
        for p in parts:
            name, sep, value = p.partition("=")
            if not sep:
                raise MixtureError(
                    f"{p!r} has no weight; either give every partition a weight (a=1,b=3) or none"
                )
            name = name.strip()
            if name in weights:
                raise MixtureError(f"partition {name!r} is given twice in {spec[:80]!r}")
            try:
                weights[name] = float(value)
            except ValueError:
                raise MixtureError(
                    f"weight {value.strip()!r} of {name!r} is not a number"
                ) from None
        return cls.of(weights)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.weights)

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)

    @property
    def key(self) -> str:
        """Canonical text form: ``a=0.5,b=0.5`` (sorted, normalised)."""
        return ",".join(f"{n}={w!r}" for n, w in self.weights)

    @property
    def is_uniform(self) -> bool:
        ws = [w for _, w in self.weights]
        return max(ws) - min(ws) <= 10 ** -(_DIGITS - 2)

    def check(self, known: Iterable[str]) -> None:
        """Raise if the mixture names a partition that ``known`` does not have."""
        known = set(known)
        unknown = [n for n in self.names if n not in known]
        if unknown:
            shown = ", ".join(repr(n) for n in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise MixtureError(
                f"unknown partition(s) {shown}; the pool has: {', '.join(sorted(known)) or 'none'}"
            )

    def __str__(self) -> str:
        if self.is_uniform:
            return "+".join(self.names)
        return " ".join(f"{n}:{w:.3g}" for n, w in self.weights)

    def brief(self, parts: int = 8) -> str:
        """``str(self)`` of at most ``parts`` partitions (the heaviest), then how many more:
        a mixture of 128 partitions stays one readable line in a report."""
        if len(self.weights) <= parts:
            return str(self)
        more = f" (+{len(self.weights) - parts} more)"
        if self.is_uniform:
            return "+".join(self.names[:parts]) + more
        top = sorted(self.weights, key=lambda nw: (-nw[1], nw[0]))[:parts]
        return " ".join(f"{n}:{w:.3g}" for n, w in top) + more


def _check_name(name: str) -> None:
    try:
        validate_partition_name(name)
    except AblateError as e:
        raise MixtureError(str(e)) from None
