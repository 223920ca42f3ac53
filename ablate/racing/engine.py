"""The race engine: unit order, incumbents and the racer's bookkeeping.

``Racer`` knows nothing of models: it races keys through a scoring callback, so tests and
``benchmarks/bench_racing.py`` drive it with arrays of per-unit losses (``ArrayScores``).
``ablate.racing.bounds`` holds the test, ``ablate.racing.design`` the schedule and the error
budget; ``ablate.racing.policy`` turns the racer into a scoring policy over an ``Evaluator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ablate.pool.errors import AblateError
from ablate.racing.bounds import (
    Gap,
    Gaps,
    gap_bounds,
    paired_gap,
    target_value,
    target_values,
)
from ablate.racing.design import (
    DEFAULT_CONFIDENCE,
    FIRST_UNITS,
    GROWTH,
    RACE_SEED,
    check_confidence,
    check_margin,
    late_step,
    look_level,
)


# ---------------------------------------------------------------------- the order
@dataclass(frozen=True)
class RaceOrder:
    """Units in race order: ``stages[s]`` holds the unit indices stage ``s`` adds
    (``(n,)`` int64); the last stage holds every unit not visited before."""

    stages: tuple[np.ndarray, ...]

    @classmethod
    def build(
        cls,
        doc_domain: np.ndarray,
        raced: Sequence[int],
        *,
        seed: int = RACE_SEED,
        first: int = FIRST_UNITS,
        growth: float = GROWTH,
    ) -> RaceOrder:
        """Stages of ``first * growth**s`` units per raced stratum (stratified prefixes), then
        steps of ``design.late_step`` units.

        Args:
            doc_domain: Stratum index of each unit, ``(n_units,)``.
            raced: Strata the target reads; other strata wait for the last stage.
            seed: Seeds the per-stratum shuffle.
            first: Units per stratum in the first stage.
            growth: Factor by which each stage grows the units per stratum.
        """
        rng = np.random.default_rng(seed)
        perms = {d: rng.permutation(np.flatnonzero(doc_domain == d)) for d in sorted(set(raced))}
        most = max((len(p) for p in perms.values()), default=0)
        step = late_step(most, first)
        stages, done, count = [], 0, first
        while count < most:
            stages.append(np.concatenate([p[done:count] for p in perms.values()]))
            done, count = count, min(count + step, max(count + 1, math.ceil(count * growth)))
        seen = np.zeros(len(doc_domain), dtype=bool)
        for s in stages:
            seen[s] = True
        stages.append(np.flatnonzero(~seen))
        return cls(tuple(s.astype(np.int64) for s in stages if len(s)))


# ---------------------------------------------------------------------- the bookkeeping
StageScore = Callable[[Sequence[Hashable], np.ndarray], np.ndarray]
"""``score(keys, units)``: per-unit values ``(len(keys), len(units))`` of each candidate."""


@dataclass(frozen=True)
class ArrayScores:
    """A ``StageScore`` over planted per-unit values ``(M, n_units)``: keys are row indices.

    The seam that lets tests and ``benchmarks/bench_racing.py`` drive the shipped racer
    with synthetic or replayed per-unit losses, without models.
    """

    values: np.ndarray

    def __call__(self, keys: Sequence[Hashable], units: np.ndarray) -> np.ndarray:
        return self.values[np.asarray(keys, dtype=np.int64)][:, units]


@dataclass
class Outcome:
    """One candidate's race: its per-unit values (NaN where not scored) and verdict."""

    nll: np.ndarray
    full: bool
    score: float  # full: the target; dropped: incumbent's target + the paired estimate
    stages: int  # stages scored
    against: Hashable | None = None  # the incumbent it lost to


@dataclass(frozen=True)
class Incumbent:
    """A fully scored mixture that others race against. ``born``: how many stages of the
    order its choice read (0: chosen without reading the race, e.g. a store hit); tests
    against it treat those stages' units as known and sample only the later ones."""

    score: float
    key: Hashable
    nll: np.ndarray
    born: int


