"""``MixtureLaw``: a fitted map from mixture weights to a score, from any table of runs.

The evidence about data mixtures comes from many places: RegMix-style swarms of small
runs, the real models ``ablate validate`` trains, merged proxies. A law is fitted on such
a table (``MixtureLaw.fit``) or on a pool's proxies plus its really trained models
(``MixtureLaw.fit_from``, ``ablate.laws.fidelity``). It picks its surrogate from the
family the regression search strategy uses (``ablate.laws.surrogate``) by k-fold error,
reports its cross-validated rank correlation with an interval, predicts mixtures and
proposes the best ones on the (capped) simplex (``ablate.laws.propose``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ablate.extras import require_extra
from ablate.laws import surrogate as sg
from ablate.laws.fidelity import fit_from
from ablate.laws.propose import Constraints
from ablate.laws.propose import propose as _propose
from ablate.laws.table import Runs, check_runs, key_of, parse_mixture, read_runs
from ablate.mixture import Mixture
from ablate.pool.errors import AblateError

if TYPE_CHECKING:
    import pandas as pd

    from ablate.evaluator import Evaluator
    from ablate.laws.fidelity import Fidelity, RealRuns

Features = Literal["weights", "weights+pairs", "trees", "exp", "auto"]
Transform = Literal["log", "none"]
CV_LEVEL = 0.9  # coverage of the cross-validated Spearman's bootstrap interval


@dataclass(frozen=True)
class MixtureLaw:
    """A fitted law: ``predict`` mixtures, ``propose`` the best ones, read its errors.

    Attributes:
        target: The target column (or search target) the law predicts.
        partitions: Weight columns, sorted: the order of weight rows.
        surrogate: The fitted candidate (``surrogate.kind``: linear, quadratic, gbm, exp).
        transform: ``log`` (losses, perplexities: fitted on log scores) or ``none``.
        higher_is_better: The target is an accuracy-like score (propose maximises it).
        kfold_mse: Each candidate tried: k-fold mean squared error on the fitted scale.
        cv_spearman: Spearman of the chosen surrogate's out-of-fold predictions with the runs.
        cv_spearman_interval: Its 90% bootstrap interval over runs.
        runs: Number of runs fitted.
        seed: Seeds the folds, the trees and ``propose``.
        fidelity: With ``fit_from``: how real runs enter and the leave-one-out comparison.
    """

    target: str
    partitions: tuple[str, ...]
    surrogate: sg.Surrogate
    transform: Transform
    higher_is_better: bool
    kfold_mse: Mapping[str, float]
    cv_spearman: float
    cv_spearman_interval: tuple[float, float]
    runs: int
    seed: int = 0
    fidelity: Fidelity | None = None
    run_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        runs: Any,
        target: str,
        weights: Sequence[str] | None = None,
        *,
        features: Features = "auto",
        higher_is_better: bool = False,
        partitions: Sequence[str] | None = None,
        seed: int = 0,
    ) -> MixtureLaw:
        """Fit a law of ``target`` on a runs table.

        Args:
            runs: A ``Runs``, a DataFrame, a CSV/Parquet path or several (joined).
            target: The column to predict.
            weights: Weight columns or glob patterns (default: see ``read_runs``).
            features: ``auto`` (the lowest k-fold error), or one candidate: ``weights``
                (ridge), ``weights+pairs`` (ridge with pairwise products), ``trees``
                (boosted trees), ``exp`` (Ye et al.'s exponential law).
            higher_is_better: The target is maximised (accuracy); else minimised (loss).
            partitions: A pool's partitions: weight columns outside them are refused.
            seed: Seeds the folds and the trees.
        """

        require_extra("sklearn", "fitting a mixture law")
        if not isinstance(runs, Runs):
            runs = read_runs(runs, [target], weights=weights, partitions=partitions)
        check_runs(runs, target)
        y_raw = runs.targets[target]
        transform: Transform = "log" if not higher_is_better and (y_raw > 0).all() else "none"
        y = sg.log_scores(y_raw) if transform == "log" else y_raw
        kinds = sg.candidate_kinds(features, len(runs.partitions), transform == "log")
        sel = sg.select(runs.weights, y, kinds, seed)
        return cls(
            target=target,
            partitions=runs.partitions,
            surrogate=sg.fit(runs.weights, y, sel.kind, seed),
            transform=transform,
            higher_is_better=higher_is_better,
            kfold_mse=sel.errors,
            cv_spearman=sg.spearman(sel.oof, y),
            cv_spearman_interval=sg.spearman_interval(sel.oof, y, level=CV_LEVEL, seed=seed),
            runs=len(runs),
            seed=seed,
            run_weights=runs.weights,
        )

    @classmethod
    def fit_from(
        cls,
        evaluator: Evaluator,
        report: RealRuns,
        *,
        target: str = "macro",
        proxies: Iterable[Mixture | str] | None = None,
        method: Literal["auto", "indicator", "offset"] = "auto",
        features: Features = "auto",
        seed: int = 0,
    ) -> MixtureLaw:
        """One law from a pool's merged proxies and the real models of ``report``.

        See ``ablate.laws.fidelity.fit_from``: the real runs enter as a fidelity indicator
        feature or as an additive correction of the proxies' law, whichever has the lower
        leave-one-out error on the real runs (``method="auto"``); ``law.fidelity.comparison``
        holds real alone vs proxies alone vs both.
        """

        return fit_from(
            cls,
            evaluator,
            report,
            target=target,
            proxies=proxies,
            method=method,
            features=features,
            seed=seed,
        )

    # ------------------------------------------------------------------ reading
    @property
    def cv_error(self) -> float:
        """k-fold root mean squared error of the chosen surrogate, on the fitted scale (log:
        about the relative error of a predicted loss)."""
        return math.sqrt(self.kfold_mse[self.surrogate.kind])

    def rows(self, mixtures: Any, weights: Sequence[str] | None = None) -> np.ndarray:
        """Weight rows ``(M, len(partitions))`` of ``mixtures``: a ``Runs``, a table (path,
        DataFrame), an array already in ``partitions`` order, or mixtures (``Mixture``,
        notation strings, ``{partition: weight}``)."""
        import pandas as pd

        if isinstance(mixtures, Runs):
            return read_runs_onto(mixtures, self.partitions)
        if isinstance(mixtures, np.ndarray):
            x = np.atleast_2d(np.asarray(mixtures, dtype=float))
            if x.shape[1] != len(self.partitions):
                raise AblateError(
                    f"weight rows have {x.shape[1]} columns; the law has {len(self.partitions)} "
                    f"partitions ({', '.join(self.partitions)})"
                )
            return x
        if isinstance(mixtures, Path):
            mixtures = str(mixtures)
        if isinstance(mixtures, pd.DataFrame | str) and not _is_mixture_text(mixtures):
            runs = read_runs(
                mixtures,
                [self.target],
                weights=weights,
                partitions=self.partitions,
                need_targets=False,
            )
            return runs.weights
        items = [mixtures] if isinstance(mixtures, Mixture | Mapping | str) else list(mixtures)
        x = np.zeros((len(items), len(self.partitions)))
        for i, m in enumerate(items):
            if isinstance(m, str):
                m = parse_mixture(m)
            elif isinstance(m, Mapping):
                m = Mixture.of(m)
            m.check(self.partitions)
            for name, w in m.weights:
                x[i, self.partitions.index(name)] = w
        return x

    def predict(self, mixtures: Any, weights: Sequence[str] | None = None) -> np.ndarray:
        """Predicted target ``(M,)`` in the target's units (see ``rows`` for the inputs)."""
        fitted = self.predict_fitted(self.rows(mixtures, weights))
        return np.exp(fitted) if self.transform == "log" else fitted

    def holdout(self, runs: Any, weights: Sequence[str] | None = None) -> dict:
        """How the law ranks held-out runs that carry the target (RegMix's 1B runs):
        ``n``, ``spearman`` of predictions with the real values, ``pick`` (row, 1-based, of
        the predicted best), ``pick_rank`` (its real rank, 1 = the real best) and ``regret``
        (its real value's relative shortfall against the real best).
        """
        if not isinstance(runs, Runs):
            runs = read_runs(runs, [self.target], weights=weights, partitions=self.partitions)
        if self.target not in runs.targets:
            raise AblateError(f"{runs.source} has no {self.target!r} column to check against")
        y = runs.targets[self.target]
        pred = self.predict(runs)
        sign = -1.0 if self.higher_is_better else 1.0
        pick = int(np.argmin(sign * pred))
        best = float(y[int(np.argmin(sign * y))])
        return {
            "n": len(y),
            "spearman": _num(sg.spearman(pred, y)),
            "pick": pick + 1,
            "pick_rank": int((sign * y < sign * y[pick]).sum()) + 1,
            "regret": _num(abs(float(y[pick]) - best) / abs(best)) if best else None,
        }

    def predict_fitted(self, x: np.ndarray) -> np.ndarray:
        """Predictions on the fitted scale for weight rows ``x (M, n)`` (at the real
        fidelity for a multi-fidelity law)."""
        if self.fidelity is not None:
            return self.fidelity.predict(self.surrogate, x)
        return self.surrogate.predict(x)

    def propose(
        self, n: int = 1, constraints: Constraints | Mapping[str, float] | None = None
    ) -> pd.DataFrame:
        """The ``n`` best distinct mixtures the law predicts, with per-partition caps.

        Args:
            n: How many (each at least 0.1 apart in L1 from the better ones).
            constraints: ``Constraints`` or ``{partition: max weight}``.

        Returns:
            ``rank``, ``mixture`` (ablate's notation), ``predicted`` and one weight column per
            partition, best first.
        """
        import pandas as pd

        if constraints is not None and not isinstance(constraints, Constraints):
            constraints = Constraints(dict(constraints))
        sign = -1.0 if self.higher_is_better else 1.0
        x, _ = _propose(
            lambda rows: sign * self.predict_fitted(rows),
            self.partitions,
            n,
            constraints,
            seed=self.seed,
            extra=[self.run_weights] if self.run_weights.size else (),
        )
        pred = self.predict(x)
        out = pd.DataFrame(x, columns=list(self.partitions))
        out.insert(0, "predicted", pred)
        out.insert(0, "mixture", [key_of(self.partitions, r) for r in x])
        out.insert(0, "rank", np.arange(1, len(x) + 1))
        return out

    def to_json(self) -> dict:
        """The law's record for ``--json``: target, surrogate, errors, intervals."""
        lo, hi = self.cv_spearman_interval
        doc = {
            "target": self.target,
            "surrogate": self.surrogate.kind,
            "transform": self.transform,
            "higher_is_better": self.higher_is_better,
            "runs": self.runs,
            "partitions": list(self.partitions),
            "cv_error": _num(self.cv_error),
            "kfold_mse": {k: _num(v) for k, v in self.kfold_mse.items()},
            "cv_spearman": _num(self.cv_spearman),
            "cv_spearman_interval": [_num(lo), _num(hi)],
        }
        if self.fidelity is not None:
            doc["fidelity"] = self.fidelity.to_json()
        return doc


def read_runs_onto(runs: Runs, partitions: tuple[str, ...]) -> np.ndarray:
    """``runs``'s weight rows over ``partitions`` (a column outside them is refused)."""
    unknown = [p for p in runs.partitions if p not in partitions]
    if unknown:
        raise AblateError(
            f"{runs.source} weighs partition(s) {', '.join(unknown)} the law does not know; "
            f"it knows: {', '.join(partitions)}"
        )
    out = np.zeros((len(runs), len(partitions)))
    for j, p in enumerate(runs.partitions):
        out[:, partitions.index(p)] = runs.weights[:, j]
    return out


def _is_mixture_text(x: Any) -> bool:
    """A string that is a mixture (``a=0.5,b=0.5``), not a path to a table."""
    return isinstance(x, str) and not x.lower().endswith((".csv", ".tsv", ".parquet", ".pq"))


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
