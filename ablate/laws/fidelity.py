"""Multi-fidelity laws: merged proxies and really trained models in one law.

Proxies are cheap and many (every subset of a small pool), real runs are few and costly
(``ablate validate``), and the two differ by a gap that is mostly a shift of the log
perplexity. Two ways to join them, both on the shared surrogate family:

* ``indicator`` - one surrogate on ``[weights, is_real]``: proxies at 0, real runs at 1;
  predictions are made at 1 (multi-fidelity regression with a fidelity feature).
* ``offset``    - the proxies' law plus an additive correction: the mean residual of the
  real runs' log scores against it (Kennedy and O'Hagan's autoregressive scheme with a
  constant discrepancy, the most a handful of real runs can support).

Both are scored by leave-one-out error on the real runs, beside the law on the real runs
alone and the proxies' law alone (no real run seen, so its error includes the gap).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from ablate.extras import require_extra
from ablate.laws import surrogate as sg
from ablate.laws.table import Runs, RunsTableError, load_frame, read_runs
from ablate.mixture import Mixture
from ablate.objective import Target, task_term
from ablate.pool.errors import AblateError

if TYPE_CHECKING:
    import pandas as pd

    from ablate.evaluator import Evaluator

Method = Literal["indicator", "offset"]
MAX_DEFAULT_PROXIES = 1023  # every subset of up to 10 partitions; above, pass proxies=
VARIANTS = ("real alone", "proxies alone", "both: indicator", "both: offset")


class RealRuns(Protocol):
    """What a law reads of a ``ValidationReport`` (a protocol: validation sits above the laws)."""

    records: Sequence[Any]  # one per really trained model, mixtures first
    mixtures: int  # how many distinct mixtures lead ``records``
    pairs: Any  # DataFrame: one row per mixture x target, proxy and real values


@dataclass(frozen=True)
class Fidelity:
    """How a multi-fidelity law joins proxies and real runs, and how well each way does.

    Attributes:
        method: ``indicator`` or ``offset`` (module docstring).
        offset: The additive correction on the fitted (log) scale (0 for ``indicator``).
        comparison: Index ``VARIANTS``; columns ``loo_rmse`` (leave-one-out RMSE of the
            log score on the real runs; "proxies alone" never saw them), ``loo_spearman``
            (of those predictions with the real scores), ``real``, ``proxies`` (runs used).
        real: Real runs.
        proxies: Proxy runs.
    """

    method: Method
    offset: float
    comparison: pd.DataFrame
    real: int
    proxies: int

    def predict(self, surrogate: sg.Surrogate, x: np.ndarray) -> np.ndarray:
        """Fitted-scale predictions at the real fidelity for weight rows ``(M, n)``."""
        if self.method == "indicator":
            return surrogate.predict(np.hstack([x, np.ones((len(x), 1))]))
        return surrogate.predict(x) + self.offset

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "offset": self.offset,
            "real": self.real,
            "proxies": self.proxies,
            "comparison": [
                {
                    "variant": str(v),
                    **{k: (None if not math.isfinite(r[k]) else float(r[k])) for k in r.index},
                }
                for v, r in self.comparison.iterrows()
            ],
        }


def real_runs(report: RealRuns, target: Any) -> tuple[list[Mixture], np.ndarray, np.ndarray]:
    """The report's mixtures with their real and proxy target scores ``(R,)`` each."""
    mixtures = [Mixture(tuple(r.mixture)) for r in report.records[: report.mixtures]]
    real, proxy = [], []
    for m in mixtures:
        rows = report.pairs[report.pairs["mixture"] == str(m)]
        if rows.empty:
            raise AblateError(f"the validation report has no scores for mixture {m}")
        real.append(target.score(dict(zip(rows["domain"], rows["real"], strict=True))))
        proxy.append(target.score(dict(zip(rows["domain"], rows["proxy"], strict=True))))
    return mixtures, np.array(real), np.array(proxy)


def _rows(mixtures: list[Mixture], partitions: tuple[str, ...]) -> np.ndarray:
    x = np.zeros((len(mixtures), len(partitions)))
    for i, m in enumerate(mixtures):
        for name, w in m.weights:
            x[i, partitions.index(name)] = w
    return x


