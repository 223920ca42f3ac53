"""Regression: fit a surrogate on the mixtures scored so far, score its predicted best.

RegMix (Liu et al., 2024, "RegMix: Data Mixture as Regression for Language Model
Pre-training") fits a regressor from mixture weights to loss on many small runs, then
picks the mixture it predicts best. Here the "small runs" are merges: after a few random
mixtures, each round fits candidate surrogates on (weights over allowed partitions ->
log target perplexity) - ridge regression on the weights, ridge on weights and their
pairwise products (up to 32 partitions), and gradient-boosted trees (scikit-learn) - keeps
the one with the lowest k-fold error on the scored mixtures, predicts every candidate mixture (all subsets
when there are few, otherwise random draws plus perturbations of the best so far) and
scores the best unscored prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ablate.mixture import Mixture
from ablate.strategies.base import SearchContext, Trial, register

_ENUMERATE_UP_TO = 20_000  # subset spaces up to this size are predicted exhaustively
_RANDOM_CANDIDATES = 2048  # random candidates per round otherwise
_LOCAL_CANDIDATES = 512  # perturbations of the best mixture per round (weight spaces)
_LOCAL_CONCENTRATION = 50.0  # Dirichlet concentration around the best: ~+-10% moves
_FOLDS = 4  # k of the k-fold error that picks the surrogate
_RESELECT_GROWTH = 1.25  # re-run the k-fold model choice when the data grew by this factor
_MAX_QUADRATIC_PARTITIONS = 32  # beyond, 496+ pairwise features: the quadratic model is skipped


def _features(x: np.ndarray, kind: str) -> np.ndarray:
    """Model inputs: weights ``(M, n)``, plus pairwise products ``(M, n(n-1)/2)`` if quadratic."""
    if kind != "quadratic":
        return x
    i, j = np.triu_indices(x.shape[1], k=1)
    return np.hstack([x, x[:, i] * x[:, j]])


def _make(kind: str, seed: int):
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge

    if kind == "gbm":
        return GradientBoostingRegressor(
            n_estimators=40, max_depth=2, learning_rate=0.1, random_state=seed
        )
    return Ridge(alpha=1e-3)


MODELS = ("linear", "quadratic", "gbm")


@register("regression")
class Regression:
    """RegMix-style surrogate (linear, quadratic or boosted trees, picked by k-fold error)."""

    def __init__(self, ctx: SearchContext):
        from ablate.strategies.base import require_extra

        require_extra("sklearn", "the regression search strategy")
        self._space = ctx.space
        self._seed = ctx.seed
        self._rng = np.random.default_rng(ctx.seed)
        n = len(ctx.space.allowed)
        self._n_init = max(4, min(n + 1, ctx.budget // 3))
        self._x: list[np.ndarray] = []
        self._y: list[float] = []
        self._proposed: set[str] = set()
        self._best: tuple[float, Mixture] | None = None
        self._pool: list[Mixture] | None = None
        if not ctx.space.continuous and ctx.space.size <= _ENUMERATE_UP_TO:
            self._pool = ctx.space.subsets()
            self._pool_x = np.stack([ctx.space.vector(m) for m in self._pool])  # (S, n)
        self._kind: str | None = None
        self._selected_at = 0
        self.chosen: list[str] = []  # surrogate picked in each round, for reports and tests

    # ------------------------------------------------------------------ candidates
    def _random_unseen(self, n: int) -> list[Mixture]:
        out: list[Mixture] = []
        if self._pool is not None:
            unseen = [m for m in self._pool if m.key not in self._proposed]
            return [unseen[i] for i in self._rng.permutation(len(unseen))[:n]]
        keys: set[str] = set()
        for x in self._space.random_vectors(self._rng, 50 * n):
            m = self._space.from_vector(x)
            if m.key not in self._proposed and m.key not in keys:
                keys.add(m.key)
                out.append(m)
                if len(out) == n:
                    break
        return out

    def _candidates(self) -> np.ndarray:
        """Candidate weight rows ``(C, len(allowed))``: random draws, plus moves near the best."""
        space = self._space
        rows = [space.random_vectors(self._rng, _RANDOM_CANDIDATES)]
        if self._best is not None and space.continuous:
            center = space.vector(self._best[1])
            local = self._rng.dirichlet(_LOCAL_CONCENTRATION * center + 0.1, size=_LOCAL_CANDIDATES)
            rows.append(space.project_rows(local))
        return np.vstack(rows)

    # ------------------------------------------------------------------ surrogate
    def _select(self, x: np.ndarray, y: np.ndarray) -> str:
        """The surrogate kind with the lowest k-fold squared error on the scored mixtures."""
        from sklearn.model_selection import KFold

        folds = KFold(n_splits=min(_FOLDS, len(y)), shuffle=True, random_state=self._seed)
        errors = {}
        # Pairwise products of many partitions (8,128 for 128) outnumber any budget's scored
        # mixtures and dominate the proposal time: the quadratic surrogate sits those out.
        kinds = MODELS if x.shape[1] <= _MAX_QUADRATIC_PARTITIONS else ("linear", "gbm")
        for kind in kinds:
            f = _features(x, kind)
            sq = 0.0
            for train, test in folds.split(f):
                model = _make(kind, self._seed).fit(f[train], y[train])
                sq += float(((model.predict(f[test]) - y[test]) ** 2).sum())
            errors[kind] = sq / len(y)
        return min(kinds, key=lambda k: (errors[k], MODELS.index(k)))

    def _fit(self):
        """Refit the chosen surrogate on all points; re-choose it as the data grows (by 25%, >= 4)."""
        x, y = np.stack(self._x), np.asarray(self._y)  # (M, n), (M,)
        if self._kind is None or len(y) >= max(
            self._selected_at + 4, _RESELECT_GROWTH * self._selected_at
        ):
            self._kind, self._selected_at = self._select(x, y), len(y)
        self.chosen.append(self._kind)
        return self._kind, _make(self._kind, self._seed).fit(_features(x, self._kind), y)

    # ------------------------------------------------------------------ protocol
    def propose(self, n: int) -> list[Mixture]:
        if len(self._y) < self._n_init:
            batch = self._random_unseen(min(n, self._n_init - len(self._y)))
            self._proposed.update(m.key for m in batch)
            return batch
        kind, model = self._fit()
        if self._pool is not None:
            idx = [i for i, m in enumerate(self._pool) if m.key not in self._proposed]
            if not idx:
                return []
            pred = model.predict(_features(self._pool_x[idx], kind))
            best = self._pool[idx[int(np.argmin(pred))]]
        else:
            x = self._candidates()  # (C, n)
            best = None
            for i in np.argsort(model.predict(_features(x, kind)), kind="stable"):
                m = self._space.from_vector(x[i])
                if m.key not in self._proposed:
                    best = m
                    break
            if best is None:
                return []
        self._proposed.add(best.key)
        return [best]

    def observe(self, trials: Sequence[Trial]) -> None:
        for t in trials:
            self._x.append(self._space.vector(t.mixture))
            self._y.append(math.log(t.score) if t.score > 0 and math.isfinite(t.score) else 50.0)
            if self._best is None or t.score < self._best[0]:
                self._best = (t.score, t.mixture)
