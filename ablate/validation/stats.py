"""Agreement between proxy (merged) and real (trained) perplexity, with uncertainty.

Na et al. (EMNLP 2024) report Pearson and Spearman correlation between the perplexity of a
parameter-averaged proxy and that of a model trained on the same mixture, per eval domain.
Here: Pearson, Spearman and Kendall tau-b point estimates (scipy), percentile bootstrap
intervals over mixtures and eval documents (both redrawn, documents within each domain,
every statistic recomputed: the two-way bootstrap of ``ablate.validation.decisions``), and a calibration map from proxy to real perplexity with leave-one-out error
and prediction intervals. The batched correlations below exist for the bootstrap and are
tested against scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

POOLED = "pooled"
_KENDALL_ELEMENTS = 1 << 22  # elements per (b, n, n) sign tensor: ~32 MiB of float64 at a time


# ---------------------------------------------------------------------- correlations
def correlations(proxy: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman and Kendall (tau-b) of two ``(n,)`` vectors (NaN when undefined)."""
    from scipy import stats

    x, y = np.asarray(proxy, dtype=np.float64), np.asarray(real, dtype=np.float64)
    n = len(x)
    out = {"pearson": math.nan, "spearman": math.nan, "kendall": math.nan, "n": n}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:  # fewer than 3 points or a constant: undefined
        return out
    out["pearson"] = float(stats.pearsonr(x, y).statistic)
    out["spearman"] = float(stats.spearmanr(x, y).statistic)
    out["kendall"] = float(stats.kendalltau(x, y).statistic)
    return out


