"""Decision fidelity: would the proxy pick the mixture that real training picks?

Correlation pooled over domains is easy to inflate (domains differ in level), so a mixture
optimizer's user needs, per target (each eval domain and ``macro``, the mean perplexity
over domains): rank agreement within one budget (Spearman, Kendall), the **regret** of the
proxy's pick (real perplexity of the mixture the proxy ranks first / the best real
perplexity - 1), and top-3 recall (how many of the really best three the proxy also ranks
in its top three).

With R training seeds per mixture (``--repeats R``) the real ranking is itself noisy:

* ``seed_spearman``, the mean Spearman between two single seeds, sits beside
  ``spearman_single``, the proxy against one seed (like for like: a proxy as good as
  re-running training scores as much);
* ``seed_regret``, one seed's pick judged on the other seeds' models (their geometric
  mean: with two seeds, the other one), sits beside ``regret_single``, the proxy's pick
  judged on the same seeds: how far real training's own pick moves with the seed (a regret
  smaller than it is more than re-running training gives);
* ``pick_ceiling`` is the pick's counterpart of ``noise_ceiling`` (below): the share of
  fresh draws of R seeds in which a *perfect* proxy's pick (the best mixture of the seeds'
  mean) is within 1% of the best of the fresh R-seed mean. Each draw adds to every
  mixture's mean the mean of R of its own seed residuals, drawn with replacement and scaled
  by sqrt(R / (R - 1)) (a residual bootstrap; a run's residuals keep its domains together,
  since one run moves all of them). It plugs in the seeds' mean for the truth: with few
  seeds a close race looks more decided than it is (the winner's curse) and the estimate
  is rough (off by up to about 0.25 at two seeds in simulation, converging as seeds are
  added: docs/validation-statistics.md). One minus it is how often even a perfect proxy
  would fail a 1% pick bar judged on this many seeds.
* ``noise_ceiling`` is what a *perfect* proxy (the seeds' expected ranking) would score
  against the R-seed mean that ``spearman`` uses. Classical test theory: a correlation
  with a measurement of reliability rho is at most sqrt(rho) (Spearman 1904); the
  reliability of a mean of R seeds is Spearman-Brown's ``R rho_1 / (1 + (R - 1) rho_1)``
  (Brown 1910; Spearman 1910). Both hold for Pearson correlations; Spearman's rho on n
  mixtures is mapped to and from them with its expectation under normality,
  ``E[r_s] = 6 / (pi (n + 1)) (asin r + (n - 2) asin(r / 2))`` (Moran 1948), so the
  ceiling is on the same scale, finite-n bias included, as the Spearman it bounds.

Intervals come from a two-way bootstrap (Owen 2007, "the pigeonhole bootstrap"): each
replicate redraws the mixtures (with their training runs: every run has its own seed, so
seed noise travels with its mixture) and, independently, the eval documents within each
domain; with repeats, the seeds' labels within each mixture are also shuffled, so the
single-seed statistics do not depend on which run is called the first. The regret of an
argmin sits at its boundary 0, where a percentile interval is not consistent; instead the
table gives the share of replicates in which the proxy's pick is within 1% (and within
``margin``) of the best.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np

from ablate.engine.scoring import MACRO
from ablate.validation.stats import batched_spearman

if TYPE_CHECKING:
    import pandas as pd

TOP_K = 3
WITHIN = 0.01  # "within 1% of the best": the regret a user reads off the report first
MARGIN = 0.005  # default indifference margin (relative perplexity), as racing's --margin
_GRID = np.linspace(0.0, 1.0, 4001)  # latent correlations for inverting E[r_s]
PICK_DRAWS = 2000  # fresh seed draws of ``pick_ceiling``: its Monte Carlo error is <= 0.011


def regret(proxy: np.ndarray, real: np.ndarray) -> float:
    """Real perplexity of the proxy's best mixture over the best real perplexity, minus 1."""
    return float(_pick_regret(proxy[None], real[None])[0])


def top_recall(proxy: np.ndarray, real: np.ndarray, k: int = TOP_K) -> float:
    """Share of the ``k`` really best mixtures that the proxy also ranks in its top ``k``."""
    k = min(k, len(real))
    return (
        len(set(np.argsort(proxy, kind="stable")[:k]) & set(np.argsort(real, kind="stable")[:k]))
        / k
    )


