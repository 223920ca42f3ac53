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

from ablate.racing.engine import ArrayScores, RaceOrder, Racer


@dataclass(frozen=True)
class Setting:
    """One simulated design: ``units`` per stratum drawn in ``[lo, hi]``; ``scenario``:
    ``near_ties`` (10 within 1-3%), ``crowd`` (20 within 3%, macro-like), ``one_unit`` (the
    best is 1% worse on almost every unit, much better on one per stratum)."""

    name: str
    candidates: int
    strata: int
    units: tuple[int, int]
    lengths: str  # "equal" | "lognormal"
    scenario: str
    top: int = 1
    margin: float = 0.0
    target: str = "macro"  # "macro" (equal weights) | "one" (stratum 0 alone: a domain)


PER_UNIT_TOKENS = 512  # a full window (the demo pool's context)


def draw(s: Setting, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One eval set and its candidates: ``values (M, U)`` summed NLL per unit, ``tokens
    (U,)``, ``strata (U,)``."""
    sizes = rng.integers(s.units[0], s.units[1] + 1, s.strata)
    strata = np.repeat(np.arange(s.strata), sizes)  # (U,)
    u = len(strata)
    if s.lengths == "equal":
        tokens = np.full(u, PER_UNIT_TOKENS)
    else:  # log-normal, sigma 1: a few documents carry much of a domain's tokens
        tokens = np.clip(np.exp(rng.normal(math.log(300), 1.0, u)), 16, 20_000).astype(int)
    level = rng.normal(3.0, 0.3, s.strata)[strata] * np.exp(rng.normal(0, 0.15, u))  # (U,)
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
        off = np.full(u, math.log(1.01))
        for d in range(s.strata):
            idx = np.flatnonzero(strata == d)
            special = rng.choice(idx, max(1, len(idx) // 9), replace=False)
            # 1% better (perplexity) than candidate 0 over the stratum, all of it on `special`
            t_all, t_sp = tokens[idx].sum(), tokens[special].sum()
            need = math.log(1 / 1.01) * t_all - math.log(1.01) * (t_all - t_sp)
            off[special] = max(-1.0, need / t_sp)
        best = level + off + level * np.clip(noise[0], -0.5, 0.5)
        nll = np.vstack([best, nll])[:m]
    values = tokens * nll  # summed NLL per unit
    return values, tokens, strata


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
) -> tuple[np.ndarray, int, np.ndarray]:
    """Race every candidate (``values (M, U)``) through the shipped ``Racer``.

    Returns ``(kept (M,) bool, tokens_scored, weights per stratum)``; ``first``: units per
    stratum in stage 0 (None: the shipped schedule)."""
    first_kw = {} if first is None else {"first": first}  # default: the shipped schedule
    n_strata = int(strata.max()) + 1
    weights = np.full(n_strata, 1 / n_strata)  # macro
    if target == "one":
        weights = (np.arange(n_strata) == 0).astype(float)
    raced = np.flatnonzero(weights > 0).tolist()
    order = RaceOrder.build(strata, raced, seed=seed, **first_kw)
    kw = {"margin": margin} if margin else {}  # a racer without --margin cannot take it
    racer = Racer(order, tokens, strata, weights, confidence=confidence, top=top, **kw)

    out = racer.run(list(range(len(values))), ArrayScores(values))
    kept = np.array([out[k].full for k in range(len(values))])
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
    replay: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    first: int | None = None,
) -> dict:
    """``races`` races of setting ``s`` (a fresh draw and order each; ``replay``: fixed
    real ``(values, tokens, strata)``, a fresh order each): failures against nominal with
    their Clopper-Pearson 95% interval, and the mean token saving."""
    rng = np.random.default_rng(seed)
    fails, savings = 0, []
    for _ in range(races):
        if replay is None:
            values, tokens, strata = draw(s, rng)
        else:
            values, tokens, strata = replay
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
    "failed",
    "race_once",
    "simulate",
    "targets",
]
