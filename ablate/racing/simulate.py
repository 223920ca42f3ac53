"""Racing by simulation: planted per-unit losses raced through the shipped ``Racer``.

The seam behind ``benchmarks/bench_racing.py`` and the racing tests: a ``Setting`` draws an
eval set of units (strata, lengths) and candidates' per-unit losses with a known best; the
shipped ``RaceOrder`` and ``Racer`` race them through ``ArrayScores``-like indexing (no
models), and ``failed`` says whether the race broke its promise (``docs/racing.md``):

* ``top`` 1: the returned mixture is more than ``margin`` (relative) worse than the best;
* ``top`` K: one of the true K best was dropped while fewer than K kept mixtures are within
  ``margin`` of it.

Only ``RaceOrder.build`` and ``Racer(...).run`` are used, so an older racer with the same
constructor can be measured by the same code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ablate.racing.bounds import control_adjustment
from ablate.racing.engine import ArrayScores, RaceOrder, Racer


@dataclass(frozen=True)
class Setting:
    """One simulated design: ``units`` per stratum drawn in ``[lo, hi]``; ``scenario``:
    ``near_ties`` (10 within 1-3%), ``crowd`` (20 within 3%, macro-like), ``one_unit`` (the
    best is 1% worse on almost every unit, much better on one per stratum), ``subsets``
    (every subset of ``strata`` partitions, each loss a subset's average of its partitions'
    plus a balance bonus and a residual: what control variates read, ``draw_subsets``),
    ``one_stratum`` (a new best 1% better over the target, all of its lead on one unit in
    nine of one stratum: a few documents of one domain), ``subsets_one_unit`` (subsets, the
    best's lead all on one unit in nine per stratum, in its residual: invisible to the
    control), ``subsets_one_stratum`` (the same, the lead on one stratum only).
    ``control``: race with control variates (the singletons scored in full first;
    ``subsets*`` and replays of subsets only)."""

    name: str
    candidates: int
    strata: int
    units: tuple[int, int]
    lengths: str  # "equal" | "lognormal"
    scenario: str
    top: int = 1
    margin: float = 0.0
    target: str = "macro"  # "macro" (equal weights) | "one" (stratum 0 alone: a domain)
    control: bool = False
    level: float = 3.0  # mean per-token NLL of a unit (the demo pool's domains: 4.3-5.3)


PER_UNIT_TOKENS = 512  # a full window (the demo pool's context)
# ``one_stratum``: the best's lead on its one stratum, 1% of a six-domain macro target
ONE_STRATUM_LEAD = 0.06


def _units(s: Setting, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tokens (U,)``, ``strata (U,)`` and each unit's NLL level ``(U,)``."""
    sizes = rng.integers(s.units[0], s.units[1] + 1, s.strata)
    strata = np.repeat(np.arange(s.strata), sizes)  # (U,)
    u = len(strata)
    if s.lengths == "equal":
        tokens = np.full(u, PER_UNIT_TOKENS)
    else:  # log-normal, sigma 1: a few documents carry much of a domain's tokens
        tokens = np.clip(np.exp(rng.normal(math.log(300), 1.0, u)), 16, 20_000).astype(int)
    mean = rng.normal(s.level, 0.1 * s.level, s.strata)  # (strata,)
    level = mean[strata] * np.exp(rng.normal(0, 0.15, u))  # (U,)
    return tokens, strata, level


