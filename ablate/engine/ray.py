"""Score mixtures on Ray actors, each holding the stacked pool once.

``RayExecutor`` (``Evaluator(..., executor="ray", workers=K)``) implements the same
``Executor`` protocol as the local one, and each actor is built from the same engine pieces
(``Scorers``: layout, merged model, scorers), so a mixture scores the same wherever it runs.
The driver alone reads and writes the results store: one SQLite writer, and the actors
never need the store's filesystem to honour SQLite's locks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ablate.engine.executor import Scored, Scorers
from ablate.engine.layout import MemberLayout
from ablate.engine.merges import PoolMerge
from ablate.pool.distributed import RAY_EXTRA, TASK_RETRIES, connect, ray_available
from ablate.pool.errors import AblateError, PoolError
from ablate.pool.pool import Pool

if TYPE_CHECKING:
    from ablate.data.evalset import EvalSet
    from ablate.data.tasks import Task
    from ablate.engine.scoring import DomainScore, TaskScore
    from ablate.mixture import Mixture

log = logging.getLogger(__name__)

# Mixtures per actor call: about this many batches per worker balance the load while
# each batch stays long enough for the Gray-code walk to save most of its merges.
BATCHES_PER_WORKER = 4
MAX_BATCH = 256


def check_ray_settings(workers: int, gpus_per_worker: float) -> None:
    """Refuse settings no Ray executor can use, before anything is loaded or tokenized."""
    if workers < 1:
        raise AblateError(f"--workers must be at least 1, got {workers}")
    if gpus_per_worker < 0:
        raise AblateError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if not ray_available():
        raise AblateError(f"the Ray backend needs ray; install it with {RAY_EXTRA}")


class _EvalWorker:
    """Ray actor: the pool stacked once (``Scorers``), scoring batches of mixtures on any
    eval set and tasks the driver sends."""

    def __init__(
        self,
        pool_path: str,
        expected: list[str],
        device: str | None,
        batch_tokens: int,
        merge: PoolMerge = "average",
    ):
        pool = Pool.open(pool_path)
        layout = MemberLayout(pool, merge=merge)
        if [m.weights_sha256 for m in layout.members] != expected:
            raise PoolError(
                f"pool {pool_path} changed while it was being evaluated; run the evaluation again"
            )
        self.scorers = Scorers(
            pool, layout, device_name=device, batch_tokens=batch_tokens, progress=False
        )

    def run(
        self, mixtures: list[Mixture], eval_set: EvalSet | None, tasks: list[Task]
    ) -> list[tuple[str, dict[str, DomainScore], dict[str, TaskScore]]]:
        return [
            (s.mixture.key, dict(s.scores), dict(s.tasks))
            for s in self.scorers.score(mixtures, eval_set, tasks)
        ]


class RayExecutor:
    """Scores batches of mixtures on Ray actors that each hold the stacked pool.

    Actors start on the first mixture that is not in the store and live until ``close()``
    (``Evaluator.close`` or the end of its ``with`` block), so repeated calls, and other
    eval sets (a search's held-out split), pay for loading the pool once per actor.

    Args:
        pool: The pool (on a filesystem every node mounts at the same path).
        layout: Its members as rows (checked against what each actor loads).
        workers: Number of actors (each stacks the whole pool once).
        address: Ray cluster address; None starts a local cluster (or uses ``RAY_ADDRESS``).
        device: Actors' device (``"cpu"``/``"cuda"``); None picks CUDA when the actor has a GPU.
        gpus_per_worker: GPUs (or a fraction) per actor; 0 keeps actors on CPU.
        batch_tokens: Tokens per forward pass in each actor.
    """

    def __init__(
        self,
        pool: Pool,
        layout: MemberLayout,
        *,
        workers: int = 2,
        address: str | None = None,
        device: str | None = None,
        gpus_per_worker: float = 0.0,
        batch_tokens: int = 8192,
    ):
        check_ray_settings(workers, gpus_per_worker)
        if device == "cuda" and gpus_per_worker == 0:
            gpus_per_worker = 1.0  # Ray hides every GPU from an actor that asked for none
        self.pool = pool
        self.layout = layout
        self.workers = workers
        self.address = address
        self.device = device if device is not None else ("cuda" if gpus_per_worker > 0 else "cpu")
        self.gpus_per_worker = gpus_per_worker
        self.batch_tokens = batch_tokens
        self._actors: list[Any] = []
        self._eval_refs: dict[str, Any] = {}  # eval-set fingerprint -> object in Ray's store

    def _start(self) -> list[Any]:
        if self._actors:
            return self._actors
        ray = connect(self.address)
        resources = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            room = int(resources.get("GPU", 0) // self.gpus_per_worker)
        else:
            room = int(resources.get("CPU", 1))
        n = self.workers
        if room < n:
            # An actor that can never be placed would leave its batches waiting forever.
            log.warning(
                "the Ray cluster has room for %d of %d evaluation workers; using %d",
                room,
                n,
                max(room, 1),
            )
            n = max(room, 1)
        actor = ray.remote(_EvalWorker).options(
            num_cpus=1,
            num_gpus=self.gpus_per_worker,
            max_restarts=TASK_RETRIES,
            max_task_retries=TASK_RETRIES,
        )
        expected = [m.weights_sha256 for m in self.layout.members]
        path = str(self.pool.path.resolve())
        self._actors = [
            actor.remote(path, expected, self.device, self.batch_tokens, self.layout.merge)
            for _ in range(n)
        ]
        return self._actors

    def run(
        self,
        mixtures: Sequence[Mixture],
        eval_set: EvalSet | None,
        tasks: Sequence[Task] = (),
    ) -> Iterator[Scored]:
        """Contiguous batches of the Gray-code walk (each still patches cheaply), then the
        rest, spread over the actors; yields each batch's mixtures as it comes back."""
        walk, rest = self.layout.walk_order(mixtures)
        order = [*walk, *rest]
        if not order:
            return
        actors = self._start()
        import ray
        from ray.util import ActorPool

        eval_ref = None
        if eval_set is not None:
            if eval_set.fingerprint not in self._eval_refs:
                self._eval_refs[eval_set.fingerprint] = ray.put(eval_set)
            eval_ref = self._eval_refs[eval_set.fingerprint]
        size = min(MAX_BATCH, max(1, math.ceil(len(order) / (BATCHES_PER_WORKER * len(actors)))))
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        by_key = {m.key: m for m in order}
        for scored in ActorPool(actors).map_unordered(
            lambda a, batch: a.run.remote(batch, eval_ref, list(tasks)), batches
        ):
            for key, scores, task_scores in scored:
                yield Scored(by_key[key], scores, task_scores)

    def close(self) -> None:
        """Stop the actors (the Ray cluster itself is left running)."""
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = []


__all__ = ["BATCHES_PER_WORKER", "MAX_BATCH", "RayExecutor", "check_ray_settings"]