def batched_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair: ``x``, ``y`` float ``(B, n)`` -> ``(B,)`` (NaN if constant)."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(1) / den
    r[den == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def batched_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (Pearson of average ranks), ``(B, n)`` -> ``(B,)``."""
    from scipy.stats import rankdata

    return batched_pearson(rankdata(x, axis=1), rankdata(y, axis=1))


def batched_kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row pair (ties handled as scipy does), ``(B, n)`` -> ``(B,)``."""
    out = np.empty(x.shape[0])
    iu = np.triu_indices(x.shape[1], k=1)
    chunk = max(1, _KENDALL_ELEMENTS // max(1, x.shape[1] ** 2))
    for s in range(0, x.shape[0], chunk):
        xs, ys = x[s : s + chunk], y[s : s + chunk]
        dx = np.sign(xs[:, :, None] - xs[:, None, :])[:, iu[0], iu[1]]  # (b, n(n-1)/2)
        dy = np.sign(ys[:, :, None] - ys[:, None, :])[:, iu[0], iu[1]]
        num = (dx * dy).sum(1)
        den = np.sqrt((dx != 0).sum(1) * (dy != 0).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + chunk] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out


_BATCHED = {"pearson": batched_pearson, "spearman": batched_spearman, "kendall": batched_kendall}


# ---------------------------------------------------------------------- bootstrap
def bootstrap_correlations(
    proxy_nll: np.ndarray,
    real_nll: np.ndarray,
    tokens: np.ndarray,
    doc_domain: np.ndarray,
    domains: tuple[str, ...],
    *,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    mixtures: bool = True,
) -> pd.DataFrame:
    """Percentile bootstrap intervals of the correlations, resampling mixtures and documents.

    Args:
        proxy_nll: Summed NLL per mixture and document, float ``(M, n_docs)``.
        real_nll: The same for the really trained models, ``(M, n_docs)``.
        tokens: Scored tokens per document, int ``(n_docs,)`` (same for proxy and real).
        doc_domain: Domain index of each document, int ``(n_docs,)``.
        domains: Domain names, indexed by ``doc_domain``.
        replicates: Bootstrap resamples (documents drawn with replacement within a domain).
        level: Two-sided interval coverage.
        seed: Seed of the resampling.
        mixtures: Also redraw the mixtures (with replacement, the same draw for every
            domain); False gives the interval conditional on these mixtures and models.

    Returns:
        One row per domain plus ``pooled``, columns ``<stat>_lo`` / ``<stat>_hi``.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    m = proxy_nll.shape[0]
    proxy_ppl, real_ppl = [], []  # per domain: (R, M)
    for d in range(len(domains)):
        idx = np.flatnonzero(doc_domain == d)
        counts = rng.multinomial(
            len(idx), np.full(len(idx), 1 / len(idx)), size=replicates
        )  # (R, n_d)
        tok = counts @ tokens[idx].astype(np.float64)  # (R,)
        tok = np.where(tok > 0, tok, np.nan)  # a resample of only empty documents scores nothing
        proxy_ppl.append(np.exp(counts @ proxy_nll[:, idx].T / tok[:, None]))  # (R, M)
        real_ppl.append(np.exp(counts @ real_nll[:, idx].T / tok[:, None]))
    if mixtures:
        drawn = rng.integers(0, m, size=(replicates, m))  # (R, M), shared by the domains
        proxy_ppl = [np.take_along_axis(x, drawn, axis=1) for x in proxy_ppl]
        real_ppl = [np.take_along_axis(x, drawn, axis=1) for x in real_ppl]
    alpha = (1 - level) / 2
    rows = {}
    groups = [(name, [d]) for d, name in enumerate(domains)] + [(POOLED, list(range(len(domains))))]
    for name, ds in groups:
        x = np.concatenate([proxy_ppl[d] for d in ds], axis=1)  # (R, M * len(ds))
        y = np.concatenate([real_ppl[d] for d in ds], axis=1)
        row = {}
        for stat, fn in _BATCHED.items():
            vals = fn(x, y) if m * len(ds) >= 3 else np.full(replicates, np.nan)
            ok = vals[np.isfinite(vals)]
            lo, hi = np.quantile(ok, [alpha, 1 - alpha]) if ok.size else (math.nan, math.nan)
            row[f"{stat}_lo"], row[f"{stat}_hi"] = float(lo), float(hi)
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("domain")


# ---------------------------------------------------------------------- calibration
CalibrationKind = Literal["linear", "isotonic"]


@dataclass(frozen=True)
class Calibration:
    """A map from proxy to real perplexity, fitted on validated mixtures.

    ``linear`` fits log(real) = a + b log(proxy) by least squares, with the classical
    t-based prediction interval; ``isotonic`` fits a non-decreasing step map (scipy) whose
    interval comes from the leave-one-out residuals' quantiles. Both report the
    leave-one-out error of predicting each validated pair from all the others.
    """

    kind: CalibrationKind
    domain: str
    proxy: np.ndarray  # (n,) fitted proxy perplexities
    real: np.ndarray  # (n,) their real perplexities
    level: float = 0.9
    loo_real: np.ndarray = field(init=False)  # (n,) leave-one-out predictions

    def __post_init__(self) -> None:
        if len(self.proxy) < 3:
            raise ValueError(f"calibration needs at least 3 validated pairs, got {len(self.proxy)}")
        if self.kind not in ("linear", "isotonic"):
            raise ValueError(f"calibration kind must be 'linear' or 'isotonic', got {self.kind!r}")
        keep = np.ones(len(self.proxy), dtype=bool)
        loo = np.empty(len(self.proxy))
        for i in range(len(self.proxy)):
            keep[i] = False
            loo[i] = np.exp(
                _fit_predict(
                    self.kind,
                    np.log(self.proxy[keep]),
                    np.log(self.real[keep]),
                    np.log(self.proxy[i : i + 1]),
                )[0]
            )
            keep[i] = True
        object.__setattr__(self, "loo_real", loo)

    @property
    def loo_rmse(self) -> float:
        """Root mean squared leave-one-out error, in perplexity."""
        return float(np.sqrt(np.mean((self.loo_real - self.real) ** 2)))

    @property
    def loo_mape(self) -> float:
        """Mean absolute leave-one-out error, as a fraction of real perplexity."""
        return float(np.mean(np.abs(self.loo_real - self.real) / self.real))

    @property
    def raw_mape(self) -> float:
        """The same error for the uncalibrated proxy (real ~ proxy), for comparison."""
        return float(np.mean(np.abs(self.proxy - self.real) / self.real))

    def predict(self, proxy: float | np.ndarray) -> pd.DataFrame:
        """Predicted real perplexity with a ``level`` prediction interval (lo, hi)."""
        import pandas as pd
        from scipy import stats

        p = np.atleast_1d(np.asarray(proxy, dtype=np.float64))
        x, y, x0 = np.log(self.proxy), np.log(self.real), np.log(p)
        mid = _fit_predict(self.kind, x, y, x0)
        alpha = (1 - self.level) / 2
        if self.kind == "linear":
            n = len(x)
            slope, intercept = np.polyfit(x, y, 1)
            s = np.sqrt(np.sum((y - (intercept + slope * x)) ** 2) / (n - 2))
            sxx = np.sum((x - x.mean()) ** 2)
            half = (
                stats.t.ppf(1 - alpha, n - 2) * s * np.sqrt(1 + 1 / n + (x0 - x.mean()) ** 2 / sxx)
            )
            lo, hi = mid - half, mid + half
        else:  # conformal-style: quantiles of the leave-one-out residuals (log space)
            resid = y - np.log(self.loo_real)
            lo = mid + np.quantile(resid, alpha)
            hi = mid + np.quantile(resid, 1 - alpha)
        return pd.DataFrame({"proxy": p, "real": np.exp(mid), "lo": np.exp(lo), "hi": np.exp(hi)})

    def describe(self) -> str:
        return (
            f"{self.kind} calibration on {len(self.proxy)} pairs ({self.domain}): leave-one-out error "
            f"{100 * self.loo_mape:.2f}% (uncalibrated proxy: {100 * self.raw_mape:.2f}%), "
            f"RMSE {self.loo_rmse:.3f} ppl; {100 * self.level:.0f}% prediction intervals"
        )


def _fit_predict(kind: CalibrationKind, x: np.ndarray, y: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Fit y ~ x (log perplexities) on the given points and predict at ``x0``."""
    if kind == "linear":
        if np.ptp(x) == 0:
            return np.full(len(x0), y.mean())
        slope, intercept = np.polyfit(x, y, 1)
        return intercept + slope * x0
    from scipy.optimize import isotonic_regression

    order = np.argsort(x, kind="stable")
    fitted = isotonic_regression(y[order]).x
    return np.interp(x0, x[order], fitted)  # flat beyond the fitted range