def target_ppl(
    nll: np.ndarray, tokens: np.ndarray, doc_domain: np.ndarray, n_domains: int
) -> np.ndarray:
    """Perplexity per mixture and target ``(M, n_domains + 1)`` from per-document sums.

    Args:
        nll: Summed NLL per mixture and document ``(M, n_docs)``.
        tokens: Scored tokens per document ``(n_docs,)``.
        doc_domain: Domain of each document ``(n_docs,)``.
        n_domains: Number of domains; the last column is ``macro`` (their mean perplexity).
    """
    onehot = np.eye(n_domains)[doc_domain]  # (n_docs, D)
    ppl = np.exp((nll @ onehot) / (tokens @ onehot))  # (M, D)
    return np.concatenate([ppl, ppl.mean(axis=1, keepdims=True)], axis=1)


def decision_metrics(proxy: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Spearman, Kendall, regret and top-3 recall of one target's ``(M,)`` vectors."""
    from scipy import stats

    out = {"spearman": math.nan, "kendall": math.nan, "regret": regret(proxy, real)}
    out["top3_recall"] = top_recall(proxy, real)
    if len(proxy) >= 3 and np.ptp(proxy) > 0 and np.ptp(real) > 0:
        out["spearman"] = float(stats.spearmanr(proxy, real).statistic)
        out["kendall"] = float(stats.kendalltau(proxy, real).statistic)
    return out


# ---------------------------------------------------------------------- noise ceiling
def spearman_brown(rho: float | np.ndarray, k: float) -> float | np.ndarray:
    """Reliability of the mean of ``k`` parallel measurements of reliability ``rho``."""
    return k * rho / (1 + (k - 1) * rho)


def expected_spearman(r: float | np.ndarray, n: int) -> float | np.ndarray:
    """Expected Spearman's rho of ``n`` bivariate-normal pairs with Pearson ``r`` (Moran 1948).

    ``n`` -> infinity gives the population value ``6 / pi asin(r / 2)``; at n = 16 and
    r = 0.8 the expectation is 0.751, 0.035 below it, which the ceiling must carry too.
    """
    return 6 / (np.pi * (n + 1)) * (np.arcsin(r) + (n - 2) * np.arcsin(np.asarray(r) / 2))


def latent_correlation(rho_s: float | np.ndarray, n: int) -> np.ndarray:
    """The Pearson r whose ``expected_spearman`` at ``n`` is ``rho_s`` (clipped to [0, 1])."""
    return np.interp(np.clip(rho_s, 0.0, 1.0), expected_spearman(_GRID, n), _GRID)


def noise_ceiling(seed_spearman: float | np.ndarray, repeats: int, n: int) -> np.ndarray:
    """Expected Spearman of a perfect proxy against the mean of ``repeats`` seeds.

    ``seed_spearman`` is the mean Spearman between two single seeds over ``n`` mixtures:
    it is mapped to a latent correlation rho_1, corrected to rho_R = Spearman-Brown(rho_1,
    R) (two R-seed means), and the perfect proxy's correlation sqrt(rho_R) is mapped back
    to Spearman at ``n``. A negative seed agreement counts as none (ceiling 0).
    """
    r1 = latent_correlation(seed_spearman, n)
    return expected_spearman(np.sqrt(spearman_brown(r1, repeats)), n)


def seed_reliability(seed_spearman: float | np.ndarray, repeats: int, n: int) -> np.ndarray:
    """Expected Spearman between two independent means of ``repeats`` seeds (rho_R)."""
    return expected_spearman(spearman_brown(latent_correlation(seed_spearman, n), repeats), n)


def pick_ceiling(
    runs: np.ndarray,
    *,
    referees: int | None = None,
    within: float = WITHIN,
    draws: int = PICK_DRAWS,
    seed: int = 0,
) -> np.ndarray:
    """Per target, the share of fresh means of ``referees`` seeds (default: as many as
    ``runs`` has) whose best a perfect proxy's pick is within ``within`` of (the module
    docstring says how the seeds are drawn).

    Args:
        runs: NLL per token of each seed, mixture and domain ``(R, M, D)``, R >= 2.

    Returns:
        ``(D + 1,)``: each domain, then ``macro``; NaN with one seed.
    """
    n_runs, m, d = runs.shape
    if n_runs < 2:
        return np.full(d + 1, math.nan)
    k = n_runs if referees is None else referees
    mean = runs.mean(axis=0)  # (M, D): the truth, plugged in
    truth = _with_macro(mean)  # (M, T): the perfect proxy picks its best per target
    residuals = (runs - mean) * math.sqrt(n_runs / (n_runs - 1))  # (R, M, D)
    rng = np.random.default_rng(seed)
    hits = np.zeros(d + 1)
    step = max(1, 2**22 // (k * m * d))  # draws per chunk: ~32 MB of residuals
    for start in range(0, draws, step):
        b = min(step, draws - start)
        idx = rng.integers(0, n_runs, size=(b, k, m))  # (B, K, M): seeds drawn
        drawn = residuals[idx, np.arange(m)]  # (B, K, M, D)
        fresh = _with_macro(mean + drawn.mean(axis=1))  # (B, M, T)
        for t in range(d + 1):
            picker = np.broadcast_to(truth[:, t], (b, m))
            hits[t] += np.sum(_within(_pick_regret(picker, fresh[:, :, t]), within))
    return hits / draws


# ---------------------------------------------------------------------- the table
_BOOTSTRAPPED = ("spearman", "spearman_single", "seed_spearman", "noise_ceiling")
# Point estimates of the seed statistics beside the ones ``decision_metrics`` gives.
_POINT_ONLY = (
    "spearman_single",
    "seed_spearman",
    "noise_ceiling",
    "seed_reliability",
    "regret_single",
    "seed_regret",
)


def interval_resamples(repeats: int) -> str:
    """What the decision intervals and probabilities resample, in words (report and JSON)."""
    seeds = " x training-seed labels within each mixture" if repeats > 1 else ""
    return f"mixtures (with their training runs) x eval documents within each domain{seeds}"


def decision_table(
    proxy_nll: np.ndarray,
    real_nll: np.ndarray,
    tokens: np.ndarray,
    doc_domain: np.ndarray,
    domains: tuple[str, ...],
    *,
    repeats_nll: np.ndarray | None = None,
    replicates: int = 1000,
    level: float = 0.95,
    margin: float = MARGIN,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per target (each domain, then ``macro``) with the decision metrics.

    Args:
        proxy_nll: Proxy NLL per mixture and document ``(M, n_docs)``.
        real_nll: Real NLL per mixture and document ``(M, n_docs)`` (the mean of repeats).
        tokens: Scored tokens per document ``(n_docs,)``.
        doc_domain: Domain index of each document ``(n_docs,)``.
        domains: Domain names.
        repeats_nll: Each repeat's real NLL ``(R, M, n_docs)`` (R >= 2: seed statistics).
        replicates: Two-way bootstrap replicates (0: no intervals, no probabilities).
        level: Two-sided coverage of the intervals.
        margin: Indifference margin of ``p_within_margin`` (relative perplexity).
        seed: Seed of the resampling.

    Returns:
        Columns ``spearman`` (proxy vs the R-seed mean), ``kendall``, ``regret``,
        ``top3_recall``, ``n``, ``spearman_single`` (proxy vs one seed, mean over seeds),
        ``seed_spearman`` (seed vs seed), ``noise_ceiling`` (perfect proxy vs the R-seed
        mean), ``seed_reliability`` (R-seed mean vs another), ``regret_single`` (the
        proxy's pick judged on the mean of all seeds but one, against that mean's best; mean
        over the seed left out) beside ``seed_regret`` (the left-out seed's pick judged the
        same way: how far real training's own pick moves with the seed), ``pick_ceiling``
        (the share of fresh R-seed means in which a perfect proxy's pick is within 1% of the
        best; the function of that name), each of the four
        Spearmans with ``_lo``/``_hi`` (two-way bootstrap, see ``interval_resamples``), and
        ``p_within_1pct`` / ``p_within_margin`` (share of replicates whose pick is within
        1% / ``margin`` of the best). Seed columns are NaN with one repeat.
    """
    import pandas as pd

    names = [*domains, MACRO]
    d = len(domains)
    m = proxy_nll.shape[0]
    runs = repeats_nll if repeats_nll is not None else real_nll[None]  # (R, M, n_docs)
    n_runs = runs.shape[0]
    p = target_ppl(proxy_nll, tokens, doc_domain, d)  # (M, T)
    r = target_ppl(real_nll, tokens, doc_domain, d)
    rows = {name: {**decision_metrics(p[:, t], r[:, t]), "n": m} for t, name in enumerate(names)}
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("target")
    frame["n"] = frame["n"].astype(int)
    ones = np.ones((1, len(tokens)))
    proxy_d, runs_d = _domain_nll(proxy_nll, runs, tokens, doc_domain, d, ones)
    point = _replicate_stats(
        proxy_d,
        runs_d,
        np.arange(m)[None],
        np.tile(np.arange(n_runs), (1, m, 1)),
        margin,
    )
    for k in _POINT_ONLY:
        frame[k] = point[k][0]
    frame["pick_ceiling"] = pick_ceiling(runs_d[0], seed=seed)
    intervals = {f"{k}_{s}": np.full(len(names), math.nan) for k in _BOOTSTRAPPED for s in "lh"}
    within = {k: np.full(len(names), math.nan) for k in ("p_within_1pct", "p_within_margin")}
    if replicates > 0 and m >= 2:
        rng = np.random.default_rng(seed)
        mix = rng.integers(0, m, size=(replicates, m))  # (B, M) mixtures drawn
        weights = np.zeros((replicates, len(tokens)))  # (B, n_docs) documents drawn
        for k in range(d):
            idx = np.flatnonzero(doc_domain == k)
            weights[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), replicates)
        labels = rng.permuted(np.tile(np.arange(n_runs), (replicates, m, 1)), axis=2)  # (B, M, R)
        reps = _replicate_stats(
            *_domain_nll(proxy_nll, runs, tokens, doc_domain, d, weights), mix, labels, margin
        )
        alpha = (1 - level) / 2
        for k in _BOOTSTRAPPED:
            for t in range(len(names)):
                ok = reps[k][:, t][np.isfinite(reps[k][:, t])]
                if ok.size:
                    lo, hi = np.quantile(ok, [alpha, 1 - alpha])
                    intervals[f"{k}_l"][t], intervals[f"{k}_h"][t] = lo, hi
        within["p_within_1pct"] = np.mean(_within(reps["regret"], WITHIN), axis=0)
        within["p_within_margin"] = np.mean(_within(reps["regret"], margin), axis=0)
    for k in _BOOTSTRAPPED:
        frame[f"{k}_lo"], frame[f"{k}_hi"] = intervals[f"{k}_l"], intervals[f"{k}_h"]
    for k, v in within.items():
        frame[k] = v
    return frame


def _domain_nll(
    proxy_nll: np.ndarray,
    runs: np.ndarray,
    tokens: np.ndarray,
    doc_domain: np.ndarray,
    d: int,
    weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """NLL per token and domain under each weighting of the documents.

    Args:
        proxy_nll: ``(M, n_docs)``; runs: ``(R, M, n_docs)``; weights: ``(B, n_docs)``.

    Returns:
        The proxy's ``(B, M, D)`` and the runs' ``(B, R, M, D)``.
    """
    n_runs, m, n_docs = runs.shape
    rows = np.concatenate([proxy_nll[None], runs]).reshape(-1, n_docs)  # ((1 + R) M, n_docs)
    out = np.empty((weights.shape[0], rows.shape[0], d))
    # One product per domain: a (n_docs, rows, D) one-hot expansion would not fit for
    # large eval sets (10,000 documents x 100 mixtures x 20 domains: 160 MB per copy).
    for k in range(d):
        idx = np.flatnonzero(doc_domain == k)
        w = weights[:, idx]  # (B, n_k)
        tok = w @ tokens[idx].astype(np.float64)  # (B,)
        tok = np.where(tok > 0, tok, np.nan)  # a resample of only empty documents scores nothing
        out[:, :, k] = (w @ rows[:, idx].T) / tok[:, None]
    out = out.reshape(weights.shape[0], 1 + n_runs, m, d)
    return out[:, 0], out[:, 1:]


def _with_macro(nll: np.ndarray) -> np.ndarray:
    """Perplexity per domain plus ``macro`` (their mean) from NLL per token ``(..., D)``."""
    ppl = np.exp(nll)
    return np.concatenate([ppl, ppl.mean(axis=-1, keepdims=True)], axis=-1)


def _pick_regret(picker: np.ndarray, judge: np.ndarray) -> np.ndarray:
    """``(B,)``: ``judge``'s perplexity of ``picker``'s best mixture over ``judge``'s best,
    minus 1, for perplexities ``(B, M)``."""
    rows = np.arange(picker.shape[0])
    return judge[rows, np.argmin(picker, axis=1)] / judge.min(axis=1) - 1


def _within(regret: np.ndarray, x: float) -> np.ndarray:
    """Whether each pick is within ``x`` of the best (a pick exactly ``x`` off counts, whatever
    the rounding of the ratio)."""
    return regret <= x + 1e-12


def _replicate_stats(
    proxy: np.ndarray, runs: np.ndarray, mix: np.ndarray, labels: np.ndarray, margin: float
) -> dict[str, np.ndarray]:
    """Every bootstrapped statistic, ``(B, T)`` each, for mixtures ``mix`` ``(B, M)`` and
    seed labels ``labels`` ``(B, M, R)`` (the identity for the point estimate).

    Args:
        proxy: NLL per token ``(B, M, D)``; runs: ``(B, R, M, D)`` (``_domain_nll``).
    """

    b, n_runs, m, _ = runs.shape
    p = _with_macro(np.take_along_axis(proxy, mix[:, :, None], axis=1))  # (B, M, T)
    drawn = np.take_along_axis(runs, mix[:, None, :, None], axis=2)  # (B, R, M, D)
    drawn = np.take_along_axis(drawn, labels.transpose(0, 2, 1)[:, :, :, None], axis=1)
    mean = _with_macro(drawn.mean(axis=1))  # (B, M, T): the geometric mean of the runs
    single = _with_macro(drawn)  # (B, R, M, T)
    n_t = p.shape[2]
    out = {k: np.full((b, n_t), math.nan) for k in ("spearman", "spearman_single", "regret")}
    out |= {k: np.full((b, n_t), math.nan) for k in ("seed_spearman", "noise_ceiling")}
    out |= {k: np.full((b, n_t), math.nan) for k in ("regret_single", "seed_regret")}
    out["seed_reliability"] = np.full((b, n_t), math.nan)
    # Leave one seed out: the mean of the other seeds referees both the left-out seed's pick
    # and the proxy's (with two seeds that is the other seed; with more, nearly as steady a
    # referee as the R-seed mean that ``regret`` uses).
    total = drawn.sum(axis=1)  # (B, M, D)
    rest = (
        [_with_macro((total - drawn[:, r]) / (n_runs - 1)) for r in range(n_runs)]
        if n_runs > 1
        else [mean]
    )  # R x (B, M, T)
    for t in range(n_t):
        x, y = p[:, :, t], mean[:, :, t]  # (B, M)
        out["regret"][:, t] = _pick_regret(x, y)
        # like for like with seed_regret: the proxy's pick judged on the seeds left in
        out["regret_single"][:, t] = np.mean([_pick_regret(x, q[:, :, t]) for q in rest], axis=0)
        if n_runs > 1:  # the left-out seed's pick judged the same way: real training's own
            out["seed_regret"][:, t] = np.mean(
                [_pick_regret(single[:, r, :, t], rest[r][:, :, t]) for r in range(n_runs)],
                axis=0,
            )
        if m < 3:  # a rank correlation of two points is undefined
            continue
        out["spearman"][:, t] = batched_spearman(x, y)
        out["spearman_single"][:, t] = np.mean(
            [batched_spearman(x, single[:, r, :, t]) for r in range(n_runs)], axis=0
        )
        if n_runs > 1:
            seeds = np.mean(
                [
                    batched_spearman(single[:, i, :, t], single[:, j, :, t])
                    for i, j in combinations(range(n_runs), 2)
                ],
                axis=0,
            )
            out["seed_spearman"][:, t] = seeds
            finite = np.isfinite(seeds)
            out["noise_ceiling"][finite, t] = noise_ceiling(seeds[finite], n_runs, m)
            out["seed_reliability"][finite, t] = seed_reliability(seeds[finite], n_runs, m)
    return out


__all__ = [
    "MARGIN",
    "TOP_K",
    "WITHIN",
    "decision_metrics",
    "decision_table",
    "expected_spearman",
    "interval_resamples",
    "latent_correlation",
    "noise_ceiling",
    "pick_ceiling",
    "regret",
    "seed_reliability",
    "spearman_brown",
    "target_ppl",
    "top_recall",
]
