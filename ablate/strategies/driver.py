"""The search loop: a strategy proposes, the evaluator scores (store-aware), repeat.

Every mixture goes through ``Evaluator.run_many``, so a mixture scored before by any
search, ``ablate eval`` or another worker is read from the results store, and a batch of
uniform subsets is walked in Gray-code order. When there are enough eval documents a
held-out split (stratified by domain) is kept out of the search, and the chosen mixture is
also scored on it: the search never sees those documents.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from ablate.engine.layout import MAX_ALL_SUBSETS
from ablate.evaluator import EvalResult, Evaluator
from ablate.laws.fidelity import target_runs
from ablate.pool.errors import AblateError
from ablate.racing.policy import DEFAULT_CONFIDENCE, PartialResult, Race
from ablate.strategies.base import STRATEGIES, SearchContext, Strategy, Trial
from ablate.strategies.space import SearchSpace, Target
from ablate.strategies.study import Best, Study

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 50  # mixtures per search when --evaluations is not given (and the space is larger)
DEFAULT_HELDOUT = 0.25
_MIN_DOCS_FOR_HELDOUT = 4  # per domain: one held out, three left to search on
_MAX_STALLS = 10  # rounds in a row that bring no new mixture before the loop gives up


def split_evaluators(
    ev: Evaluator, heldout: float | None, seed: int
) -> tuple[Evaluator, Evaluator | None, str | None]:
    """``(search evaluator, held-out evaluator or None, note)`` for a held-out fraction.

    ``heldout=None`` picks ``DEFAULT_HELDOUT`` when every domain has at least
    ``_MIN_DOCS_FOR_HELDOUT`` documents, else no split (and says so in the note).
    """
    counts = np.bincount(ev.eval_set.doc_domain, minlength=len(ev.domains))
    note = None
    if heldout is None:
        if counts.min() >= _MIN_DOCS_FOR_HELDOUT:
            heldout = DEFAULT_HELDOUT
        else:
            note = (
                f"no held-out split: the smallest eval domain has {int(counts.min())} document(s) "
                f"(need {_MIN_DOCS_FOR_HELDOUT}); pass --heldout F to force one"
            )
            heldout = 0.0
    if not heldout:
        return ev, None, note
    if not 0 < heldout < 1:
        raise AblateError(f"--heldout must be between 0 and 1 (exclusive), got {heldout}")
    search_set, held_set = ev.eval_set.split(heldout, seed)
    lacking = [d for d in ev.domains if d not in search_set.domains]
    if lacking:
        raise AblateError(
            f"--heldout {heldout} leaves no search documents for domain(s) {', '.join(lacking)}"
        )
    return ev.on(search_set), ev.on(held_set), note


def search(
    ev: Evaluator,
    *,
    target: str | Target = "macro",
    strategy: str = "tpe",
    budget: int | None = None,
    max_size: int | None = None,
    require: Sequence[str] = (),
    exclude: Sequence[str] = (),
    continuous: bool = False,
    storage: str | None = None,
    study_name: str | None = None,
    heldout: float | None = None,
    seed: int = 0,
    progress: bool | None = None,
    race: bool = False,
    confidence: float = DEFAULT_CONFIDENCE,
    also: object = None,
    margin: float = 0.0,
    race_seed: int | None = None,
) -> Study:
    """Search the mixtures of ``ev``'s pool for the one that minimises ``target``.

    Args:
        ev: An evaluator on the pool and the full eval set.
        target: ``"macro"``, ``"DOMAIN[,DOMAIN...]"`` or ``"weighted:D=W,..."`` (a ``Target``).
        strategy: A registered strategy (``ablate.strategies.STRATEGIES``).
        budget: Most distinct mixtures to score (store hits count); default: the whole
            subset space for ``exhaustive``, else ``min(50, space size)``.
        max_size: Most partitions per mixture.
        require: Partitions every mixture must contain.
        exclude: Partitions no mixture may contain.
        continuous: Search weights on the simplex instead of uniform subsets.
        storage: Optuna RDB URL (e.g. ``sqlite:///study.db``) shared by several workers.
        study_name: Optuna study name (default: derived from pool, eval set, target, space).
        heldout: Fraction of eval documents kept out of the search (None: 0.25 when every
            domain has at least 4 documents, else 0).
        seed: Seeds the strategy and the held-out split.
        progress: Show a progress bar (default: the evaluator's setting).
        race: Score each proposal by racing (``ablate.racing.policy``): mixtures proven worse than
            the best so far on part of the eval set stop early; the best is always scored
            in full. Dropped mixtures are in ``Study.raced_out``, never in ``trials``.
        confidence: With ``race``: probability that the best is within ``margin`` of the
            best of the raced mixtures on the full search split (docs/racing.md).
        margin: With ``race``: relative indifference on the target (e.g. 0.005).
        race_seed: With ``race``: seed of the unit order (None: a fresh one, in the notes).
        also: Real runs (a runs table: path, paths or DataFrame; ``ablate.laws.fidelity.
            target_runs``) the regression strategy's surrogate learns from beside the proxies.

    Returns:
        A ``Study`` with ``best``, ``frame``, ``pareto()`` and ``plot()``.
    """
    if strategy not in STRATEGIES:
        raise AblateError(
            f"unknown search strategy {strategy!r}; choose from: {', '.join(sorted(STRATEGIES))}"
        )
    info = STRATEGIES[strategy]
    target = target if isinstance(target, Target) else Target.parse(target)
    space = SearchSpace(ev.partitions, tuple(require), tuple(exclude), max_size, continuous)
    if space.kind not in info.spaces:
        fix = "add --continuous" if space.kind == "subsets" else "drop --continuous"
        raise AblateError(f"strategy {strategy!r} searches {' or '.join(info.spaces)} only; {fix}")
    if storage is not None and not getattr(info.factory, "uses_storage", False):
        raise AblateError(
            f"--storage shares an Optuna study; the {strategy} strategy has none (use tpe or gp)"
        )
    if budget is not None and budget < 1:
        raise AblateError(f"--evaluations must be at least 1, got {budget}")
    if budget is None and strategy == "exhaustive" and space.size > MAX_ALL_SUBSETS:
        raise AblateError(
            f"an exhaustive search of this space would score {space.size:,} mixtures (more than "
            f"{MAX_ALL_SUBSETS:,}); cap it with --evaluations N, restrict it with --max-size, "
            f"or use another --strategy"
        )
    if budget is None:
        budget = int(min(space.size, math.inf if strategy == "exhaustive" else DEFAULT_BUDGET))
    budget = int(min(budget, space.size))
    search_ev, held_ev, note = split_evaluators(ev, heldout, seed)
    target.domains(search_ev.domains)  # fail early on a domain the eval data lacks
    if target.tasks(tuple(ev.tasks)) and strategy == "gradient":
        raise AblateError(
            "the gradient strategy follows perplexity only; a task: target needs another strategy"
        )
    also_runs = None
    if also is not None:
        if strategy != "regression":
            raise AblateError(
                "--also feeds real runs to the regression strategy's surrogate; "
                "add --strategy regression"
            )

        also_runs = target_runs(also, target, space.allowed, search_ev.domains)
    ctx = SearchContext(search_ev, space, target, budget, seed, storage, study_name, also_runs)
    plan = info.factory(ctx)
    racer = (
        Race(search_ev, target, confidence=confidence, margin=margin, seed=race_seed)
        if race
        else None
    )
    trials = _loop(plan, ctx, ev.progress if progress is None else progress, racer)
    raced_out = [t for t in trials if isinstance(t.result, PartialResult)]
    trials = [t for t in trials if not isinstance(t.result, PartialResult)]
    study = Study(
        strategy, target, space, trials, heldout=0.0 if held_ev is None else _fraction(ev, held_ev)
    )
    study.raced_out = raced_out
    if racer is not None:
        study.race = racer.stats
        study.notes.append(racer.stats.describe())
    if also_runs is not None:
        study.notes.append(
            f"the surrogate also learnt from {len(also_runs)} real run(s) of {also_runs.source} "
            "(fidelity indicator; candidates ranked by their predicted real score)"
        )
    if note:
        study.notes.append(note)
        log.info(note)
    if trials:
        top = min(trials, key=lambda t: (t.score, t.evaluation))
        held = held_ev.evaluate(top.mixture) if held_ev is not None else None
        study.best = Best(
            top.mixture,
            top.score,
            top.result.ppl,
            None if held is None else target.score(held.ppl, held.tasks),
            None if held is None else held.ppl,
        )
    return study


def _fraction(ev: Evaluator, held_ev: Evaluator) -> float:
    return len(held_ev.eval_set.docs) / len(ev.eval_set.docs)


def _loop(
    plan: Strategy, ctx: SearchContext, progress: bool, racer: Race | None = None
) -> list[Trial]:
    """Propose, score through the store (or race), observe; until the budget or the plan
    runs out. A raced-out mixture is observed with its estimated score."""
    seen: dict[str, Trial] = {}
    stalls = 0
    with tqdm(total=ctx.budget, desc="search", unit="mix", disable=not progress) as bar:
        while len(seen) < ctx.budget:
            batch = plan.propose(ctx.budget - len(seen))
            if not batch:
                break
            for m in batch:
                if not ctx.space.contains(m):  # a bug in the plug-in, not the user's doing
                    raise RuntimeError(
                        f"strategy {type(plan).__name__} proposed {m}, outside its space"
                    )
            # unseen mixtures, each once, in proposal order (linear: batches can be the whole space)
            unseen = {m.key: m for m in batch if m.key not in seen}
            new = list(unseen.values())[: ctx.budget - len(seen)]
            results: dict[str, EvalResult | PartialResult] = {}
            if new:
                scored = (
                    ctx.evaluator.run_many(new, progress=False) if racer is None else racer.run(new)
                )
                for r in scored:
                    results[r.mixture.key] = r
                for m in new:
                    r = results[m.key]
                    score = (
                        r.estimate
                        if isinstance(r, PartialResult)
                        else ctx.target.score(r.ppl, r.tasks)
                    )
                    seen[m.key] = Trial(m, score, r, len(seen) + 1)
                bar.update(len(new))
                stalls = 0
            else:
                stalls += 1
            # Always answer what was proposed, even when stopping: a shared Optuna study would
            # otherwise keep the trial RUNNING and make other workers wait for it.
            plan.observe([seen[m.key] for m in batch if m.key in seen])
            if stalls >= _MAX_STALLS:
                log.info(
                    "the %s strategy proposed only scored mixtures %d times in a row; stopping",
                    type(plan).__name__,
                    stalls,
                )
                break
    return list(seen.values())