def fit_from(
    cls: type,
    ev: Evaluator,
    report: RealRuns,
    *,
    target: str = "macro",
    proxies: Iterable[Mixture | str] | None = None,
    method: Literal["auto", "indicator", "offset"] = "auto",
    features: str = "auto",
    seed: int = 0,
) -> Any:
    """``MixtureLaw.fit_from``: proxies of ``ev``'s pool plus ``report``'s real models.

    Args:
        cls: ``MixtureLaw``.
        ev: The evaluator of the pool the report validated (scores come from its store).
        report: ``ablate.validate``'s report: its real models and their proxies.
        target: A search target over eval domains (``macro``, ``code``, ``weighted:...``).
        proxies: Mixtures to score as proxies (default: every subset of the pool, up to
            1,023); the report's own mixtures' proxies are always added.
        method: ``indicator``, ``offset`` or ``auto`` (the lower leave-one-out RMSE).
        features: The surrogate candidates (``MixtureLaw.fit``).
        seed: Seeds folds and trees.
    """
    import pandas as pd

    # Lazy: ablate.strategies' face imports the regression strategy, which imports this package.
    from ablate.strategies.space import SearchSpace

    require_extra("sklearn", "fitting a mixture law")
    t = Target.parse(target)
    if any(task_term(d) is not None for d, _ in t.weights or ()):
        raise AblateError("fit_from reads eval-domain perplexities; a task: target is not one")
    parts = tuple(sorted(ev.partitions))
    mixtures_r, y_real, y_proxy_r = real_runs(report, t)
    if len(mixtures_r) < 3:
        raise AblateError(
            f"the report has {len(mixtures_r)} real model(s); a leave-one-out comparison "
            "needs at least 3 (validate more mixtures)"
        )
    if proxies is None:
        space = SearchSpace(tuple(ev.partitions))
        if space.size > MAX_DEFAULT_PROXIES:
            raise AblateError(
                f"the pool has {space.size:,} subsets; pass proxies= (the mixtures to score)"
            )
        proxy_mixtures = space.subsets()
    else:
        proxy_mixtures = [m if isinstance(m, Mixture) else Mixture.parse(m) for m in proxies]
    own = {m.key for m in mixtures_r}
    proxy_mixtures = [m for m in proxy_mixtures if m.key not in own]
    results = ev.run_many(proxy_mixtures, progress=False) if proxy_mixtures else []
    scores = {r.mixture.key: t.score(r.ppl, r.tasks) for r in results}
    y_p = np.concatenate([[scores[m.key] for m in proxy_mixtures], y_proxy_r])
    x_p = np.vstack([_rows(proxy_mixtures, parts), _rows(mixtures_r, parts)])  # (P, n)
    x_r = _rows(mixtures_r, parts)  # (R, n)
    ly_p, ly_r = sg.log_scores(y_p), sg.log_scores(y_real)
    kinds = sg.candidate_kinds(features, len(parts), True)
    n = len(parts)

    # proxies alone: one law, never shown a real run
    sel_p = sg.select(x_p, ly_p, kinds, seed)
    proxy_law = sg.fit(x_p, ly_p, sel_p.kind, seed)
    pred_p = proxy_law.predict(x_r)  # (R,)
    # both, indicator: proxies at 0, real runs at 1; the kind is chosen once on all runs
    xi = np.vstack(
        [np.hstack([x_p, np.zeros((len(x_p), 1))]), np.hstack([x_r, np.ones((len(x_r), 1))])]
    )
    yi = np.concatenate([ly_p, ly_r])
    sel_i = sg.select(xi, yi, kinds, seed, n_weights=n)
    loo: dict[str, np.ndarray] = {v: np.full(len(x_r), math.nan) for v in VARIANTS}
    loo["proxies alone"] = pred_p
    resid = ly_r - pred_p
    for i in range(len(x_r)):
        keep = np.arange(len(x_r)) != i
        if keep.sum() >= 2:
            sel = sg.select(x_r[keep], ly_r[keep], kinds, seed)
            real_law = sg.fit(x_r[keep], ly_r[keep], sel.kind, seed)
            loo["real alone"][i] = real_law.predict(x_r[i : i + 1])[0]
        rows = np.concatenate([np.ones(len(x_p), bool), keep])
        law_i = sg.fit(xi[rows], yi[rows], sel_i.kind, seed, n_weights=n)
        loo["both: indicator"][i] = law_i.predict(xi[len(x_p) + i : len(x_p) + i + 1])[0]
        loo["both: offset"][i] = pred_p[i] + resid[keep].mean()
    comparison = pd.DataFrame(
        {
            "loo_rmse": [float(np.sqrt(np.mean((loo[v] - ly_r) ** 2))) for v in VARIANTS],
            "loo_spearman": [sg.spearman(loo[v], ly_r) for v in VARIANTS],
            "real": [len(x_r) - 1, 0, len(x_r) - 1, len(x_r) - 1],
            "proxies": [0, len(x_p), len(x_p), len(x_p)],
        },
        index=pd.Index(VARIANTS, name="variant"),
    )
    if method == "auto":
        method = min(
            ("indicator", "offset"), key=lambda m: comparison.loc[f"both: {m}", "loo_rmse"]
        )
    if method == "indicator":
        surrogate, sel, offset = sg.fit(xi, yi, sel_i.kind, seed, n_weights=n), sel_i, 0.0
        y_cv = yi
    elif method == "offset":
        surrogate, sel, offset = proxy_law, sel_p, float(resid.mean())
        y_cv = ly_p
    else:
        raise AblateError(f"method {method!r}: choose indicator, offset or auto")
    fidelity = Fidelity(method, offset, comparison, len(x_r), len(x_p))
    return cls(
        target=t.spec,
        partitions=parts,
        surrogate=surrogate,
        transform="log",
        higher_is_better=False,
        kfold_mse=sel.errors,
        cv_spearman=sg.spearman(sel.oof, y_cv),
        cv_spearman_interval=sg.spearman_interval(sel.oof, y_cv, seed=seed),
        runs=len(x_p) + len(x_r),
        seed=seed,
        fidelity=fidelity,
        run_weights=np.vstack([x_p, x_r]),
    )