def _one_unit_offset(
    tokens: np.ndarray,
    strata: np.ndarray,
    rng: np.random.Generator,
    lead: float = 0.01,
    only: int | None = None,
) -> np.ndarray:
    """Per-unit NLL offset ``(U,)`` that makes a mixture 1% worse (perplexity) on most units
    and ``lead`` better over every stratum (``only``: over that stratum alone, no offset
    elsewhere), all of the lead on one unit in nine."""
    off = np.full(len(strata), math.log(1.01))
    if only is not None:
        off[strata != only] = 0.0
    for d in range(int(strata.max()) + 1) if only is None else [only]:
        idx = np.flatnonzero(strata == d)
        special = rng.choice(idx, max(1, len(idx) // 9), replace=False)
        t_all, t_sp = tokens[idx].sum(), tokens[special].sum()
        need = math.log(1 / (1 + lead)) * t_all - math.log(1.01) * (t_all - t_sp)
        off[special] = max(-1.0, need / t_sp)
    return off


def draw(s: Setting, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One eval set and its candidates: ``values (M, U)`` summed NLL per unit, ``tokens
    (U,)``, ``strata (U,)``."""
    tokens, strata, level = _units(s, rng)
    u = len(strata)
    m = s.candidates
    g = np.empty(m)  # each candidate's relative perplexity offset from the best
    g[0] = 0.0
    if s.scenario == "crowd":
        g[1:20] = rng.uniform(0.0, 0.03, 19)
        g[20:] = rng.uniform(0.03, 0.3, m - 20)
    else:
        g[1:11] = rng.uniform(0.01, 0.03, 10)
        g[11:] = rng.uniform(0.03, 0.3, m - 11)
    g_d = g[:, None] + rng.normal(0, 0.003, (m, s.strata))  # domains differ a little
    # per-unit NLL noise between mixtures: 1% of the unit's NLL (about 3% perplexity on a
    # full window), Student-t(3) tails, larger on short units
    noise = 0.01 * rng.standard_t(3, (m, u)) * np.sqrt(PER_UNIT_TOKENS / tokens)
    nll = level + np.log1p(g_d)[:, strata] + level * np.clip(noise, -0.5, 0.5)  # (M, U)
    if s.scenario == "one_unit":  # a new best: 1% worse on most units, better on a few
        # 1% better (perplexity) than candidate 0 over each stratum, all of it on a few units
        off = _one_unit_offset(tokens, strata, rng)
        best = level + off + level * np.clip(noise[0], -0.5, 0.5)
        nll = np.vstack([best, nll])[:m]
    elif s.scenario == "one_stratum":  # the same lead, all of it in stratum 0
        # 1% better over the macro target: 6% on stratum 0 (on a few units), tied elsewhere
        off = _one_unit_offset(tokens, strata, rng, lead=ONE_STRATUM_LEAD, only=0)
        nll = np.vstack([nll[0] + off, nll])[:m]
    values = tokens * nll  # summed NLL per unit
    return values, tokens, strata


def draw_subsets(
    s: Setting, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every non-empty subset of ``s.strata`` partitions, demo-like: ``(values, tokens,
    strata, basis, coef)``, ``basis (B,)`` the singletons' rows, ``coef (M, B)`` each
    candidate's weights over them.

    Partition ``b``'s member is 8% better (perplexity) than the others on stratum ``b``,
    the others 0-10% worse, and each member's per-unit NLL varies by 5% of the unit's
    (Student-t(3): members specialise window by window; the demo pool's singletons: 9.4%
    standard deviation); a subset's loss is its partitions' average, minus a bonus for
    balance (up to 4% with every partition, +-1% per subset and stratum: a crowd of
    near-ties), plus a residual of 0.8% of the unit's NLL (Student-t(3); on the demo pool
    1.5% standard deviation, a sixth of the members'): the part of a merge's loss its
    partitions' average does not predict.
    """
    tokens, strata, level = _units(s, rng)
    n_b, u = s.strata, len(strata)
    offset = np.log1p(rng.uniform(0.0, 0.1, (n_b, n_b)))  # (member, stratum)
    offset[np.arange(n_b), np.arange(n_b)] = math.log(0.92)
    noise = 0.05 * rng.standard_t(3, (n_b, u)) * np.sqrt(PER_UNIT_TOKENS / tokens)
    member = level + offset[:, strata] + level * np.clip(noise, -0.5, 0.5)  # (B, U)
    masks = [[b for b in range(n_b) if j >> b & 1] for j in range(1, 2**n_b)]
    coef = np.zeros((len(masks), n_b))
    for j, bs in enumerate(masks):
        coef[j, bs] = 1 / len(bs)
    size = np.array([len(bs) for bs in masks])
    bonus = 0.04 * (size - 1)[:, None] / max(1, n_b - 1) + rng.uniform(
        -0.01, 0.01, (len(masks), n_b)
    )
    bonus[size == 1] = 0.0
    resid = 0.008 * rng.standard_t(3, (len(masks), u)) * np.sqrt(PER_UNIT_TOKENS / tokens)
    resid[size == 1] = 0.0  # a singleton is its member
    nll = coef @ member - np.log1p(bonus)[:, strata] + level * np.clip(resid, -0.5, 0.5)
    if s.scenario in ("subsets_one_unit", "subsets_one_stratum"):  # a lead the control misses
        true = targets(tokens * nll, tokens, strata, np.full(n_b, 1 / n_b))
        j = int(np.argmin(true))
        runner = np.sort(true)[1]
        # j becomes 1% better than the runner-up over every stratum, with that lead on one
        # unit in nine per stratum and 1% worse than its own average prediction elsewhere;
        # or over the target, with all of its lead on a few units of stratum 0
        if s.scenario == "subsets_one_unit":
            off = _one_unit_offset(tokens, strata, rng)
        else:
            off = _one_unit_offset(tokens, strata, rng, lead=ONE_STRATUM_LEAD, only=0)
        nll[j] = nll[j] + off + math.log(runner / true[j])
    basis = np.flatnonzero(size == 1)
    return tokens * nll, tokens, strata, basis, coef


def targets(
    values: np.ndarray, tokens: np.ndarray, strata: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Each candidate's exact target on the full eval set, ``(M,)``."""
    n = len(weights)
    mu = np.stack([np.bincount(strata, v, n) for v in values]) / np.bincount(strata, tokens, n)
    return np.exp(mu) @ weights


def failed(true: np.ndarray, kept: np.ndarray, top: int, eps: float) -> bool:
    """One of the true ``top`` best dropped while fewer than ``top`` kept mixtures are
    within ``eps`` of it (``top`` 1: the returned mixture is more than ``eps`` worse)."""
    best = np.argsort(true, kind="stable")[:top]
    kept_t = true[kept]
    return any(not kept[j] and (kept_t <= (1 + eps) * true[j] + 1e-12).sum() < top for j in best)


def race_once(
    values: np.ndarray,
    tokens: np.ndarray,
    strata: np.ndarray,
    *,
    confidence: float,
    top: int,
    margin: float,
    seed: int,
    target: str = "macro",
    first: int | None = None,
    control: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Race every candidate (``values (M, U)``) through the shipped ``Racer``.

    Returns ``(kept (M,) bool, tokens_scored, weights per stratum)``; ``first``: units per
    stratum in stage 0 (None: the shipped schedule); ``control``: ``(basis (B,), coef (M,
    B))``, race as ``Race`` does with control variates: the basis rows are scored in full
    first (and kept, as incumbents chosen before the race), the others raced on values
    adjusted by their prediction ``coef @ values[basis]``."""
    first_kw = {} if first is None else {"first": first}  # default: the shipped schedule
    n_strata = int(strata.max()) + 1
    weights = np.full(n_strata, 1 / n_strata)  # macro
    if target == "one":
        weights = (np.arange(n_strata) == 0).astype(float)
    raced = np.flatnonzero(weights > 0).tolist()
    order = RaceOrder.build(strata, raced, seed=seed, **first_kw)
    kw = {"margin": margin} if margin else {}  # a racer without --margin cannot take it
    racer = Racer(order, tokens, strata, weights, confidence=confidence, top=top, **kw)
    keys = list(range(len(values)))
    kept = np.zeros(len(values), dtype=bool)
    if control is not None:
        basis, coef = control
        for b in basis:
            racer.admit(int(b), values[b])
            racer.tokens_scored += int(tokens.sum())
        kept[basis] = True
        for k in keys:
            racer.adjust[k] = control_adjustment(coef[k], values[basis], tokens, strata)
        keys = [k for k in keys if not kept[k]]
    out = racer.run(keys, ArrayScores(values))
    for k in keys:
        kept[k] = out[k].full
    return kept, racer.tokens_scored, weights


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate seen ``k`` times in ``n``."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def simulate(
    s: Setting,
    races: int,
    confidence: float,
    seed: int,
    replay: tuple[np.ndarray, ...] | None = None,
    first: int | None = None,
) -> dict:
    """``races`` races of setting ``s`` (a fresh draw and order each; ``replay``: fixed
    real ``(values, tokens, strata[, basis, coef])``, a fresh order each): failures against
    nominal with their Clopper-Pearson 95% interval, and the mean token saving."""
    rng = np.random.default_rng(seed)
    fails, savings = 0, []
    for _ in range(races):
        control = None
        if replay is not None:
            values, tokens, strata, *control = replay
        elif s.scenario.startswith("subsets"):
            values, tokens, strata, *control = draw_subsets(s, rng)
        else:
            values, tokens, strata = draw(s, rng)
        if not s.control:
            control = None
        elif not control:
            raise ValueError(f"{s.name}: control variates need subsets (a basis)")
        kept, scored, weights = race_once(
            values,
            tokens,
            strata,
            confidence=confidence,
            top=s.top,
            margin=s.margin,
            seed=int(rng.integers(2**62)),
            target=s.target,
            first=first,
            control=tuple(control) if control else None,
        )
        true = targets(values, tokens, strata, weights)
        fails += failed(true, kept, s.top, s.margin)
        savings.append(len(values) * tokens.sum() / scored)  # as RaceStats.saving counts
    lo, hi = clopper_pearson(fails, races)
    return {
        **dataclasses.asdict(s),
        "races": races,
        "nominal": round(1 - confidence, 6),
        "failures": fails,
        "rate": fails / races,
        "ci95": [lo, hi],
        "saving_mean": float(np.mean(savings)),
        "above_nominal": lo > 1 - confidence,
    }


__all__ = [
    "PER_UNIT_TOKENS",
    "Setting",
    "clopper_pearson",
    "draw",
    "draw_subsets",
    "failed",
    "race_once",
    "simulate",
    "targets",
]
