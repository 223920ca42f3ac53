"""Score any mixture of a pool by merging its members and measuring perplexity.

``Evaluator`` is a thin composition of the layers below it, with the face users know
(``evaluate``, ``evaluate_many``, ``run_many``, ``all_subsets``):

* ``MemberLayout`` (``ablate.engine.layout``): members as rows, weights and cache key of a mixture;
* ``MergedModel`` (``ablate.engine.merge``): the member stack, the merge and the Gray-code walk;
* ``Scorer`` (``ablate.engine.scoring``): one eval set's windows and batches, scored per domain or
  per document; another eval set on the same weights is another ``Scorer``;
* ``ResultsCache`` (``ablate.engine.results``): store lookup before scoring, record after;
* an ``Executor`` (``ablate.engine.executor``): scores here, or on Ray actors
  (``executor="ray"``, ``ablate.distributed``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.data.evalset import EvalSet
from ablate.engine.executor import Executor, ExecutorName, LocalExecutor
from ablate.engine.layout import MemberLayout, gray_subsets
from ablate.engine.results import ResultsCache, ResultsStore
from ablate.engine.scoring import (
    MACRO,
    DocScores,
    DomainScore,
    EvalResult,
    Scorer,
    ScoringBatch,
    target_nll,
)
from ablate.mixture import Mixture
from ablate.pool import Pool
from ablate.pool.errors import AblateError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ablate.data.tasks import Task, TaskScorer
    from ablate.engine.merge import MergedModel
    from ablate.pool.storage import MemberRecord

log = logging.getLogger(__name__)

MixtureLike = Mixture | str | Mapping[str, float] | Sequence[str]


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
    """What evaluators of one pool share, whatever eval set each scores: the members'
    layout, the lazily loaded model, its scorers and the executor."""

    pool: Pool
    layout: MemberLayout
    device_name: str | None
    batch_tokens: int
    progress: bool
    store: ResultsStore | None
    stack_budget_bytes: int | None = None
    executor: Executor | None = None
    model: MergedModel | None = None
    scorers: dict[str, Scorer] = field(default_factory=dict)
    task_scorers: dict[str, TaskScorer] = field(default_factory=dict)

    def merged(self) -> MergedModel:
        if self.model is None:
            from ablate.engine.merge import MergedModel
            from ablate.pool.train import pick_device

            self.model = MergedModel(
                self.pool,
                self.layout.members,
                device=pick_device(self.device_name),
                progress=self.progress,
                stack_budget_bytes=self.stack_budget_bytes,
            )
        return self.model

    def scorer(self, eval_set: EvalSet) -> Scorer:
        if eval_set.fingerprint not in self.scorers:
            self.scorers[eval_set.fingerprint] = Scorer(
                self.merged(), eval_set, batch_tokens=self.batch_tokens
            )
        return self.scorers[eval_set.fingerprint]

    def task_scorer(self, task: Task) -> TaskScorer:
        if task.fingerprint not in self.task_scorers:
            from ablate.data.tasks import TaskScorer

            self.task_scorers[task.fingerprint] = TaskScorer(
                self.merged(), task, batch_tokens=self.batch_tokens
            )
        return self.task_scorers[task.fingerprint]


def _shared(name: str, doc: str) -> property:
    """A read-only attribute of what every evaluator of one pool shares (``_Loaded``)."""
    return property(lambda self: getattr(self._loaded, name), doc=doc)


class Evaluator:
    """Merges pool members into mixtures and scores them on an eval set.

    Args:
        pool: A ``Pool`` or its path.
        eval_data: Eval files (same formats as corpora), or an already loaded ``EvalSet``.
        by: Metadata field that names each eval document's domain (one domain if None).
        device: ``"cpu"``, ``"cuda"``, or None for CUDA when available (Ray: the actors').
        batch_tokens: Tokens per forward pass; bounds activation memory.
        store: Use the pool's ``results.sqlite`` (True), another path, or no store (False).
        executor: ``"local"`` scores here; ``"ray"`` fans mixtures out over ``workers`` Ray
            actors that each stack the pool once (only this process touches the store).
        workers: Ray actors (``executor="ray"``).
        address: Ray cluster address; None starts a local cluster (or uses ``RAY_ADDRESS``).
        gpus_per_worker: GPUs (or a fraction) per Ray actor; 0 keeps actors on CPU.
        stack_budget_bytes: Most memory the ``[N, P]`` member stack may take in this
            process; a larger stack streams from the memory-mapped members (None: 70% of
            what is free).
        tasks: Multiple-choice task files (``FILE`` or ``NAME=FILE``, ``ablate.data.tasks``)
            scored with every mixture: ``evaluate(m).tasks[NAME]``. Task items are scored
            in this process (also with ``executor="ray"``).
    """

    def __init__(
        self,
        pool: Pool | str | os.PathLike,
        eval_data: EvalSet | str | os.PathLike | Sequence[str | os.PathLike],
        *,
        by: str | None = None,
        text_field: str = "text",
        device: str | None = None,
        batch_tokens: int = 8192,
        store: bool | str | os.PathLike = True,
        progress: bool = True,
        executor: ExecutorName = "local",
        workers: int = 2,
        address: str | None = None,
        gpus_per_worker: float = 0.0,
        stack_budget_bytes: int | None = None,
        tasks: Sequence[str | os.PathLike | Task] = (),
    ):
        if executor not in ("local", "ray"):
            raise AblateError(f"executor must be 'local' or 'ray', got {executor!r}")
        if executor == "ray":
            from ablate.distributed import check_ray_settings

            check_ray_settings(workers, gpus_per_worker)  # before tokenizing anything
        pool = pool if isinstance(pool, Pool) else Pool.open(pool)
        eval_set = (
            eval_data
            if isinstance(eval_data, EvalSet)
            else EvalSet.load(pool, eval_data, by=by, text_field=text_field)
        )
        from ablate.data.tasks import load_tasks

        task_set: dict[str, Task] = load_tasks(pool, tasks)  # bad lines fail before any write
        path = pool.path / "results.sqlite" if store is True else store
        loaded = _Loaded(
            pool=pool,
            layout=MemberLayout(pool),
            device_name=device,
            batch_tokens=batch_tokens,
            progress=progress,
            store=ResultsStore(path) if path else None,
            stack_budget_bytes=stack_budget_bytes,
        )
        if executor == "ray":
            from ablate.distributed import RayExecutor

            loaded.executor = RayExecutor(
                pool,
                loaded.layout,
                workers=workers,
                address=address,
                device=device,
                gpus_per_worker=gpus_per_worker,
                batch_tokens=batch_tokens,
            )
        else:
            loaded.executor = LocalExecutor(loaded.merged, loaded.scorer, loaded.layout)
        self._loaded = loaded
        self.eval_set = eval_set
        self.tasks = task_set
        self.cache = ResultsCache(loaded.store, eval_set)

    def on(self, eval_set: EvalSet) -> Evaluator:
        """An evaluator on another eval set (e.g. a held-out split) that shares this one's
        loaded members, executor and results store: nothing is loaded twice."""
        other = copy.copy(self)  # the same _Loaded: model, scorers, executor, store
        other.eval_set = eval_set
        other.cache = ResultsCache(self.store, eval_set)
        return other

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
        from ablate.pool.train import pick_device

        return pick_device(self.device_name)

    @property
    def merged(self) -> MergedModel:
        """Members loaded and stacked in this process on first use (cache hits never pay
        for it; with the Ray executor only validation and the gradient search need it)."""
        return self._loaded.merged()

    def scorer(self, eval_set: EvalSet | None = None) -> Scorer:
        """The ``Scorer`` of ``eval_set`` (default: this evaluator's) on the merged model."""
        return self._loaded.scorer(self.eval_set if eval_set is None else eval_set)

    def task_scorer(self, task: Task) -> TaskScorer:
        """The ``TaskScorer`` of ``task`` on the merged model (built once)."""
        return self._loaded.task_scorer(task)

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
        executor scores the rest once each, and every new score is stored as it arrives
        (an interrupted run keeps them)."""
        from tqdm.auto import tqdm

        mixtures = [as_mixture(m) for m in mixtures]
        out: dict[str, EvalResult | None] = {}
        todo: dict[Mixture, str] = {}
        for m in mixtures:
            if m.key not in out:
                key = self.pool_key(m)  # checks the mixture's names
                out[m.key] = self.cache.lookup(m, key)
                if out[m.key] is None:
                    todo[m] = key
        walk, rest = self.layout.walk_order(list(todo))
        show = self.progress if progress is None else progress
        with tqdm(
            total=len(todo), desc="mixtures", disable=not show or not todo, unit="mix"
        ) as bar:
            # The local executor yields while its model still holds ``m``: task items are
            # scored on those weights now rather than merged again afterwards.
            here = bool(self.tasks) and isinstance(self.executor, LocalExecutor)
            for m, scores in self.executor.run(walk, rest, self.eval_set):
                out[m.key] = self.cache.record(m, scores, todo[m])
                if here:
                    from ablate.data.tasks import score_tasks_here

                    tasks = score_tasks_here(self, m, todo[m], {})
                    out[m.key] = dataclasses.replace(out[m.key], tasks=tasks)
                bar.update(1)
        results = [out[m.key] for m in mixtures]
        if self.tasks:  # task items: store first, else merged and scored here
            from ablate.data.tasks import with_task_scores

            results = with_task_scores(self, results)
        return results  # type: ignore[return-value]

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
        from ablate.export import export

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
    "Evaluator",
    "MixtureLike",
    "ScoringBatch",
    "as_mixture",
    "gray_subsets",
    "results_frame",
    "target_nll",
]
