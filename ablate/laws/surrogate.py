"""The surrogate family: regressors from mixture weights to a (log) score, one for all callers.

RegMix (Liu et al., 2024, "RegMix: Data Mixture as Regression for Language Model
Pre-training") fits a regressor from mixture weights to loss on many small runs and picks
the mixture it predicts best. The regression search strategy (on merged proxies) and
``MixtureLaw`` (on any table of runs) share these candidates:

* ``linear``    - ridge on the weights;
* ``quadratic`` - ridge on the weights and their pairwise products (up to 32 partitions);
* ``gbm``       - gradient-boosted trees (scikit-learn), RegMix's choice (it uses LightGBM);
* ``exp``       - Ye et al. (2024, "Data Mixing Laws: Optimizing Data Mixtures by Predicting
  Language Modeling Performance"): loss = c + k * exp(t . r), fitted on the log loss as
  ``log(exp(a) + exp(b + t . r))`` (c = e^a >= 0, k = e^b > 0); a monotone law in each weight.

``select`` keeps the one with the lowest k-fold squared error. Scores are fitted on a log
scale (``log_scores``) when they are losses or perplexities. Extra columns (a fidelity
indicator) are appended to the weights, never multiplied into pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ablate.pool.errors import AblateError

Kind = Literal["linear", "quadratic", "gbm", "exp"]
KINDS: tuple[Kind, ...] = ("linear", "quadratic", "gbm", "exp")  # ties go to the earlier one
FOLDS = 4  # k of the k-fold error that picks the surrogate
MAX_QUADRATIC_PARTITIONS = 32  # beyond, 496+ pairwise features: the quadratic model is skipped
FAILED_SCORE_LOG = 50.0  # log score given to a non-finite or non-positive score (never best)
_RIDGE_ALPHA = 1e-3  # a whisper of ridge: weights are collinear (they sum to one)
_EXP_ALPHA = 1e-4  # ridge on the exponential law's exponents, for the same reason


def kinds_for(n_partitions: int, *, log_scale: bool = True) -> tuple[Kind, ...]:
    """The candidates ``auto`` tries: all but ``quadratic`` past 32 partitions (its pairs
    outnumber the runs and dominate the time) and ``exp`` off a log scale (it models a loss)."""
    out: list[Kind] = list(KINDS)
    if n_partitions > MAX_QUADRATIC_PARTITIONS:
        out.remove("quadratic")
    if not log_scale:
        out.remove("exp")
    return tuple(out)


def log_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """``log`` of each score; a failed (non-finite or non-positive) one gets ``FAILED_SCORE_LOG``."""
    s = np.asarray(scores, dtype=float)
    ok = np.isfinite(s) & (s > 0)
    return np.where(ok, np.log(np.where(ok, s, 1.0)), FAILED_SCORE_LOG)


def features(x: np.ndarray, kind: Kind, n_weights: int | None = None) -> np.ndarray:
    """Model inputs ``(M, F)`` from rows ``(M, n)``: the first ``n_weights`` columns are
    weights (default: all), the rest extra columns; ``quadratic`` adds the weights' pairwise
    products ``(M, w(w-1)/2)``."""
    if kind != "quadratic":
        return x
    w = x.shape[1] if n_weights is None else n_weights
    i, j = np.triu_indices(w, k=1)
    return np.hstack([x, x[:, i] * x[:, j]])


class ExpLaw:
    """Ye et al.'s exponential mixing law on a log loss: ``y = log(e^a + e^(b + t . x))``.

    Fitted by bounded-free least squares (scipy) from the ridge solution, where ``a`` is
    far below every ``y`` (the law then starts as the log-linear model it generalises).
    """

    def __init__(self, alpha: float = _EXP_ALPHA):
        self.alpha = alpha
        self.params_: np.ndarray | None = None  # (a, b, t_1..t_F)

    @staticmethod
    def _value(p: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.logaddexp(p[0], p[1] + x @ p[2:])

    def fit(self, x: np.ndarray, y: np.ndarray) -> ExpLaw:
        from scipy.optimize import least_squares
        from sklearn.linear_model import Ridge

        lin = Ridge(alpha=_RIDGE_ALPHA).fit(x, y)
        p0 = np.concatenate([[float(y.min()) - 3.0, float(lin.intercept_)], lin.coef_])
        penalty = math.sqrt(self.alpha)

        def residuals(p: np.ndarray) -> np.ndarray:
            return np.concatenate([self._value(p, x) - y, penalty * p[2:]])

        def jacobian(p: np.ndarray) -> np.ndarray:
            """d residuals / d (a, b, t): ``(M + F, 2 + F)``; analytic, as 128 partitions
            would otherwise cost 130 evaluations per step."""
            z = p[1] + x @ p[2:]  # (M,)
            v = np.logaddexp(p[0], z)
            share = np.exp(z - v)[:, None]  # (M, 1): the k e^(t.x) part of the loss
            top = np.hstack([1.0 - share, share, share * x])  # (M, 2 + F)
            bottom = np.hstack([np.zeros((x.shape[1], 2)), penalty * np.eye(x.shape[1])])
            return np.vstack([top, bottom])

        fit = least_squares(residuals, p0, jac=jacobian, method="trf", max_nfev=200)
        self.params_ = fit.x
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.params_ is None:
            raise RuntimeError("ExpLaw.predict before fit")
        return self._value(self.params_, x)


def make(kind: Kind, seed: int) -> Any:
    """A fresh, unfitted regressor of ``kind`` (scikit-learn interface)."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge

    if kind == "gbm":
        # RegMix-sized: 40 shallow trees fit 50 merges in milliseconds and 512 runs in a second.
        return GradientBoostingRegressor(
            n_estimators=40, max_depth=2, learning_rate=0.1, random_state=seed
        )
    if kind == "exp":
        return ExpLaw()
    return Ridge(alpha=_RIDGE_ALPHA)


