"""Regression: fit a surrogate on the mixtures scored so far, score its predicted best.

RegMix (Liu et al., 2024, "RegMix: Data Mixture as Regression for Language Model
Pre-training") fits a regressor from mixture weights to loss on many small runs, then
picks the mixture it predicts best. Here the "small runs" are merges: after a few random
mixtures, each round fits the surrogate family of ``ablate.laws.surrogate`` on (weights
over allowed partitions -> log target perplexity) - ridge on the weights, ridge with
pairwise products, boosted trees, Ye et al.'s exponential law - keeps the one with the
lowest k-fold error, predicts every candidate mixture (all subsets when there are few,
otherwise ``ablate.laws.propose.candidates``: random draws plus perturbations of the best
so far) and scores the best unscored prediction. ``MixtureLaw.fit`` on the same table
gives the same predictions.

Real runs (``search(..., also=RUNS)``) join the proxies with a fidelity indicator feature
(proxies 0, real runs 1; see ``ablate.laws.fidelity``); candidates are then ranked by their
predicted real score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ablate.extras import require_extra
from ablate.laws import surrogate as sg
from ablate.laws.propose import candidates
from ablate.mixture import Mixture
from ablate.strategies.base import SearchContext, Trial, register

_ENUMERATE_UP_TO = 20_000  # subset spaces up to this size are predicted exhaustively
_RESELECT_GROWTH = 1.25  # re-run the k-fold model choice when the data grew by this factor


@register("regression")
class Regression:
    """RegMix-style surrogate (ridge, pairwise ridge, trees or exponential law; lowest k-fold error)."""

    def __init__(self, ctx: SearchContext):

        require_extra("sklearn", "the regression search strategy")
        self._space = ctx.space
        self._seed = ctx.seed
        self._rng = np.random.default_rng(ctx.seed)
        n = len(ctx.space.allowed)
        self._n_init = max(4, min(n + 1, ctx.budget // 3))
        self._x: list[np.ndarray] = []
        self._y: list[float] = []  # raw scores: logged together at each fit, as MixtureLaw does
        self._proposed: set[str] = set()
        self._best: tuple[float, Mixture] | None = None
        self._pool: list[Mixture] | None = None
        if not ctx.space.continuous and ctx.space.size <= _ENUMERATE_UP_TO:
            self._pool = ctx.space.subsets()
            self._pool_x = np.stack([ctx.space.vector(m) for m in self._pool])  # (S, n)
        # real runs (fidelity 1) beside the proxies this search scores (fidelity 0)
        self._real: tuple[np.ndarray, np.ndarray] | None = None
        if ctx.also is not None:
            self._real = (ctx.also.weights, sg.log_scores(ctx.also.targets[ctx.target.spec]))
        self._kind: sg.Kind | None = None
        self._selected_at = 0
        self.surrogate: sg.Surrogate | None = None  # the last fitted one, for reports and tests
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

    # ------------------------------------------------------------------ surrogate
    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``(M, n)`` or, with real runs, ``(M + R, n + 1)`` (a fidelity column) and
        log scores ``(M[+R],)``."""
        x, y = np.stack(self._x), sg.log_scores(self._y)  # (M, n), (M,)
        if self._real is None:
            return x, y
        rx, ry = self._real
        x = np.vstack(
            [np.hstack([x, np.zeros((len(x), 1))]), np.hstack([rx, np.ones((len(rx), 1))])]
        )
        return x, np.concatenate([y, ry])

    def _fit(self) -> sg.Surrogate:
        """Refit the chosen surrogate on all points; re-choose it as the data grows (by 25%, >= 4)."""
        x, y = self._data()
        n = len(self._space.allowed)
        if self._kind is None or len(y) >= max(
            self._selected_at + 4, _RESELECT_GROWTH * self._selected_at
        ):
            self._kind = sg.select(x, y, sg.kinds_for(n), self._seed, n_weights=n).kind
            self._selected_at = len(y)
        self.chosen.append(self._kind)
        self.surrogate = sg.fit(x, y, self._kind, self._seed, n_weights=n)
        return self.surrogate

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The last fitted surrogate's log score for weight rows ``(k, n)`` (at the real
        fidelity when real runs were given)."""
        if self.surrogate is None:
            raise RuntimeError("Regression.predict before the first fit")
        if self._real is not None:
            x = np.hstack([x, np.ones((len(x), 1))])
        return self.surrogate.predict(x)

    # ------------------------------------------------------------------ protocol
    def propose(self, n: int) -> list[Mixture]:
        if len(self._y) < self._n_init:
            batch = self._random_unseen(min(n, self._n_init - len(self._y)))
            self._proposed.update(m.key for m in batch)
            return batch
        self._fit()
        if self._pool is not None:
            idx = [i for i, m in enumerate(self._pool) if m.key not in self._proposed]
            if not idx:
                return []
            pred = self.predict(self._pool_x[idx])
            best = self._pool[idx[int(np.argmin(pred))]]
        else:
            center = None if self._best is None else self._space.vector(self._best[1])
            x = candidates(self._space, self._rng, center)  # (C, n)
            best = None
            for i in np.argsort(self.predict(x), kind="stable"):
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
            self._y.append(float(t.score))
            if self._best is None or t.score < self._best[0]:
                self._best = (t.score, t.mixture)
