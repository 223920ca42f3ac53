"""``validate``: train real models on mixtures and measure how well the simulator predicts them.

Na et al. (EMNLP 2024), section 4: for a sample of mixtures, the perplexity of the
parameter average of the mixture's unit models (the proxy) is compared with the
perplexity of a model continued from the same seed, with the same recipe, on the union of
those units (k units of tokens for k units). Real models are stored in the pool and reused,
so a validation can be extended later without retraining anything.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ablate.engine.merges import merge_method
from ablate.engine.scoring import MACRO, DocScores
from ablate.evaluator import as_mixture
from ablate.mixture import Mixture, MixtureError
from ablate.objective import Target
from ablate.strategies import search
from ablate.validation.decisions import MARGIN, decision_table, target_ppl
from ablate.validation.models import Budget, ensure_trained, plan_for
from ablate.validation.real_scores import drop_weights, real_scores
from ablate.validation.report import ValidationReport, gap_table
from ablate.validation.sampling import WeightSampler
from ablate.validation.stats import POOLED, bootstrap_correlations, correlations
from ablate.validation.tasks import task_table

if TYPE_CHECKING:
    from ablate.engine.scores import TaskScore
    from ablate.evaluator import Evaluator, MixtureLike
    from ablate.validation.models import ValidationRecord

log = logging.getLogger(__name__)

SEARCH_HELDOUT = 0.5  # --check-search: the judge's documents matter as much as the search's


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
    search_heldout: float = SEARCH_HELDOUT,
    extrapolate: float | str = 1.0,
    seed: int = 0,
    bootstrap: int = 1000,
    level: float = 0.95,
    margin: float = MARGIN,
    progress: bool | None = None,
    device: str | None = None,
    keep_weights: bool = True,
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
            ``search_targets`` (fixed budget only); its pick and the sample's really best
            mixture are trained again with fresh seeds and compared on held-out documents
            (``_check_search``).
        search_targets: Targets of ``check_search`` (``"macro"``, a domain, ...).
        search_budget: Mixtures that search may score (default: the strategy's).
        search_heldout: Share of eval documents (per domain) that ``check_search`` keeps
            out of the search and of choosing the sample's best, to judge both on.
        extrapolate: lambda of the budget-aware merge ``theta_0 + lambda * sum_i w_i
            (theta_i - theta_0)``; 1 is the evaluator's proxy (its ``merge``: the plain
            weighted average unless ``--merge`` says otherwise); ``"norm"`` gives the merged
            update the members' mean length (per mixture).
        seed: Seed of the sample (and of the bootstrap and the search).
        bootstrap: Two-way bootstrap replicates for the intervals (mixtures x documents;
            x seed labels with repeats for the decisions).
        level: Coverage of the bootstrap intervals.
        margin: Indifference margin (relative perplexity) of the decisions'
            ``p_within_margin``: the share of replicates whose pick is within it of the best.
        progress: Progress bars (default: the evaluator's setting).
        device: Device for training the real models (default: the evaluator's).
        keep_weights: False deletes each real model's weights once its scores are stored
            (``ablate.validation.real_scores``): reruns on the same eval data and tasks
            still work, other eval data needs the model trained again.

    Returns:
        A ``ValidationReport`` (``.decisions``, ``.correlations``, ``.calibrate()``, ``.write(out)``).
    """
    import pandas as pd

    if check_search is not None and any(
        Target.parse(t).tasks(tuple(ev.tasks)) for t in search_targets
    ):
        raise MixtureError("--check-search compares perplexity targets; drop the task: target")
    if check_search is not None and budget != "fixed":
        raise MixtureError(
            "--check-search needs --budget fixed: at a proportional budget a continuous pick "
            "trains on more tokens than the 2-4-unit subsets it is compared with"
        )
    if check_search is not None and not 0 < search_heldout < 1:
        raise MixtureError(f"the search's held-out share must be in (0, 1), got {search_heldout}")
    if not (math.isfinite(margin) and 0 <= margin < 1):
        raise MixtureError(f"--margin is a relative perplexity in [0, 1), got {margin}")
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
    scoring = tqdm(chosen, desc="scoring proxies and real models", unit="mix", disable=not show)
    for i, m in enumerate(scoring):
        p_docs, p_tasks = proxy_scores(ev, m, extrapolate)
        proxy_tasks.append(p_tasks)
        runs, reps = [], []
        for rep in per_repeat:
            docs, scores = real_scores(ev, rep[i])
            runs.append(docs)
            reps.append(scores)
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
        margin=margin,
        seed=seed,
    )
    tasks, task_notes = None, ()
    if ev.tasks:
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
            repeats_nll,
            tokens,
            budget_tokens=budget_tokens,
            search_budget=search_budget,
            heldout=search_heldout,
            replicates=bootstrap,
            seed=seed,
            progress=show,
            device=device,
            keep_weights=keep_weights,
        )
    if not keep_weights:
        _drop_weights(ev, records)
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
        merge=ev.layout.merge,
        proxy_level=ev.proxy_level,
        search_checks=checks,
        margin=margin,
        replicates=bootstrap,
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
    if extrapolate != 1.0 and ev.layout.merge != "average":
        raise MixtureError(
            f"--extrapolate scales the plain average, not the {ev.layout.merge} merge: pass "
            "--merge average (merge='average') with it, or drop --extrapolate"
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


def proxy_scores(
    ev: Evaluator, mixture: Mixture, extrapolate: float | str = 1.0
) -> tuple[DocScores, dict[str, TaskScore]]:
    """The proxy's per-document and task scores. The evaluator's own proxy (no
    extrapolation: the plain average or ``--merge``) is read from the results store when it
    was scored before, else merged, scored and stored: per document, per domain (exactly
    what ``evaluate`` computes) and per task, so a rerun or a resumed validation merges
    nothing twice. Documents come back at the evaluator's proxy level, like ``evaluate``'s."""
    stored = extrapolate == 1.0
    key = ev.pool_key(mixture) if stored else ""
    if stored:
        docs = ev.cache.lookup_documents(mixture, key)
        tasks = ev.cache.lookup_tasks(ev.tasks, mixture, key)
        if docs is not None and len(tasks) == len(ev.tasks):
            return docs, tasks
    ev.merged.load(mixture, method=None if stored else merge_method(extrapolate))
    docs = ev.scorer().score_documents()
    tasks = {name: ev.task_scorer(t).score() for name, t in ev.tasks.items()}
    if stored:
        if ev.cache.lookup(mixture, key) is None:
            ev.cache.record(mixture, docs.domain_totals(ev.eval_set), key)
        ev.cache.record_documents(mixture, key, docs)
        for name, score in tasks.items():
            ev.cache.record_task(ev.tasks[name], mixture, key, score)
    return ev.cache.read_documents(docs), tasks


def _drop_weights(ev: Evaluator, records: Sequence[ValidationRecord]) -> None:
    freed = sum(drop_weights(ev.pool, rec) for rec in records)
    if freed:
        log.info("dropped the weights of scored validation models: %.1f MB freed", freed / 1e6)


def _mean_nll(runs: Sequence[DocScores]) -> DocScores:
    """Repeats of one real model as one: the mean NLL per document (the geometric mean of
    their perplexities)."""
    return DocScores(nll=np.mean([r.nll for r in runs], axis=0), tokens=runs[0].tokens)


def _check_search(
    ev: Evaluator,
    strategy: str,
    targets: Sequence[str],
    sample: Sequence[Mixture],
    repeats_nll: np.ndarray,
    tokens: np.ndarray,
    *,
    budget_tokens: int | None,
    search_budget: int | None,
    heldout: float,
    replicates: int,
    seed: int,
    progress: bool,
    device: str | None,
    keep_weights: bool = True,
):
    """Does the strategy's pick, really trained, beat the sample's really best mixture?

    Fair to both sides: the eval documents are split (per domain, ``heldout`` share held
    out); the search optimises the proxies on the search documents only, and the sample's
    best is chosen on the same documents from its R training runs. Both are then trained
    again with R fresh seeds (repeats R..2R-1, never used to choose anything) and judged on
    the held-out documents, so neither the sample's winner's curse nor the search's
    overfitting to its documents enters the gain. The gain's standard error combines the
    documents (a bootstrap of the held-out documents within each domain) and the seeds
    (the pooled between-run variance of one run's log score, from the sample's runs and
    the fresh ones, over R runs per side); it is NaN when no mixture has two runs.
    """
    import pandas as pd

    es = ev.eval_set
    n_runs = repeats_nll.shape[0]
    search_idx, held_idx = (np.asarray(i) for i in es.split_indices(heldout, seed))
    short = [
        name
        for k, name in enumerate(es.domains)
        if not (es.doc_domain[search_idx] == k).any() or not (es.doc_domain[held_idx] == k).any()
    ]
    if short:
        raise MixtureError(
            f"--check-search judges on held-out documents, but eval domain(s) {', '.join(short)} "
            "have fewer than 2 documents; add eval documents to them"
        )
    scored = {t: Target.parse(t) for t in targets}
    for score in scored.values():
        score.domains(es.domains)  # checks the names before anything runs
    studies = {
        t: search(
            ev,
            target=t,
            strategy=strategy,
            continuous=True,
            budget=search_budget,
            heldout=heldout,
            seed=seed,
            progress=False,
        )
        for t in targets
    }

    def values(nll: np.ndarray, idx: np.ndarray, score: Target) -> np.ndarray:
        """Target value of each row of per-document NLL ``(K, n_docs)`` on documents ``idx``."""
        ppl = target_ppl(nll[:, idx], tokens[idx], es.doc_domain[idx], len(es.domains))
        return np.array([score.score(dict(zip(es.domains, row[:-1], strict=True))) for row in ppl])

    bests = {
        t: int(np.argmin(values(repeats_nll.mean(axis=0), search_idx, s)))
        for t, s in scored.items()
    }
    judged = [(studies[t].best.mixture, sample[bests[t]]) for t in targets]
    plans = [
        plan_for(ev, m, budget="fixed", budget_tokens=budget_tokens, repeat=r)
        for pair in judged
        for m in pair
        for r in range(n_runs, 2 * n_runs)
    ]
    _check_supply(ev, [m for pair in judged for m in pair], plans[0].tokens)
    records, _ = ensure_trained(ev, plans, progress=progress, device=device)
    fresh = np.stack([real_scores(ev, rec, tasks=False)[0].nll for rec in records])
    if not keep_weights:
        _drop_weights(ev, records)
    fresh = fresh.reshape(len(targets), 2, n_runs, -1)  # (targets, pick/best, R, n_docs)
    rng = np.random.default_rng(seed)
    held_domain = es.doc_domain[held_idx]
    weights = np.zeros((replicates, len(held_idx)))  # (B, held docs) drawn within each domain
    for k in range(len(es.domains)):
        at = np.flatnonzero(held_domain == k)
        weights[:, at] = rng.multinomial(len(at), np.full(len(at), 1 / len(at)), replicates)
    rows = []
    for i, (t, score) in enumerate(scored.items()):
        pick_real, best_real = values(fresh[i].mean(axis=1), held_idx, score)
        gain = best_real / pick_real - 1  # >= 0: the pick is at least as good
        se_docs = math.nan
        if replicates > 1:
            boot = []
            for w in weights:  # (held docs,): each replicate's document counts
                keep = np.repeat(held_idx, w.astype(int))
                pr, br = values(fresh[i].mean(axis=1), keep, score)
                boot.append(br / pr - 1)
            se_docs = float(np.std(boot, ddof=1))
        # Seed noise: between-run variance of one run's log score on the held-out documents.
        groups = [repeats_nll.transpose(1, 0, 2)[j] for j in range(len(sample))] + list(fresh[i])
        logs = [np.log(values(g, held_idx, score)) for g in groups if len(g) > 1]
        df = sum(len(v) - 1 for v in logs)
        var = sum(float(((v - v.mean()) ** 2).sum()) for v in logs) / df if df else math.nan
        se_seeds = (1 + gain) * math.sqrt(2 * var / n_runs)  # delta method, R runs per side
        rows.append(
            {
                "target": t,
                "strategy": strategy,
                "pick": str(judged[i][0]),
                "pick_proxy": studies[t].best.score,
                "pick_real": float(pick_real),
                "sample_best": str(judged[i][1]),
                "sample_best_real": float(best_real),
                "gain": float(gain),
                "gain_se": math.sqrt(se_docs**2 + se_seeds**2),
                "gain_se_docs": se_docs,
                "gain_se_seeds": se_seeds,
                "heldout_docs": len(held_idx),
                "judge_seeds": n_runs,
            }
        )
    return pd.DataFrame(rows).set_index("target")
