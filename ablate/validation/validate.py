"""``validate``: train real models on mixtures and measure how well the simulator predicts them.

Na et al. (EMNLP 2024), section 4: for a sample of mixtures, the perplexity of the
parameter average of the mixture's unit models (the proxy) is compared with the
perplexity of a model continued from the same seed, with the same recipe, on the union of
those units (k units of tokens for k units). Real models are stored in the pool and reused,
so a validation can be extended later without retraining anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ablate.engine.merges import merge_method
from ablate.engine.scoring import MACRO, DocScores
from ablate.mixture import Mixture, MixtureError
from ablate.validation.decisions import decision_table
from ablate.validation.models import Budget
from ablate.validation.report import ValidationReport, gap_table
from ablate.validation.sampling import WeightSampler
from ablate.validation.stats import POOLED, bootstrap_correlations, correlations

if TYPE_CHECKING:
    from ablate.evaluator import Evaluator, MixtureLike
    from ablate.validation.models import ValidationRecord

log = logging.getLogger(__name__)


def validate(
    ev: Evaluator,
    *,
    mixtures: Iterable[MixtureLike] | None = None,
    sample: int | None = None,
    sizes: Iterable[int] = (2, 3, 4),
    weights: str | WeightSampler = "subsets",
    budget: Budget = "proportional",
    budget_tokens: int | None = None,
    repeats: int = 1,
    check_search: str | None = None,
    search_targets: Sequence[str] = (MACRO,),
    search_budget: int | None = None,
    extrapolate: float | str = 1.0,
    seed: int = 0,
    bootstrap: int = 1000,
    level: float = 0.95,
    progress: bool | None = None,
    device: str | None = None,
) -> ValidationReport:
    """Train (or reuse) real models for mixtures, score them and their proxies, compare.

    Args:
        ev: The evaluator: its pool, eval set and domains define the comparison.
        mixtures: Mixtures to validate (names, ``"a,b"``, ``{"a": 1, "b": 3}``, Mixture).
        sample: Instead of ``mixtures``: validate this many sampled mixtures.
        sizes: Subset sizes to sample from (``weights="subsets"``).
        weights: ``"subsets"`` (uniform subsets) or ``"dirichlet[:ALPHA]"`` (weight vectors).
        budget: ``"proportional"`` (Na et al.: k units of tokens for k units) or ``"fixed"``
            (every real model trains on ``budget_tokens``, split exactly by the weights).
        budget_tokens: The fixed budget (default: one base unit, the members' own budget).
        repeats: Real models per mixture, each with another training seed; correlations and
            regret use their mean, and their agreement is the noise ceiling.
        check_search: A strategy to run on the proxies (continuous weights) for each of
            ``search_targets``; its pick is really trained at the same budget and compared
            with the best really trained mixture of the sample.
        search_targets: Targets of ``check_search`` (``"macro"``, a domain, ...).
        search_budget: Mixtures that search may score (default: the strategy's).
        extrapolate: lambda of the budget-aware merge ``theta_0 + lambda * sum_i w_i
            (theta_i - theta_0)``; 1 is the plain weighted average (the evaluator's proxy);
            ``"norm"`` gives the merged update the members' mean length (per mixture).
        seed: Seed of the sample (and of the bootstrap and the search).
        bootstrap: Bootstrap resamples of eval documents for the intervals.
        level: Coverage of the bootstrap intervals.
        progress: Progress bars (default: the evaluator's setting).
        device: Device for training the real models (default: the evaluator's).

    Returns:
        A ``ValidationReport`` (``.decisions``, ``.correlations``, ``.calibrate()``, ``.write(out)``).
    """
    import pandas as pd

    from ablate.evaluator import as_mixture
    from ablate.objective import Target
    from ablate.validation.models import ensure_trained, plan_for

    if check_search is not None and any(
        Target.parse(t).tasks(tuple(ev.tasks)) for t in search_targets
    ):
        raise MixtureError("--check-search compares perplexity targets; drop the task: target")
    if (mixtures is None) == (sample is None):
        raise MixtureError("say what to validate: mixtures=[...] or sample=N (not both)")
    sampler = weights if isinstance(weights, WeightSampler) else WeightSampler.parse(weights)
    _check_settings(ev, budget, budget_tokens, repeats, bootstrap, level, extrapolate)
    if mixtures is not None:
        chosen = list(dict.fromkeys(as_mixture(m) for m in mixtures))  # unique, in order
    else:
        chosen = sampler.sample(ev.partitions, sample, sizes=sizes, seed=seed)  # type: ignore[arg-type]
    if not chosen:
        raise MixtureError("no mixtures to validate")
    plans = [
        [plan_for(ev, m, budget=budget, budget_tokens=budget_tokens, repeat=r) for m in chosen]
        for r in range(repeats)
    ]  # checks every name before anything trains
    if budget == "fixed":
        _check_supply(ev, chosen, plans[0][0].tokens)
    show = ev.progress if progress is None else progress
    device = device or ev.device_name
    flat = [p for rep in plans for p in rep]
    records, trained = ensure_trained(ev, flat, progress=show, device=device)
    per_repeat = [records[r * len(chosen) : (r + 1) * len(chosen)] for r in range(repeats)]

    eval_set = ev.eval_set
    scorer = ev.scorer()  # per-document sums: the bootstrap resamples documents
    proxy_docs, real_docs, rows = [], [], []
    proxy_tasks, real_tasks = [], []  # per mixture {task: TaskScore}; real: per repeat too
    for i, m in enumerate(chosen):
        p_docs = _proxy_documents(ev, m, extrapolate)
        proxy_tasks.append(_task_scores(ev))  # the skeleton holds the proxy now
        runs, reps = [], []
        for rep in per_repeat:
            runs.append(_real_documents(ev, rep[i]))
            reps.append(_task_scores(ev))  # ... and now the real model
        real_tasks.append(reps)
        proxy_docs.append(p_docs.nll)
        real_docs.append([r.nll for r in runs])
        proxy = p_docs.domain_totals(eval_set)
        real = _mean_nll(runs).domain_totals(eval_set)
        for d in ev.domains:
            rows.append(
                {"mixture": str(m), "domain": d, "proxy": proxy[d].ppl, "real": real[d].ppl}
            )
    tokens = scorer.doc_tokens
    proxy_nll = np.stack(proxy_docs)  # (M, n_docs)
    repeats_nll = np.stack(real_docs, axis=1)  # (R, M, n_docs)
    real_nll = repeats_nll.mean(axis=0)

    pairs = pd.DataFrame(rows, columns=["mixture", "domain", "proxy", "real"])
    corr = {
        d: correlations(g["proxy"].to_numpy(), g["real"].to_numpy())
        for d, g in pairs.groupby("domain", sort=True)
    }
    corr[POOLED] = correlations(pairs["proxy"].to_numpy(), pairs["real"].to_numpy())
    corr_frame = pd.DataFrame.from_dict(corr, orient="index").rename_axis("domain")
    corr_frame["n"] = corr_frame["n"].astype(int)
    intervals = bootstrap_correlations(
        proxy_nll,
        real_nll,
        tokens,
        eval_set.doc_domain,
        eval_set.domains,
        replicates=bootstrap,
        level=level,
        seed=seed,
    )
    decisions = decision_table(
        proxy_nll,
        real_nll,
        tokens,
        eval_set.doc_domain,
        eval_set.domains,
        repeats_nll=repeats_nll if repeats > 1 else None,
        replicates=bootstrap,
        level=level,
        seed=seed,
    )
    tasks, task_notes = None, ()
    if ev.tasks:
        from ablate.validation.tasks import task_table

        tasks, notes = task_table(proxy_tasks, real_tasks)
        task_notes = tuple(notes)
        for note in notes:
            log.warning(note)
    checks = None
    if check_search is not None:
        checks = _check_search(
            ev,
            check_search,
            search_targets,
            chosen,
            real_nll,
            tokens,
            budget=budget,
            budget_tokens=budget_tokens,
            repeats=repeats,
            search_budget=search_budget,
            seed=seed,
            progress=show,
            device=device,
        )
    return ValidationReport(
        pairs=pairs,
        correlations=corr_frame,
        intervals=intervals.loc[corr_frame.index],
        gaps=gap_table(pairs).loc[corr_frame.index],
        records=tuple(records),
        trained=trained,
        level=level,
        decisions=decisions,
        budget=budget,
        budget_tokens=plans[0][0].tokens if budget == "fixed" else None,
        repeats=repeats,
        extrapolate=extrapolate,
        search_checks=checks,
        tasks=tasks,
        task_notes=task_notes,
    )


def _check_settings(
    ev: Evaluator,
    budget: str,
    budget_tokens: int | None,
    repeats: int,
    bootstrap: int,
    level: float,
    extrapolate: float | str,
) -> None:
    if budget not in ("proportional", "fixed"):
        raise MixtureError(f"--budget must be 'proportional' or 'fixed', got {budget!r}")
    recipe = ev.pool.manifest.recipe
    if budget_tokens is not None:
        if budget != "fixed":
            raise MixtureError(
                "--budget-tokens needs --budget fixed (proportional budgets are k units)"
            )
        batch = recipe.seq_len * recipe.batch_size
        if budget_tokens < batch:
            raise MixtureError(
                f"--budget-tokens {budget_tokens} is less than one training batch "
                f"({recipe.batch_size} x {recipe.seq_len} = {batch} tokens); pass at least {batch}"
            )
    if repeats < 1:
        raise MixtureError(f"--repeats must be at least 1, got {repeats}")
    if bootstrap < 0 or not 0 < level < 1:
        raise MixtureError(f"need bootstrap >= 0 and 0 < level < 1, got {bootstrap} and {level}")
    if extrapolate != "norm" and not (
        isinstance(extrapolate, int | float) and np.isfinite(extrapolate) and extrapolate > 0
    ):
        raise MixtureError(
            f"the extrapolation lambda must be 'norm' or a number > 0, got {extrapolate!r}"
        )
    if extrapolate == "norm" and ev.pool.method.merges_by_factors:
        raise MixtureError(
            "--extrapolate norm compares full-weight updates; this pool is LoRA: pass a number"
        )
    if POOLED in ev.domains or MACRO in ev.domains:
        raise MixtureError(
            f"an eval domain is named {POOLED!r} or {MACRO!r}, which the report uses for all "
            "domains; rename it"
        )


def _check_supply(ev: Evaluator, mixtures: Sequence[Mixture], tokens: int) -> None:
    """Every partition must hold its share of a fixed budget. It holds its tokens, or what
    its members trained on if that is more (a short unit's member repeats its data too);
    asking more would train the real model on repeats its proxy never saw."""
    unit = ev.pool.manifest.recipe.unit_tokens
    have = {
        name: max(part.index.n_tokens, unit * len(part.index.units))
        for name, part in ev.pool.partitions.items()
    }
    short: dict[str, int] = {}
    for m in mixtures:
        for name, w in m.weights:
            need = int(w * tokens)
            if need > have[name]:
                short[name] = max(short.get(name, 0), need)
    if short:
        named = ", ".join(f"{n} (supplies {have[n]}, needs {short[n]})" for n in sorted(short))
        raise MixtureError(
            f"--budget fixed at {tokens} tokens asks more tokens than these partitions hold: "
            f"{named}; lower --budget-tokens or add data to them"
        )


def _proxy_documents(ev: Evaluator, mixture: Mixture, extrapolate: float | str) -> DocScores:
    """The proxy's per-document scores; the plain average is also stored as the mixture's
    score (its domain totals are exactly what ``evaluate`` computes)."""
    ev.merged.load(mixture, method=merge_method(extrapolate))
    docs = ev.scorer().score_documents()
    if extrapolate == 1.0:
        key = ev.pool_key(mixture)
        if ev.cache.lookup(mixture, key) is None:
            ev.cache.record(mixture, docs.domain_totals(ev.eval_set), key)
    return docs


def _task_scores(ev: Evaluator) -> dict:
    """``{task: TaskScore}`` of the weights the skeleton holds now (no tasks: empty)."""
    return {name: ev.task_scorer(t).score() for name, t in ev.tasks.items()}


def _real_documents(ev: Evaluator, rec: ValidationRecord) -> DocScores:
    from ablate.validation.models import load_into

    load_into(ev, rec)
    return ev.scorer().score_documents()


def _mean_nll(runs: Sequence[DocScores]) -> DocScores:
    """Repeats of one real model as one: the mean NLL per document (the geometric mean of
    their perplexities)."""
    return DocScores(nll=np.mean([r.nll for r in runs], axis=0), tokens=runs[0].tokens)


def _check_search(
    ev: Evaluator,
    strategy: str,
    targets: Sequence[str],
    sample: Sequence[Mixture],
    real_nll: np.ndarray,
    tokens: np.ndarray,
    *,
    budget: Budget,
    budget_tokens: int | None,
    repeats: int,
    search_budget: int | None,
    seed: int,
    progress: bool,
    device: str | None,
):
    """Run ``strategy`` on the proxies per target, really train each pick at the same budget
    (as many training seeds as the sample, averaged alike), and compare it with the sample's
    really best mixture for that target."""
    import pandas as pd

    from ablate.objective import Target
    from ablate.strategies import search
    from ablate.validation.decisions import target_ppl
    from ablate.validation.models import ensure_trained, plan_for

    es = ev.eval_set
    sample_real = target_ppl(real_nll, tokens, es.doc_domain, len(es.domains))  # (M, T)
    studies = {
        t: search(
            ev,
            target=t,
            strategy=strategy,
            continuous=True,
            budget=search_budget,
            heldout=0.0,
            seed=seed,
            progress=False,
        )
        for t in targets
    }
    picks = {t: study.best.mixture for t, study in studies.items()}
    plans = [
        plan_for(ev, m, budget=budget, budget_tokens=budget_tokens, repeat=r)
        for m in picks.values()
        for r in range(repeats)
    ]
    if budget == "fixed":
        _check_supply(ev, list(picks.values()), plans[0].tokens)
    records, _ = ensure_trained(ev, plans, progress=progress, device=device)
    rows = []
    for i, (t, pick) in enumerate(picks.items()):
        runs = [_real_documents(ev, rec) for rec in records[i * repeats : (i + 1) * repeats]]
        real = target_ppl(_mean_nll(runs).nll[None], tokens, es.doc_domain, len(es.domains))[0]
        score = Target.parse(t)
        score.domains(es.domains)  # checks the names

        def value(row: np.ndarray, score: Target = score) -> float:
            return score.score(dict(zip(es.domains, row[:-1], strict=True)))  # not the macro column

        best = int(np.argmin([value(row) for row in sample_real]))
        pick_real, best_real = value(real), value(sample_real[best])
        rows.append(
            {
                "target": t,
                "strategy": strategy,
                "pick": str(pick),
                "pick_proxy": studies[t].best.score,
                "pick_real": pick_real,
                "sample_best": str(sample[best]),
                "sample_best_real": best_real,
                "gain": best_real / pick_real - 1,  # >= 0: the pick is at least as good
            }
        )
    return pd.DataFrame(rows).set_index("target")