@dataclass(frozen=True)
class Surrogate:
    """One fitted candidate: ``predict`` maps rows ``(M, n)`` (weights, then extra columns)
    to the fitted scale (log scores when fitted on ``log_scores``)."""

    kind: Kind
    model: Any
    n_weights: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(features(x, self.kind, self.n_weights)), dtype=float)


def fit(x: np.ndarray, y: np.ndarray, kind: Kind, seed: int, n_weights: int | None = None):
    """``Surrogate`` of ``kind`` fitted on rows ``x (M, n)`` and targets ``y (M,)``.

    Rows are made C-contiguous first: BLAS sums in another order on another layout, and
    the exponential law's optimiser turns that last bit into 1e-11 differences between
    two callers holding the same numbers.
    """
    x, y = np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(y, dtype=float)
    w = x.shape[1] if n_weights is None else n_weights
    return Surrogate(kind, make(kind, seed).fit(features(x, kind, w), y), w)


def _folds(m: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    k = KFold(n_splits=min(FOLDS, m), shuffle=True, random_state=seed)
    return list(k.split(np.zeros((m, 1))))


def out_of_fold(
    x: np.ndarray, y: np.ndarray, kind: Kind, seed: int, n_weights: int | None = None
) -> np.ndarray:
    """Each row's prediction by the ``kind`` fitted on the other folds, ``(M,)``."""
    pred = np.empty(len(y))
    for train, test in _folds(len(y), seed):
        pred[test] = fit(x[train], y[train], kind, seed, n_weights).predict(x[test])
    return pred


@dataclass(frozen=True)
class Selection:
    """What ``select`` found: the chosen kind, each candidate's k-fold mean squared error
    and the chosen one's out-of-fold predictions ``(M,)``."""

    kind: Kind
    errors: dict[str, float]
    oof: np.ndarray = field(repr=False)


def select(
    x: np.ndarray,
    y: np.ndarray,
    kinds: Sequence[Kind],
    seed: int,
    n_weights: int | None = None,
) -> Selection:
    """The kind with the lowest k-fold squared error on ``(x, y)`` (ties: earlier in KINDS)."""
    x, y = np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(y, dtype=float)
    errors: dict[str, float] = {}
    oofs: dict[str, np.ndarray] = {}
    for kind in kinds:
        oofs[kind] = out_of_fold(x, y, kind, seed, n_weights)
        err = float(((oofs[kind] - y) ** 2).mean())
        errors[kind] = err if math.isfinite(err) else math.inf
    best = min(kinds, key=lambda k: (errors[k], KINDS.index(k)))
    return Selection(best, errors, oofs[best])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (NaN when either side is constant)."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b)[0])


def spearman_interval(
    pred: np.ndarray, y: np.ndarray, *, level: float = 0.9, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (over runs) of ``spearman(pred, y)``."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(resamples, len(y)))  # (B, M)
    rp, ry = rankdata(pred[idx], axis=1), rankdata(y[idx], axis=1)  # (B, M) each
    rp -= rp.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    den = np.sqrt((rp**2).sum(1) * (ry**2).sum(1))
    ok = den > 0
    if not ok.any():
        return (math.nan, math.nan)
    rho = (rp * ry).sum(1)[ok] / den[ok]
    tail = (1 - level) / 2
    return (float(np.quantile(rho, tail)), float(np.quantile(rho, 1 - tail)))


FEATURES: dict[str, tuple[Kind, ...]] = {
    "weights": ("linear",),
    "weights+pairs": ("quadratic",),
    "trees": ("gbm",),
    "exp": ("exp",),
}


def candidate_kinds(features: str, n_partitions: int, log_scale: bool) -> tuple[Kind, ...]:
    """The surrogate kinds ``features`` lets ``select`` try."""
    if features == "auto":
        return kinds_for(n_partitions, log_scale=log_scale)
    if features not in FEATURES:
        raise AblateError(
            f"--features {features!r}: choose weights, weights+pairs, trees, exp or auto"
        )
    if features == "exp" and not log_scale:
        raise AblateError(
            "--features exp models a positive loss; it does not fit a higher-is-better target"
        )
    return FEATURES[features]
