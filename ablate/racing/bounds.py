"""The racing test: a one-sided bound on a candidate's gap to an incumbent, within a margin.

What a drop promises. A candidate ``c`` is dropped against a fully scored incumbent ``i``
when, at the look's level, ``(1 + eps) * T(c) > T(i)`` on the *full* eval set: the kept
incumbent is then within ``eps`` (relative) of ``c``. If that holds for the true best ``b``
whenever ``b`` is dropped, the returned mixture is within ``eps`` of the best. Only ``b``'s
tests matter (not every candidate's), so the level is not split over candidates; it is split
over looks (Bonferroni over a number of looks fixed before the race, ``design.spend``) and,
for ``--top K``, over the K best (family-wise).

Why the incumbent's early units are *known*, not sampled. An incumbent picked because it
looked best on a prefix of the eval units is lucky on that prefix; testing others against it
on the same units biases every paired gap upward (the true best was dropped in 12.8% of
races at 5% nominal, issue 27). So each incumbent remembers the stages its choice read
(``born``): for tests against it those units are a fixed, fully known part of the
population, and only the units scored after its choice are a random sample. Given the
prefix, the rest of the order is a uniform shuffle, so the sample after ``born`` is a
simple random sample without replacement from the units the choice did not see, whatever
the choice was: the bound holds conditionally, hence unconditionally.

The statistic (per stratum ``d``, weight ``w_d``; known units ``K``, the rest ``R`` of
``N_r`` units, of which ``n`` are scored): the target term is ``exp(mu_d)`` with
``mu_d = (S_K + Tok_R * r) / Tok_d`` and ``r`` the ratio estimate over the scored part of
``R``. The gap ``(1 + eps) T(c) - T(i)`` is carried through the delta method (paired: the
same units for both), unit ``j`` contributing
``z_j = ((1+eps) e^mu_c (nll_cj - r_c t_j) - e^mu_i (nll_ij - r_i t_j)) * Tok_R / (Tok_d t_bar)``
and the variance is the stratified one with the finite-population factor ``1 - n / N_r``
(Cochran, *Sampling Techniques*, 1977, ch. 5-6) and one pessimistic pseudo-unit per
stratum (``UNSEEN``: a guard against the one unscored unit a mixture is much better on). The reference is Student's t with Welch-Satterthwaite degrees of freedom. This is a CLT bound, not a nonparametric one: a
distribution-free confidence sequence (Waudby-Smith & Ramdas 2020) needs a known range of
the per-unit gap, and the only sure range (a unit's NLL is >= 0) is a hundred times wider
than the 1-3% gaps racing must resolve; ``benchmarks/bench_racing.py`` measures how far the
CLT bound can be trusted (docs/racing.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The sampling-without-replacement factor ``1 - n / N`` (Cochran 1977, ch. 2): the estimand
# is the full eval set, so a stratum scored in full has no sampling error. It assumes the
# unscored units look like the scored ones, which fails near the end of a stratum when a
# best mixture is much better on the one document left (bench_racing, domain target, best
# better on one document's windows: 12% failures at 5% nominal without the guard below);
# with the ``UNSEEN`` guard it holds there (0/300) and saves 10-40% more tokens than
# leaving it out.
FINITE_POPULATION = True
# A pseudo-unit on which the candidate's NLL is this much (nats per token: 10% perplexity)
# below its own mean joins every perplexity stratum's sample: a unit the sample missed can
# be much better (one document a pool member has seen). bench_racing, macro with the best's
# lead on a few windows of one domain (windows-one-stratum): 31% failures without it
# (nominal 5%), 1.2% with it. Nats, not a share of the NLL: the margin and the leads it
# guards against are relative perplexities (as 3% of the NLL it meant 14-17% perplexity on
# the demo pool, where it was most of a race's cost: docs/racing.md).
UNSEEN = math.log(1.1)


def fpc(n: int, n_pop: int) -> float:
    """The variance factor for ``n`` of ``n_pop`` units sampled (see ``FINITE_POPULATION``)."""
    return 1 - n / n_pop if FINITE_POPULATION else 1.0


@dataclass(frozen=True)
class Gap:
    """``delta``: the estimate of ``(1 + margin) T(candidate) - T(incumbent)`` (the plain
    gap when ``margin`` is 0); ``se`` its standard error (0: exact); ``df`` its
    Welch-Satterthwaite degrees of freedom."""

    delta: float
    se: float
    df: float

    def worse(self, level: float) -> bool:
        """Whether ``delta > 0`` at one-sided ``level`` (e.g. 0.99)."""
        if not math.isfinite(self.se):
            return False
        if self.se == 0:
            return self.delta > 0
        from scipy.stats import t

        return self.delta - float(t.ppf(level, self.df)) * self.se > 0


@dataclass(frozen=True)
class Gaps:
    """``Gap`` s of many candidates against one incumbent, each field ``(M,)`` float64."""

    delta: np.ndarray
    se: np.ndarray
    df: np.ndarray

    def __getitem__(self, m: int) -> Gap:
        return Gap(float(self.delta[m]), float(self.se[m]), float(self.df[m]))

    def worse(self, level: float) -> np.ndarray:
        """``(M,)`` bool: ``delta > 0`` at one-sided ``level``, per candidate."""
        from scipy.stats import t

        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(np.isfinite(self.df), t.ppf(level, np.maximum(self.df, 1e-9)), 0.0)
            q = np.where(np.isfinite(self.df), q, float(t.ppf(level, 1e12)))
            lower = np.where(self.se > 0, self.delta - q * self.se, self.delta)
        return np.isfinite(self.se) & (lower > 0)


def gap_bounds(
    cand: np.ndarray,
    inc: np.ndarray,
    tokens: np.ndarray,
    strata: np.ndarray,
    scored: np.ndarray,
    known: np.ndarray,
    weights: np.ndarray,
    *,
    margin: float = 0.0,
    linear: np.ndarray | None = None,
    bound: np.ndarray | None = None,
) -> Gaps:
    """The paired, stratified delta-method gap of ``(1 + margin) T(cand) - T(inc)``, for
    ``M`` candidates scored on the same units.

    Args:
        cand: Per-unit values of the candidates (a document's or window's summed NLL; a
            linear stratum's unit: the item loss), ``(M, n_units)`` float64 (read only
            where ``scored``).
        inc: The same for the incumbent, scored on every unit, ``(n_units,)``.
        tokens: Scored tokens per unit, ``(n_units,)`` (1 for a linear stratum's units).
        strata: Stratum index per unit, ``(n_units,)``.
        scored: Units the candidates have been scored on, ``(n_units,)`` bool.
        known: Units whose values are a fixed part of the population for this test (those
            the incumbent's choice read), ``(n_units,)`` bool, a subset of ``scored``.
        weights: Target weight per stratum, ``(n_strata,)`` (0: not read).
        margin: Relative indifference ``eps`` (0: the plain gap).
        linear: Per stratum: its term is the mean itself (a task loss), not ``exp`` of it.
        bound: Per stratum: the largest ``|z|`` a unit can show (0: unbounded); a bounded
            stratum's variance gets Agresti & Min's pseudo-items (Statistics in Medicine
            2005), because 0/1 outcomes often agree on a few items and a zero variance
            there proves nothing.
    """
    cand = np.atleast_2d(cand)
    m_count = cand.shape[0]
    unknown = Gaps(np.full(m_count, np.nan), np.full(m_count, np.inf), np.zeros(m_count))
    k = 1.0 + margin
    delta = np.zeros(m_count)
    var = np.zeros(m_count)
    dof = np.zeros(m_count)
    for d, w in enumerate(weights):
        if w <= 0:
            continue
        in_d = strata == d
        kn = np.flatnonzero(in_d & known)
        rs = np.flatnonzero(in_d & scored & ~known)  # the random sample
        n, n_pop = len(rs), int(in_d.sum()) - len(kn)
        if n == 0 and n_pop > 0:
            return unknown
        tok_d = float(tokens[in_d].sum())
        tok_r = tok_d - float(tokens[kn].sum())
        t = tokens[rs].astype(np.float64)  # (n,)
        c_rs = cand[:, rs]  # (M, n)
        r_c = c_rs.sum(1) / t.sum() if n else np.zeros(m_count)  # (M,)
        r_i = inc[rs].sum() / t.sum() if n else 0.0
        mu_c = (cand[:, kn].sum(1) + tok_r * r_c) / tok_d  # (M,)
        mu_i = (inc[kn].sum() + tok_r * r_i) / tok_d
        if linear is not None and linear[d]:
            g_c, g_i = np.ones(m_count), 1.0  # a mean of per-item losses enters as it is
            delta += w * (k * mu_c - mu_i)
        else:
            g_c, g_i = np.exp(mu_c), math.exp(mu_i)
            delta += w * (k * g_c - g_i)
        if n == n_pop:
            continue  # the stratum is scored in full: no sampling error
        if n < 2:
            return unknown
        scale = tok_r / (tok_d * t.mean())
        z = (
            k * g_c[:, None] * (c_rs - r_c[:, None] * t) - g_i * (inc[rs] - r_i * t)
        ) * scale  # (M, n)
        r = 0.0 if bound is None else float(bound[d])
        if r > 0:  # Agresti & Min: half an item at +r and at -r, one at 0
            mean = z.sum(1) / (n + 2)
            s2 = (np.square(z).sum(1) + r * r - (n + 2) * mean * mean) / (n + 1)
        elif UNSEEN > 0 and not (linear is not None and linear[d]):
            # one unseen unit on which the candidate is UNSEEN nats per token better than
            # its own mean: a unit the sample missed can be much better (one document a
            # pool member has seen), and a CLT bound on a few units cannot know it
            zp = -UNSEEN * k * g_c * t.mean() * scale  # (M,)
            zz = np.concatenate([z, zp[:, None]], axis=1)
            delta += w * zp / (n + 1)
            s2 = zz.var(axis=1, ddof=1)
            n = n + 1
        else:
            s2 = z.var(axis=1, ddof=1)
        v = w * w * fpc(min(n, n_pop), n_pop) * s2 / n
        var += v
        dof += v * v / (n - 1)  # Welch-Satterthwaite
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(dof > 0, var * var / np.where(dof > 0, dof, 1.0), np.inf)
    return Gaps(delta, np.sqrt(var), df)


def gap_bound(
    cand: np.ndarray,
    inc: np.ndarray,
    tokens: np.ndarray,
    strata: np.ndarray,
    scored: np.ndarray,
    known: np.ndarray,
    weights: np.ndarray,
    **kwargs,
) -> Gap:
    """``gap_bounds`` for one candidate, ``cand (n_units,)``."""
    return gap_bounds(cand[None], inc, tokens, strata, scored, known, weights, **kwargs)[0]


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
    """``gap_bound`` with nothing known and no margin: the plain paired gap on the scored
    units (the statistic of the racer before issue 27)."""
    none = np.zeros(len(scored), dtype=bool)
    return gap_bound(
        cand, inc, tokens, doc_domain, scored, none, weights, linear=linear, bound=bound
    )


def target_value(
    nll: np.ndarray,
    tokens: np.ndarray,
    strata: np.ndarray,
    mask: np.ndarray,
    weights,
    linear: np.ndarray | None = None,
) -> float:
    """``sum_d w_d exp(mu_d)`` (``w_d mu_d`` for a linear stratum) over the units in
    ``mask`` (the target's estimate; on every unit, the exact target)."""
    out = 0.0
    for d, w in enumerate(weights):
        if w > 0:
            idx = np.flatnonzero((strata == d) & mask)
            if not len(idx):
                return math.nan
            mu = nll[idx].sum() / tokens[idx].sum()
            out += w * (mu if linear is not None and linear[d] else math.exp(mu))
    return out


def target_values(
    nll: np.ndarray,
    tokens: np.ndarray,
    strata: np.ndarray,
    mask: np.ndarray,
    weights,
    linear: np.ndarray | None = None,
) -> np.ndarray:
    """``target_value`` of ``M`` candidates at once: ``nll (M, n_units)`` -> ``(M,)``."""
    nll = np.atleast_2d(nll)
    out = np.zeros(nll.shape[0])
    for d, w in enumerate(weights):
        if w > 0:
            idx = np.flatnonzero((strata == d) & mask)
            if not len(idx):
                return np.full(nll.shape[0], np.nan)
            mu = nll[:, idx].sum(1) / tokens[idx].sum()
            out += w * (mu if linear is not None and linear[d] else np.exp(mu))
    return out


__all__ = [
    "Gap",
    "Gaps",
    "control_adjustment",
    "gap_bound",
    "gap_bounds",
    "paired_gap",
    "target_value",
    "target_values",
]


def control_adjustment(
    coef: np.ndarray,
    basis: np.ndarray,
    tokens: np.ndarray,
    strata: np.ndarray,
    linear: np.ndarray | None = None,
) -> np.ndarray:
    """Per-unit control-variate adjustment ``-c_j + t_j C_d / Tok_d`` of one candidate.

    ``c = coef @ basis`` predicts the candidate's per-unit values from fully scored
    mixtures (``basis``, ``(B, n_units)``; the candidate's mixture weights over them as
    ``coef``). Its stratum totals ``C_d`` are known exactly, so the adjusted values keep
    every stratum's total, and with it the full-set target (the difference estimator of
    survey sampling, Cochran 1977, ch. 7, with coefficient 1 spread by tokens); where the
    prediction tracks the candidate unit by unit, the sampling variance shrinks by the share
    it explains. Linear strata (task items) get no adjustment.
    """
    c = np.asarray(coef, dtype=np.float64) @ np.asarray(basis, dtype=np.float64)  # (n_units,)
    n = int(strata.max()) + 1 if len(strata) else 0
    per_token = np.bincount(strata, c, n) / np.maximum(np.bincount(strata, tokens, n), 1)
    adj = tokens * per_token[strata] - c
    if linear is not None:
        adj = np.where(np.asarray(linear)[strata], 0.0, adj)
    return adj