def target_runs(source: Any, target: Any, allowed: tuple[str, ...], domains: Iterable[str]) -> Any:
    """Real runs for a search (``search(..., also=...)``): ``Runs`` over ``allowed`` with
    the ``target``'s score under ``targets[target.spec]``.

    The table has a ``mixture`` column (or weight columns) and either a column named as the
    target (``macro``, ``code``) or one perplexity column per eval domain the target reads;
    ``ablate validate``'s ``validation.csv`` (``mixture, domain, proxy, real``) is read as
    its ``real`` column per domain.
    """

    frame = load_frame(source)
    if hasattr(source, "columns"):
        where = "the --also DataFrame"
    elif isinstance(source, str | bytes) or not isinstance(source, Iterable):
        where = str(source)
    else:
        where = " + ".join(str(s) for s in source)
    if {"mixture", "domain", "real"} <= set(frame.columns):  # validation.csv: long format
        frame = frame.pivot_table(index="mixture", columns="domain", values="real").reset_index()
        frame.columns = [str(c) for c in frame.columns]
    domains = list(domains)
    if target.spec in frame.columns:
        need = [target.spec]
    else:
        need = domains if target.weights is None else [d for d, _ in target.weights]
        missing = [d for d in need if d not in frame.columns]
        if missing:
            raise RunsTableError(
                f"--also {where}: no column {target.spec!r} and no perplexity column for eval "
                f"domain(s) {', '.join(missing)}; add a column named {target.spec} or one per domain"
            )
    scored = [c for c in frame.columns if c in set(need) | set(domains)]
    runs = read_runs(frame, scored, partitions=None)
    outside = [p for p in runs.partitions if p not in allowed]
    if outside:
        raise RunsTableError(
            f"--also {where} weighs partition(s) {', '.join(outside)} that the search may not "
            f"use (unknown, or --exclude'd); it may use: {', '.join(allowed)}"
        )
    x = np.zeros((len(runs), len(allowed)))
    for j, p in enumerate(runs.partitions):
        x[:, allowed.index(p)] = runs.weights[:, j]
    if need == [target.spec]:
        y = runs.targets[target.spec]
    else:
        y = np.array(
            [target.score({d: float(runs.targets[d][i]) for d in need}) for i in range(len(runs))]
        )

    return Runs(tuple(allowed), x, {target.spec: y}, where)