@dataclass
class Racer:
    """Stages, incumbents and tests of a race; knows nothing of models (tests drive it).

    Args:
        order: The race order.
        tokens: Scored tokens per unit, ``(n_units,)``.
        doc_domain: Stratum index per unit, ``(n_units,)``.
        weights: Target weight per stratum, ``(n_strata,)``.
        confidence: Probability that the returned mixture (each of the ``top`` returned)
            is within ``margin`` of the best (of the ``top`` best) on the full eval set.
        top: Race against the k-th best full score (keeps the k best, family-wise).
        margin: Relative indifference ``eps``: a candidate is dropped only when a kept
            mixture is proven better than ``(1 + eps)`` times the candidate.
        linear: Per stratum, whether it is a linear mean (task items; ``bounds``).
        bound: Per stratum, the largest per-unit ``|z|`` (0: unbounded; ``bounds``).
        cost: Tokens a forward pass over each unit costs (what ``tokens_scored`` counts;
            default ``tokens``).
        adjust: Per candidate key, a control-variate adjustment of its per-unit values,
            ``(n_units,)`` summing to 0 in every stratum (``control_adjustment``): estimates
            and tests read ``values + adjust``, whose full-set target is the same, with a
            smaller variance when the control tracks the values. Keys without one read
            their values as they are.
    """

    order: RaceOrder
    tokens: np.ndarray
    doc_domain: np.ndarray
    weights: np.ndarray
    confidence: float = DEFAULT_CONFIDENCE
    top: int = 1
    margin: float = 0.0
    linear: np.ndarray | None = None
    bound: np.ndarray | None = None
    cost: np.ndarray | None = None
    adjust: dict[Hashable, np.ndarray] = field(default_factory=dict)
    incumbents: list[Incumbent] = field(default_factory=list)
    tokens_scored: int = 0

    def __post_init__(self) -> None:
        check_confidence(self.confidence)
        check_margin(self.margin)
        if self.cost is None:
            self.cost = self.tokens
        if self.top < 1:
            raise AblateError(f"--top must be at least 1, got {self.top}")
        self.stage_of = np.full(len(self.tokens), len(self.order.stages), dtype=np.int64)
        for s, units in enumerate(self.order.stages):
            self.stage_of[units] = s

    def level(self, rivals: int = 1) -> float:
        """The one-sided level of a test (``design.look_level``)."""
        return look_level(self.confidence, len(self.order.stages), self.top, rivals)

    def value(self, nll: np.ndarray, mask: np.ndarray) -> float:
        return target_value(nll, self.tokens, self.doc_domain, mask, self.weights, self.linear)

    def values(self, nll: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
        """``value`` of several candidates, ``(M,)``."""
        return target_values(
            np.stack(nll), self.tokens, self.doc_domain, mask, self.weights, self.linear
        )

    def adjusted(self, key: Hashable, nll: np.ndarray) -> np.ndarray:
        """``nll`` plus ``key``'s control adjustment (as it is without one)."""
        a = self.adjust.get(key)
        return nll if a is None else nll + a

    def admit(self, key: Hashable, nll: np.ndarray, born: int = 0) -> float:
        """Record a fully scored mixture as a possible incumbent; returns its target.

        ``born``: stages of the race order its choice read (0 for a store hit)."""
        score = self.value(nll, np.ones(len(nll), dtype=bool))
        # A mixture raced again (no store to answer it) replaces its entry: the k best are
        # k distinct mixtures.
        self.incumbents = [x for x in self.incumbents if x.key != key]
        self.incumbents.append(Incumbent(score, key, nll, born))
        self.incumbents.sort(key=lambda x: x.score)
        return score

    def threshold(self, look: int | None = None) -> Incumbent | None:
        """The k-th best incumbent that a test before stage ``look`` may use (chosen after
        fewer than ``look`` stages; None: any), or None when there are fewer than k."""
        ok = [x for x in self.incumbents if look is None or x.born < look]
        return ok[self.top - 1] if len(ok) >= self.top else None

    def run(self, keys: Sequence[Hashable], score: StageScore) -> dict[Hashable, Outcome]:
        """Race ``keys`` (distinct) and return each one's outcome."""
        stages = self.order.stages
        n_units = len(self.tokens)
        nll = {k: np.full(n_units, np.nan) for k in keys}
        done = dict.fromkeys(keys, 0)  # stages scored
        out: dict[Hashable, Outcome] = {}
        # any of these could become an incumbent tested against on the units that chose it
        rivals = len(keys) + len(self.incumbents)

        def advance(group: Sequence[Hashable], s: int) -> None:
            if group:
                units = stages[s]
                nll_s = score(group, units)  # (len(group), len(units))
                for k, row in zip(group, nll_s, strict=True):
                    nll[k][units] = row
                    done[k] = s + 1
                self.tokens_scored += int(self.cost[units].sum()) * len(group)

        def finish(k: Hashable, born: int) -> None:
            for s in range(done[k], len(stages)):
                advance([k], s)
            out[k] = Outcome(nll[k], True, self.admit(k, nll[k], born), len(stages))

        running = list(keys)
        for s in range(len(stages)):
            if s == 0:
                advance(running, 0)
                continue
            if not running:  # every candidate decided
                break
            scored = self.stage_of < s  # every running candidate has scored stages < s
            # what estimates and tests read: the values with their control adjustment
            seen = {k: self.adjusted(k, nll[k]) for k in running}
            est = dict(zip(running, self.values(list(seen.values()), scored), strict=True))
            order = sorted(running, key=est.__getitem__)  # stable: ties keep their order
            while len(self.incumbents) < self.top and running:  # seed from the best estimates
                best = order.pop(0)
                running.remove(best)
                finish(best, s)
            kth = self.threshold()
            if running and kth is not None:  # settle the apparent leader now ...
                lead = order[0]  # ... if it looks better than the k-th by more than EPS
                if (1 + self.margin) * est[lead] < self.value(
                    self.adjusted(kth.key, kth.nll), scored
                ):
                    running.remove(lead)
                    finish(lead, s)
            thr, level = self.threshold(s), self.level()
            if s == 1 and self.threshold() is not thr:
                # a better one chosen on stage 0 itself: tested on the units that chose
                # it, at a level split over every mixture that could have been (union bound)
                thr, level = self.threshold(), self.level(rivals)
            if running and thr is not None:
                inc = self.adjusted(thr.key, thr.nll)
                worse = self._gaps([seen[k] for k in running], inc, scored, thr).worse(level)
                if worse.any():
                    inc_est = self.value(inc, scored)
                keep = []
                for j, k in enumerate(running):
                    if worse[j]:  # the estimate: the incumbent's target + the plain gap
                        gap = est[k] - inc_est
                        out[k] = Outcome(nll[k], False, thr.score + gap, done[k], thr.key)
                    else:
                        keep.append(k)
                running = keep
            advance(running, s)
        for k in running:
            out[k] = Outcome(nll[k], True, self.admit(k, nll[k], len(stages)), len(stages))
        return out

    def order_look(self, scored: np.ndarray) -> int:
        """The look a ``scored`` mask belongs to: how many stages it holds."""
        return int(self.stage_of[scored].max()) + 1 if scored.any() else 0

    def _gaps(
        self, cand: Sequence[np.ndarray], inc: np.ndarray, scored: np.ndarray, thr: Incumbent
    ) -> Gaps:
        """Each candidate's bound against ``thr`` (values as the test reads them: ``cand``,
        and ``inc`` for ``thr``), on the units scored so far; the units of the stages
        ``thr``'s choice read are known, the later ones sampled."""
        return gap_bounds(
            np.stack(cand),
            inc,
            self.tokens,
            self.doc_domain,
            scored,
            (self.stage_of < thr.born) & (thr.born < self.order_look(scored)),
            self.weights,
            margin=self.margin,
            linear=self.linear,
            bound=self.bound,
        )


__all__ = [
    "DEFAULT_CONFIDENCE",
    "FIRST_UNITS",
    "GROWTH",
    "RACE_SEED",
    "ArrayScores",
    "Gap",
    "Incumbent",
    "Outcome",
    "RaceOrder",
    "Racer",
    "StageScore",
    "check_confidence",
    "paired_gap",
    "target_value",
]
