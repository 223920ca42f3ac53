"""Score any mixture of a pool: the face users call (``evaluate``, ``run_many``, ...).

``Evaluator`` composes the engine (``ablate.engine``: layout, merged model, scorers, results
cache, executor) so that strategies, racing and validation read scores through one object
and never touch the store or the stack themselves.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np
from tqdm.auto import tqdm

from ablate.data.evalset import EvalSet
from ablate.data.tasks import Task, load_tasks
from ablate.engine.executor import Executor, ExecutorName, LocalExecutor, Scored, Scorers
from ablate.engine.layout import MemberLayout, gray_subsets
from ablate.engine.levels import LevelShift, specialisation_shift
from ablate.engine.merges import PoolMerge
from ablate.engine.ray import RayExecutor, check_ray_settings
from ablate.engine.results import ResultsCache, ResultsStore
from ablate.engine.scoring import (
    MACRO,
    DocScores,
    DomainScore,
    EvalResult,
    Scorer,
    ScoringBatch,
    TaskScore,
    TaskScorer,
    target_nll,
)
from ablate.export import export
from ablate.mixture import Mixture
from ablate.pool import Pool
from ablate.pool.atomic import sha256_json
from ablate.pool.errors import AblateError
from ablate.pool.prepare import prepare_merge, prepares
from ablate.pool.storage import ProxyLevel, check_merge, check_proxy_level
from ablate.pool.train import pick_device

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ablate.engine.merge import MergedModel
    from ablate.pool.storage import MemberRecord

log = logging.getLogger(__name__)

MixtureLike = Mixture | str | Mapping[str, float] | Sequence[str]
SEED_SCORES = "seed"  # the name the seed model's own scores are stored under (no mixture)


def as_mixture(m: MixtureLike) -> Mixture:
    if isinstance(m, Mixture):
        return m
    if isinstance(m, str):
        return Mixture.parse(m)
    if isinstance(m, Mapping):
        return Mixture.of(m)
    return Mixture.uniform(m)


@dataclass
class _Loaded:
    """What evaluators of one pool share, whatever eval set each scores: the merged model
    and its scorers (``Scorers``), the results store and the executor."""

    scorers: Scorers
    store: ResultsStore | None
    executor: Executor

    @property
    def pool(self) -> Pool:
        return self.scorers.pool

    @property
    def layout(self) -> MemberLayout:
        return self.scorers.layout

    @property
    def device_name(self) -> str | None:
        return self.scorers.device_name

    @property
    def batch_tokens(self) -> int:
        return self.scorers.batch_tokens

    @property
    def progress(self) -> bool:
        return self.scorers.progress


def _shared(name: str, doc: str) -> property:
    """A read-only attribute of what every evaluator of one pool shares (``_Loaded``)."""
    return property(lambda self: getattr(self._loaded, name), doc=doc)


@dataclass(frozen=True)
class EvaluatorConfig:
    """How an ``Evaluator`` reads eval data, where it scores and what it remembers.

    Every field is also a keyword of ``Evaluator`` (``Evaluator(pool, data, by="domain")``
    and ``Evaluator(pool, data, EvaluatorConfig(by="domain"))`` are the same).

    Args:
        by: Metadata field that names each eval document's domain (one domain if None).
        text_field: Field of each eval record that holds its text.
        device: ``"cpu"``, ``"cuda"``, or None for CUDA when available (Ray: the actors').
        batch_tokens: Tokens per forward pass; bounds activation memory.
        store: Use the pool's ``results.sqlite`` (True), another path, or no store (False).
        progress: Whether progress bars show by default.
        executor: ``"local"`` scores here; ``"ray"`` fans mixtures out over ``workers`` Ray
            actors that each stack the pool once (only this process touches the store).
        workers: Ray actors (``executor="ray"``).
        address: Ray cluster address; None starts a local cluster (or uses ``RAY_ADDRESS``).
        gpus_per_worker: GPUs (or a fraction) per Ray actor; 0 keeps actors on CPU.
        stack_budget_bytes: Most memory the ``[N, P]`` member stack may take in this
            process; a larger stack streams from the memory-mapped members (None: 70% of
            what is free).
        tasks: Multiple-choice task files (``FILE`` or ``NAME=FILE``, ``ablate.data.tasks``)
            scored with every mixture: ``evaluate(m).tasks[NAME]``, on the same merge as
            its perplexity (by the executor: here, or on the Ray actors).
        merge: How a mixture's members become one model: ``"average"`` (the weighted
            average, Na et al.) or ``"fisher"`` / ``"fisher_tensor"`` / ``"fisher_damped"``
            (Fisher-weighted, Matena & Raffel; needs ``ablate pool fisher`` first) or
            ``"regmean"`` (Jin et al.; needs ``ablate pool gram`` first); None: the pool's own
            (``Pool.merge``: ``fisher_damped`` for new pools whose members start from the
            seed's second moments, ``fisher`` for new LoRA pools, both prepared by ``pool
            grow``; else the average).
            Results of other merges than the average are stored under their own keys.
        proxy_level: How each eval domain's proxy perplexity is read: ``"none"`` (as scored)
            or ``"specialisation"`` (lowered by how much the domain's best partition gains
            over the seed, ``ablate.engine.levels``; the first score on an eval set also
            scores the seed and each partition once); None: the pool's own
            (``Pool.proxy_level``: ``specialisation`` for new full-weight pools whose members
            start from the seed's second moments, else ``none``). Stored scores are as
            scored, so either reads every stored score.
    """

    by: str | None = None
    text_field: str = "text"
    device: str | None = None
    batch_tokens: int = 8192
    store: bool | str | os.PathLike = True
    progress: bool = True
    executor: ExecutorName = "local"
    workers: int = 2
    address: str | None = None
    gpus_per_worker: float = 0.0
    stack_budget_bytes: int | None = None
    tasks: Sequence[str | os.PathLike | Task] = ()
    merge: PoolMerge | None = None
    proxy_level: ProxyLevel | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))  # frozen: a list would not be
        if self.executor not in get_args(ExecutorName):
            raise AblateError(f"executor must be 'local' or 'ray', got {self.executor!r}")
        if self.merge is not None:
            check_merge(self.merge)
        if self.proxy_level is not None:
            check_proxy_level(self.proxy_level)


class Evaluator:
    """Merges pool members into mixtures and scores them on an eval set.

    Args:
        pool: A ``Pool`` or its path.
        eval_data: Eval files (same formats as corpora), or an already loaded ``EvalSet``.
        config: How to read, score and remember (``EvaluatorConfig``; default: its defaults).
        **options: Any ``EvaluatorConfig`` field by name, overriding ``config``'s.
    """

    def __init__(
        self,
        pool: Pool | str | os.PathLike,
        eval_data: EvalSet | str | os.PathLike | Sequence[str | os.PathLike],
        config: EvaluatorConfig | None = None,
        **options: object,
    ):
        cfg = dataclasses.replace(config or EvaluatorConfig(), **options)  # type: ignore[arg-type]
        if cfg.executor == "ray":
            check_ray_settings(cfg.workers, cfg.gpus_per_worker)  # before tokenizing anything
        pool = pool if isinstance(pool, Pool) else Pool.open(pool)
        eval_set = (
            eval_data
            if isinstance(eval_data, EvalSet)
            else EvalSet.load(pool, eval_data, by=cfg.by, text_field=cfg.text_field)
        )
        task_set: dict[str, Task] = load_tasks(pool, cfg.tasks)  # bad lines fail before any write
        path = pool.path / "results.sqlite" if cfg.store is True else cfg.store
        if prepares(pool, cfg.merge):  # what its merge reads that a member lacks
            prepare_merge(pool, progress=cfg.progress, device=cfg.device)
        scorers = Scorers(
            pool,
            MemberLayout(pool, merge=cfg.merge),
            device_name=cfg.device,
            batch_tokens=cfg.batch_tokens,
            progress=cfg.progress,
            stack_budget_bytes=cfg.stack_budget_bytes,
        )
        if cfg.executor == "ray":
            run: Executor = RayExecutor(
                pool,
                scorers.layout,
                workers=cfg.workers,
                address=cfg.address,
                device=cfg.device,
                gpus_per_worker=cfg.gpus_per_worker,
                batch_tokens=cfg.batch_tokens,
            )
        else:
            run = LocalExecutor(scorers)
        loaded = _Loaded(scorers, ResultsStore(path) if path else None, run)
        self._loaded = loaded
        self.config = cfg
        self.eval_set = eval_set
        self.tasks = task_set
        self.proxy_level: ProxyLevel = cfg.proxy_level or pool.proxy_level
        self.cache = self.results_for(eval_set)

    def on(self, eval_set: EvalSet) -> Evaluator:
        """An evaluator on another eval set (e.g. a held-out split) that shares this one's
        loaded members, executor and results store: nothing is loaded twice."""
        other = copy.copy(self)  # the same _Loaded: model, scorers, executor, store
        other.eval_set = eval_set
        other.cache = other.results_for(eval_set)
        return other

    def results_for(self, eval_set: EvalSet) -> ResultsCache:
        """The results of ``eval_set``, read at this evaluator's proxy level."""
        if self.proxy_level == "none":
            return ResultsCache(self.store, eval_set)
        return ResultsCache(self.store, eval_set, lambda: self.specialisation(eval_set))

    def specialisation(self, eval_set: EvalSet | None = None) -> LevelShift:
        """The ``specialisation`` level's shift on ``eval_set`` (default: this evaluator's),
        whatever level this evaluator reads at: the seed and each partition scored once
        each, or read from the store as scored (``ablate.engine.levels``)."""
        eval_set = self.eval_set if eval_set is None else eval_set
        seed_lp, parts = self.partition_log_ppl(eval_set)
        return LevelShift(
            eval_set.domains, specialisation_shift(seed_lp, parts), seed_lp - parts.min(0)
        )

    def partition_log_ppl(self, eval_set: EvalSet | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The seed's log perplexity per eval domain ``(D,)`` and each partition's member's
        ``(N, D)`` (rows in ``partitions`` order), as scored: what the proxy level reads, and
        how much each member's training moved every domain. Scored once, then stored."""
        eval_set = self.eval_set if eval_set is None else eval_set
        raw = ResultsCache(self.store, eval_set)
        singles = [Mixture.uniform([p]) for p in self.partitions]
        found = {m.key: raw.lookup(m, self.pool_key(m)) for m in singles}
        todo = [m for m in singles if found[m.key] is None]
        manifest = self.pool.manifest
        seed_key = sha256_json(
            {"seed": manifest.base_sha256, "method": manifest.recipe.method, "model": "seed"}
        )
        seed = raw.lookup_model(SEED_SCORES, seed_key)
        model = self._loaded.scorers.model  # asked mid-walk or mid-race: its weights stay
        with (
            model.kept() if model is not None else contextlib.nullcontext(),
            tqdm(
                total=len(todo) + (seed is None),
                desc="proxy level: seed and partitions",
                unit="model",
                disable=not self.progress or not (todo or seed is None),
            ) as bar,
        ):
            if seed is None:
                base = self.pool.load_base_model()
                self.merged.load_state(
                    {k: v.detach() for k, v in base.named_parameters()}, "the seed"
                )
                seed = raw.record_model(SEED_SCORES, seed_key, self.scorer(eval_set).score())
                bar.update(1)
            for s in self.executor.run(todo, eval_set, []):
                found[s.mixture.key] = raw.record(s.mixture, s.scores, self.pool_key(s.mixture))
                bar.update(1)
        domains = eval_set.domains

        def log_ppl(scores: Mapping[str, DomainScore]) -> np.ndarray:
            return np.array([scores[d].nll / scores[d].tokens for d in domains])

        parts = np.stack([log_ppl(found[m.key].scores) for m in singles])  # type: ignore[union-attr]
        return log_ppl(seed), parts

    @property
    def level_shift(self) -> LevelShift | None:
        """Nats per token each eval domain's proxy NLL is read lower by, and each domain's
        gain of its best partition over the seed (None at proxy level ``none``)."""
        return self.cache.shift

    # ------------------------------------------------------------------ what it holds
    pool = _shared("pool", "The pool whose members are merged.")
    layout = _shared("layout", "Members as stack rows (``MemberLayout``).")
    store = _shared("store", "The results store (None: nothing is remembered).")
    executor = _shared("executor", "Where mixtures are scored: here or on Ray actors.")
    progress = _shared("progress", "Whether progress bars show by default.")
    device_name = _shared("device_name", "The device asked for (None: CUDA when available).")
    batch_tokens = _shared("batch_tokens", "Tokens per forward pass.")

    @property
    def members(self) -> list[MemberRecord]:
        return self.layout.members

    @property
    def partitions(self) -> tuple[str, ...]:
        return self.layout.partitions

    @property
    def domains(self) -> tuple[str, ...]:
        return self.eval_set.domains

    @cached_property
    def device(self) -> torch.device:
        return pick_device(self.device_name)

    @property
    def merged(self) -> MergedModel:
        """Members loaded and stacked in this process on first use (cache hits never pay
        for it; with the Ray executor only validation and the gradient search need it)."""
        return self._loaded.scorers.merged()

    def scorer(self, eval_set: EvalSet | None = None) -> Scorer:
        """The ``Scorer`` of ``eval_set`` (default: this evaluator's) on the merged model."""
        return self._loaded.scorers.scorer(self.eval_set if eval_set is None else eval_set)

    def task_scorer(self, task: Task) -> TaskScorer:
        """The ``TaskScorer`` of ``task`` on the merged model (built once)."""
        return self._loaded.scorers.task_scorer(task)

    # ------------------------------------------------------------------ keys
    def member_weights(self, mixture: Mixture) -> np.ndarray:
        """Weights over members: a partition's weight spread evenly over its units."""
        return self.layout.member_weights(mixture)

    def pool_key(self, mixture: Mixture) -> str:
        """Fingerprint of exactly the members this mixture merges (and their weights)."""
        return self.layout.pool_key(mixture)

    # ------------------------------------------------------------------ scoring
    def score_current(self) -> dict[str, DomainScore]:
        """Score whatever weights the skeleton holds now, per eval domain."""
        return self.scorer().score()

    def evaluate(self, mixture: MixtureLike) -> EvalResult:
        """Scores of one mixture (from the store when it was scored before)."""
        return self.run_many([mixture], progress=False)[0]

    def evaluate_many(
        self, mixtures: Iterable[MixtureLike], *, progress: bool | None = None
    ) -> pd.DataFrame:
        """Score many mixtures; uniform subsets are walked in Gray-code order with a running sum."""
        return results_frame(self.run_many(mixtures, progress=progress))

    def run_many(
        self, mixtures: Iterable[MixtureLike], *, progress: bool | None = None
    ) -> list[EvalResult]:
        """Scores of ``mixtures`` in their order: the store answers what it knows, the
        executor scores the rest once each (tasks on the same merge), and every new score
        is stored as it arrives (an interrupted run keeps them)."""
        mixtures = [as_mixture(m) for m in mixtures]
        out: dict[str, EvalResult | None] = {}
        todo: dict[Mixture, str] = {}
        for m in mixtures:
            if m.key not in out:
                key = self.pool_key(m)  # checks the mixture's names
                out[m.key] = self.cache.lookup(m, key)
                if out[m.key] is None:
                    todo[m] = key
        hits = {m.key: self.cache.lookup_tasks(self.tasks, m, key) for m, key in todo.items()}
        tasks = [t for t in self.tasks.values() if any(t.name not in h for h in hits.values())]
        show = self.progress if progress is None else progress
        with tqdm(
            total=len(todo), desc="mixtures", disable=not show or not todo, unit="mix"
        ) as bar:
            for s in self.executor.run(list(todo), self.eval_set, tasks):
                m, key = s.mixture, todo[s.mixture]
                r = self.cache.record(m, s.scores, key)
                if self.tasks:
                    found = self._record_tasks(s, key, hits[m.key])
                    r = dataclasses.replace(r, tasks=found)
                out[m.key] = r
                bar.update(1)
        return self.with_tasks([out[m.key] for m in mixtures])  # type: ignore[misc]

    def with_tasks(self, results: Sequence[EvalResult]) -> list[EvalResult]:
        """``results`` with every task of this evaluator: kept where a result carries it,
        else from the store, else scored (one merge per mixture) and stored."""
        if not self.tasks:
            return list(results)
        found: dict[str, dict[str, TaskScore]] = {}
        todo: dict[Mixture, str] = {}
        for r in results:
            m = r.mixture
            if m.key in found:
                continue
            kept = {n: s for n, s in r.tasks.items() if n in self.tasks}  # a race's own
            if len(kept) == len(self.tasks):
                found[m.key] = kept
                continue
            key = self.pool_key(m)
            found[m.key] = {**self.cache.lookup_tasks(self.tasks, m, key), **kept}
            if len(found[m.key]) < len(self.tasks):
                todo[m] = key
        tasks = [t for t in self.tasks.values() if any(t.name not in found[m.key] for m in todo)]
        for s in self.executor.run(list(todo), None, tasks):
            found[s.mixture.key] = self._record_tasks(s, todo[s.mixture], found[s.mixture.key])
        return [
            dataclasses.replace(r, tasks={n: found[r.mixture.key][n] for n in self.tasks})
            for r in results
        ]

    def _record_tasks(
        self, scored: Scored, key: str, have: Mapping[str, TaskScore]
    ) -> dict[str, TaskScore]:
        """``have`` plus the new task scores in ``scored`` (stored), in task order."""
        found = dict(have)
        for name, s in scored.tasks.items():
            if name not in found:
                found[name] = self.cache.record_task(self.tasks[name], scored.mixture, key, s)
        return {n: found[n] for n in self.tasks if n in found}

    def all_subsets(self, max_size: int | None = None) -> list[Mixture]:
        """Every uniform subset of the pool's partitions (Gray-code order)."""
        return self.layout.all_subsets(max_size)

    def export(
        self,
        mixture: MixtureLike,
        out: str | os.PathLike,
        *,
        dtype: str = "fp32",
        adapter: bool = False,
        overwrite: bool = False,
    ) -> Path:
        """Write ``mixture``'s merged proxy as a Hugging Face folder (``ablate.export``)."""
        return export(
            self.pool,
            as_mixture(mixture),
            out,
            dtype=dtype,
            adapter=adapter,
            overwrite=overwrite,
            layout=self.layout,
            model=self.merged,
        )

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the executor's workers (Ray actors); the evaluator stays usable locally."""
        self.executor.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def results_frame(results: Iterable[EvalResult]) -> pd.DataFrame:
    """One row per mixture x domain (plus ``macro``), with the mixture as text and weights."""
    import pandas as pd

    records = []
    for r in results:
        for row in r.rows():
            records.append(
                {
                    "mixture": str(r.mixture),
                    "size": len(r.mixture.names),
                    "domain": row["domain"],
                    "tokens": row["tokens"],
                    "nll": row["nll"],
                    "ppl": row["ppl"],
                    "bpb": row["bpb"],
                    "cached": r.cached,
                    "weights": r.mixture.as_dict(),
                }
            )
    return pd.DataFrame.from_records(records)


__all__ = [
    "MACRO",
    "AblateError",
    "DocScores",
    "DomainScore",
    "EvalResult",
    "LevelShift",
    "Evaluator",
    "EvaluatorConfig",
    "MixtureLike",
    "ScoringBatch",
    "as_mixture",
    "gray_subsets",
    "results_frame",
    "target_nll",
]
