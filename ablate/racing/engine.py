"""The race engine: document order, the paired stratified test, and the racer's bookkeeping.

``Racer`` knows nothing of models: it races keys through a scoring callback, so tests drive
it with planted per-unit scores. ``ablate.racing.policy`` turns it into a scoring policy over an
``Evaluator``; its module docstring gives the algorithm, the statistic and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ablate.pool.errors import AblateError

DEFAULT_CONFIDENCE = 0.95
FIRST_DOCS = 2  # documents per domain at the first look: a variance needs two
GROWTH = 2  # each stage doubles the documents per domain (a geometric race schedule)
RACE_SEED = 0  # the document order is fixed, so a resumed race visits the same prefixes


def check_confidence(confidence: float) -> float:
    """``confidence`` if it is in [0.5, 1), else a one-line ``AblateError``."""
    if not (isinstance(confidence, int | float) and 0.5 <= confidence < 1):
        raise AblateError(f"--confidence must be at least 0.5 and below 1, got {confidence}")
    return float(confidence)


# ---------------------------------------------------------------------- the order
@dataclass(frozen=True)
class RaceOrder:
    """Eval documents in race order: ``stages[s]`` holds the document indices stage ``s``
    adds (``(n,)`` int64); the last stage holds every document not visited before."""

    stages: tuple[np.ndarray, ...]

    @classmethod
    def build(
        cls,
        doc_domain: np.ndarray,
        raced: Sequence[int],
        *,
        seed: int = RACE_SEED,
        first: int = FIRST_DOCS,
        growth: float = GROWTH,
    ) -> RaceOrder:
        """Stages of ``first * growth**s`` documents per raced domain (stratified prefixes).

        Args:
            doc_domain: Domain index of each eval document, ``(n_docs,)``.
            raced: Domain indices the target reads; other domains wait for the last stage.
            seed: Seeds the per-domain shuffle.
            first: Documents per domain in the first stage.
            growth: Factor by which each stage grows the documents per domain.
        """
        rng = np.random.default_rng(seed)
        perms = {d: rng.permutation(np.flatnonzero(doc_domain == d)) for d in sorted(set(raced))}
        most = max((len(p) for p in perms.values()), default=0)
        stages, done, count = [], 0, first
        while count < most:
            stages.append(np.concatenate([p[done:count] for p in perms.values()]))
            done, count = count, max(count + 1, math.ceil(count * growth))
        seen = np.zeros(len(doc_domain), dtype=bool)
        for s in stages:
            seen[s] = True
        stages.append(np.flatnonzero(~seen))
        return cls(tuple(s.astype(np.int64) for s in stages if len(s)))


# ---------------------------------------------------------------------- the statistic
@dataclass(frozen=True)
class Gap:
    """``delta``: target(candidate) - target(incumbent) on the scored documents; ``se``
    its standard error (0: exact); ``df`` its Welch-Satterthwaite degrees of freedom."""

    delta: float
    se: float
    df: float

    def worse(self, level: float) -> bool:
        """Whether the candidate is worse at one-sided ``level`` (e.g. 0.99)."""
        if not math.isfinite(self.se):
            return False
        if self.se == 0:
            return self.delta > 0
        from scipy.stats import t

        return self.delta - float(t.ppf(level, self.df)) * self.se > 0


def paired_gap(
    cand: np.ndarray,
    inc: np.ndarray,
    tokens: np.ndarray,
    doc_domain: np.ndarray,
    scored: np.ndarray,
    weights: np.ndarray,
    linear: np.ndarray | None = None,
    bound: np.ndarray | None = None,
) -> Gap:
    """The paired, stratified delta-method gap between two mixtures (see the module doc).

    Args:
        cand: Summed NLL per document of the candidate, ``(n_docs,)`` float64 (a linear
            stratum's units: the per-item loss).
        inc: The same for the incumbent (scored on every document).
        tokens: Scored tokens per document, ``(n_docs,)`` (1 for a linear stratum's units).
        doc_domain: Domain (stratum) index per document, ``(n_docs,)``.
        scored: Documents the candidate has been scored on, ``(n_docs,)`` bool.
        weights: Target weight per domain, ``(n_domains,)`` (0: not read).
        linear: Per stratum: its term is the mean itself (a task loss), not ``exp`` of it.
        bound: Per stratum: the largest ``|z|`` a unit can show (0: unbounded); a bounded
            stratum's variance gets Agresti-Min pseudo-items, because 0/1 outcomes often
            agree on a few items and a zero variance there proves nothing.
    """
    delta, var, dof = 0.0, 0.0, 0.0
    for d, w in enumerate(weights):
        if w <= 0:
            continue
        in_d = doc_domain == d
        idx = np.flatnonzero(in_d & scored)
        n, big_n = len(idx), int(in_d.sum())
        if n == 0:
            return Gap(math.nan, math.inf, 0.0)
        t = tokens[idx].astype(np.float64)
        mu_c, mu_i = cand[idx].sum() / t.sum(), inc[idx].sum() / t.sum()
        if linear is not None and linear[d]:
            e_c = e_i = 1.0  # a mean of per-item losses enters the target as it is
            delta += w * (mu_c - mu_i)
        else:
            e_c, e_i = math.exp(mu_c), math.exp(mu_i)
            delta += w * (e_c - e_i)
        if n == big_n:
            continue  # the whole domain is scored: no sampling error
        if n < 2:
            return Gap(math.nan, math.inf, 0.0)
        z = (e_c * (cand[idx] - mu_c * t) - e_i * (inc[idx] - mu_i * t)) / t.mean()  # (n,)
        r = 0.0 if bound is None else float(bound[d])
        if r > 0:  # Agresti & Min (2005): half an item at +r and at -r, one at 0
            m = z.sum() / (n + 2)
            s2 = (np.square(z).sum() + r * r - (n + 2) * m * m) / (n + 1)
        else:
            s2 = z.var(ddof=1)
        v = w * w * (1 - n / big_n) * s2 / n
        var += v
        dof += v * v / (n - 1)  # Welch-Satterthwaite
    return Gap(delta, math.sqrt(var), var * var / dof if dof > 0 else math.inf)


def target_value(
    nll: np.ndarray,
    tokens: np.ndarray,
    doc_domain: np.ndarray,
    mask: np.ndarray,
    weights,
    linear: np.ndarray | None = None,
) -> float:
    """``sum_d w_d exp(mu_d)`` (``w_d mu_d`` for a linear stratum) over the documents in
    ``mask`` (the target's estimate)."""
    out = 0.0
    for d, w in enumerate(weights):
        if w > 0:
            idx = np.flatnonzero((doc_domain == d) & mask)
            if not len(idx):
                return math.nan
            mu = nll[idx].sum() / tokens[idx].sum()
            out += w * (mu if linear is not None and linear[d] else math.exp(mu))
    return out


# ---------------------------------------------------------------------- the bookkeeping
StageScore = Callable[[Sequence[Hashable], np.ndarray], np.ndarray]
"""``score(keys, docs)``: summed NLL ``(len(keys), len(docs))`` of each candidate on ``docs``."""


@dataclass
class Outcome:
    """One candidate's race: its per-document NLL (NaN where not scored) and verdict."""

    nll: np.ndarray
    full: bool
    score: float  # full: the target; dropped: incumbent's target + the paired estimate
    stages: int  # stages scored
    against: Hashable | None = None  # the incumbent it lost to


@dataclass
class Racer:
    """Stages, incumbents and tests of a race; knows nothing of models (tests drive it).

    Args:
        order: The race order.
        tokens: Scored tokens per document, ``(n_docs,)``.
        doc_domain: Domain index per document, ``(n_docs,)``.
        weights: Target weight per domain, ``(n_domains,)``.
        confidence: Probability that a dropped candidate is really worse than the incumbent.
        top: Race against the k-th best full score (keeps the k best provably).
        linear: Per stratum, whether it is a linear mean (task items; ``paired_gap``).
        bound: Per stratum, the largest per-unit ``|z|`` (0: unbounded; ``paired_gap``).
        cost: Tokens a forward pass over each unit costs (what ``tokens_scored`` counts;
            default ``tokens``).
    """

    order: RaceOrder
    tokens: np.ndarray
    doc_domain: np.ndarray
    weights: np.ndarray
    confidence: float = DEFAULT_CONFIDENCE
    top: int = 1
    linear: np.ndarray | None = None
    bound: np.ndarray | None = None
    cost: np.ndarray | None = None
    incumbents: list[tuple[float, Hashable, np.ndarray]] = field(default_factory=list)
    tokens_scored: int = 0

    def __post_init__(self) -> None:
        check_confidence(self.confidence)
        if self.cost is None:
            self.cost = self.tokens
        if self.top < 1:
            raise AblateError(f"--top must be at least 1, got {self.top}")
        looks = max(1, len(self.order.stages) - 1)
        self.level = 1 - (1 - self.confidence) / looks

    @property
    def threshold(self) -> tuple[float, Hashable, np.ndarray] | None:
        """The k-th best full score so far (what candidates race against), or None."""
        return self.incumbents[self.top - 1] if len(self.incumbents) >= self.top else None

    def value(self, nll: np.ndarray, mask: np.ndarray) -> float:
        return target_value(nll, self.tokens, self.doc_domain, mask, self.weights, self.linear)

    def admit(self, key: Hashable, nll: np.ndarray) -> float:
        """Record a fully scored mixture as a possible incumbent; returns its target."""
        score = self.value(nll, np.ones(len(nll), dtype=bool))
        # A mixture raced again (no store to answer it) replaces its entry: the k best are
        # k distinct mixtures.
        self.incumbents = [x for x in self.incumbents if x[1] != key]
        self.incumbents.append((score, key, nll))
        self.incumbents.sort(key=lambda x: x[0])
        del self.incumbents[self.top :]
        return score

    def run(self, keys: Sequence[Hashable], score: StageScore) -> dict[Hashable, Outcome]:
        """Race ``keys`` (distinct) and return each one's outcome."""
        stages = self.order.stages
        n_docs = len(self.tokens)
        nll = {k: np.full(n_docs, np.nan) for k in keys}
        done = dict.fromkeys(keys, 0)  # stages scored
        out: dict[Hashable, Outcome] = {}

        def scored(k: Hashable) -> np.ndarray:
            return ~np.isnan(nll[k])

        def advance(group: Sequence[Hashable], s: int) -> None:
            if group:
                docs = stages[s]
                nll_s = score(group, docs)  # (len(group), len(docs))
                for k, row in zip(group, nll_s, strict=True):
                    nll[k][docs] = row
                    done[k] = s + 1
                self.tokens_scored += int(self.cost[docs].sum()) * len(group)

        def finish(k: Hashable) -> None:
            for s in range(done[k], len(stages)):
                advance([k], s)
            out[k] = Outcome(nll[k], True, self.admit(k, nll[k]), len(stages))

        running = list(keys)
        for s in range(len(stages)):
            if s == 0:
                advance(running, 0)
                continue
            while len(self.incumbents) < self.top and running:  # seed from the best estimates
                best = min(running, key=lambda k: self.value(nll[k], scored(k)))
                running.remove(best)
                finish(best)
            gaps = self._gaps(running, nll, scored)
            if running and self.threshold is not None:
                lead = min(running, key=lambda k: gaps[k].delta)
                if gaps[lead].delta < 0:  # looks better than the incumbent: settle it now
                    running.remove(lead)
                    finish(lead)
                    gaps = self._gaps(running, nll, scored)
            keep = []
            for k in running:
                if gaps[k].worse(self.level):
                    thr = self.threshold
                    out[k] = Outcome(nll[k], False, thr[0] + gaps[k].delta, done[k], thr[1])
                else:
                    keep.append(k)
            running = keep
            advance(running, s)
        for k in running:
            out[k] = Outcome(nll[k], True, self.admit(k, nll[k]), len(stages))
        return out

    def _gaps(self, running, nll, scored) -> dict[Hashable, Gap]:
        thr = self.threshold
        if thr is None:
            return {k: Gap(math.nan, math.inf, 0.0) for k in running}
        return {
            k: paired_gap(
                nll[k],
                thr[2],
                self.tokens,
                self.doc_domain,
                scored(k),
                self.weights,
                self.linear,
                self.bound,
            )
            for k in running
        }


__all__ = [
    "DEFAULT_CONFIDENCE",
    "FIRST_DOCS",
    "GROWTH",
    "RACE_SEED",
    "Gap",
    "Outcome",
    "RaceOrder",
    "Racer",
    "StageScore",
    "check_confidence",
    "paired_gap",
    "target_value",
]
