"""Scale out: grow a pool and score mixtures on a Ray cluster; join a torchrun process group.

The simulator's two costly loops parallelise naturally (Na et al., EMNLP 2024: members are
trained independently, and mixtures are scored independently):

* ``grow_with_ray``: one Ray task per missing member. Every task opens the pool by path on
  the shared filesystem and trains through ``Pool.grow_one``, the same lock-and-train path as
  the local ``Pool.grow``, so a member is never trained twice, whichever runs overlap.
* ``RayExecutor`` (``Evaluator(..., executor="ray", workers=K)``): Ray actors that each
  stack the pool once and score batches of mixtures, on any eval set the driver sends. The
  driver alone reads and writes the results store: one SQLite writer, and the actors never
  need the store's filesystem to honour SQLite's locks.
* ``torchrun_group``: lets ``ablate pool grow`` run under ``torchrun``/``accelerate launch``
  (one member trained data-parallel over the processes; see ``ablate.pool.train.train_model``).

Ray is optional (``pip install 'ablate[ray]'``) and imported only inside these functions.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from ablate.engine.executor import Scored
from ablate.pool import Pool
from ablate.pool.errors import AblateError, PoolError

if TYPE_CHECKING:
    from ablate.data.evalset import EvalSet
    from ablate.data.tasks import Task
    from ablate.engine.layout import MemberLayout
    from ablate.engine.scoring import DomainScore, TaskScore
    from ablate.mixture import Mixture
    from ablate.pool.storage import MemberRecord

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'ablate[ray]'"
# A worker lost to a crash or a preempted node reruns its task this many times; an I/O
# error on the shared filesystem (OSError) is retried as well. Training errors are not:
# a member trains deterministically, so a second try would fail the same way.
TASK_RETRIES = 2
# Mixtures per actor call: about this many batches per worker balance the load while
# each batch stays long enough for the Gray-code walk to save most of its merges.
BATCHES_PER_WORKER = 4
MAX_BATCH = 256


@cache
def ray_available() -> bool:
    """Whether ray is installed (cached: a find_spec, not an import)."""
    return importlib.util.find_spec("ray") is not None


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """The ``ray`` module, joined to the cluster at ``address`` or to a new local one.

    Nothing happens when Ray is already initialised (tests, notebooks, a driver that
    configured Ray itself).
    """
    if not ray_available():
        raise AblateError(f"the Ray backend needs ray; install it with {RAY_EXTRA}")
    import ray

    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            # An existing cluster says how many CPUs it has; Ray refuses num_cpus here.
            ray.init(address=address or None)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    return ray


# ---------------------------------------------------------------------- growing
def _grow_member(pool_path: str, ref: tuple[str, int, str], device: str) -> MemberRecord | None:
    """Ray task body: train one member into the shared pool folder, or None if not ours."""
    from ablate.pool.pool import UnitRef

    pool = Pool.open(pool_path)
    unit = UnitRef(*ref)
    if pool.member(unit.partition, unit.unit) is not None:  # cheap check before loading the seed
        return None
    base = pool.load_base_model(check=True)
    return pool.grow_one(unit, base, progress=False, device=device)


def grow_with_ray(
    pool: Pool | str | os.PathLike,
    only: Sequence[str] | None = None,
    *,
    address: str | None = None,
    gpus_per_member: float = 0.0,
    progress: bool = True,
) -> list[MemberRecord]:
    """Train every missing member as one Ray task each; returns the members trained now.

    The pool folder must be on a filesystem that every node mounts at the same path.
    Members that another run is training (or has finished) are skipped, exactly as in
    ``Pool.grow``. Failed tasks are retried (``TASK_RETRIES``); members that still fail
    are named in one error after the others have finished.

    Args:
        pool: The pool or its path.
        only: Train only these partitions.
        address: Ray cluster address; None starts a local cluster (or uses ``RAY_ADDRESS``).
        gpus_per_member: GPUs (or a fraction of one) per task; 0 trains on CPU.
        progress: Show a bar that advances as members finish.
    """
    from tqdm.auto import tqdm

    pool = pool if isinstance(pool, Pool) else Pool.open(pool)
    if gpus_per_member < 0:
        raise AblateError(f"--gpus-per-member must be >= 0, got {gpus_per_member}")
    todo = pool.missing(only)
    if not todo:
        return []
    ray = connect(address)
    task = ray.remote(_grow_member).options(
        num_cpus=1, num_gpus=gpus_per_member, max_retries=TASK_RETRIES, retry_exceptions=[OSError]
    )
    path = str(pool.path.resolve())
    device = "cuda" if gpus_per_member > 0 else "cpu"
    pending = {task.remote(path, tuple(ref), device): ref for ref in todo}
    trained: list[MemberRecord] = []
    failed: list[tuple[str, BaseException]] = []
    try:
        with tqdm(
            total=len(todo), desc="members (ray)", unit="member", disable=not progress
        ) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = pending.pop(done[0])
                try:
                    rec = ray.get(done[0])
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None) or e
                    failed.append((ref.member_id, cause))
                    log.error("member %s failed: %s", ref.member_id, cause)
                else:
                    if rec is None:
                        log.warning("member %s was trained by another run; skipped", ref.member_id)
                    else:
                        trained.append(rec)
                    bar.set_postfix_str(ref.member_id, refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        for obj in pending:  # a cancelled task releases its lock; finished members stay
            ray.cancel(obj)
        raise
    if failed:
        if len(failed) == 1 and isinstance(failed[0][1], AblateError):
            raise failed[0][1]  # a user's error (say, a changed seed model) reads as one line
        named = "; ".join(
            f"{mid} ({type(c).__name__}: {(str(c).splitlines() or [''])[0]})" for mid, c in failed
        )
        raise PoolError(f"{len(failed)} member(s) failed on Ray: {named}")
    trained.sort(key=lambda r: (r.partition, r.unit))
    return trained


# ---------------------------------------------------------------------- evaluating
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

    def __init__(self, pool_path: str, expected: list[str], device: str | None, batch_tokens: int):
        from ablate.engine.executor import Scorers
        from ablate.engine.layout import MemberLayout

        pool = Pool.open(pool_path)
        layout = MemberLayout(pool)
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
            actor.remote(path, expected, self.device, self.batch_tokens) for _ in range(n)
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


# ---------------------------------------------------------------------- torchrun
@contextmanager
def torchrun_group(device: str | None = None) -> Iterator[bool]:
    """Join the process group that torchrun/accelerate describe in the environment.

    Yields whether this process is rank 0 (the one that prints). Outside a launcher
    (``WORLD_SIZE`` unset or 1) it does nothing and yields True.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield True
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield dist.get_rank() == 0
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist.get_rank() == 0
    finally:
        dist.destroy_process_group()


__all__ = [
    "RayExecutor",
    "check_ray_settings",
    "connect",
    "grow_with_ray",
    "ray_available",
    "torchrun_group",
]
