"""Grow a pool beyond one process: one Ray task per member, or one member over torchrun.

Members train independently (Na et al., EMNLP 2024), so growth parallelises naturally:

* ``grow_with_ray``: one Ray task per missing member. Every task opens the pool by path on
  the shared filesystem and trains through ``Pool.grow_one``, the same lock-and-train path as
  the local ``Pool.grow``, so a member is never trained twice, whichever runs overlap.
* ``torchrun_group``: lets ``ablate pool grow`` run under ``torchrun``/``accelerate launch``
  (one member trained data-parallel over the processes; see ``ablate.pool.train.train_model``).

Ray is optional (``pip install 'ablate-sim[ray]'``) and imported only inside these functions;
``connect`` is shared with the Ray scoring executor (``ablate.engine.ray``).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from tqdm.auto import tqdm

from ablate.pool.errors import AblateError, PoolError
from ablate.pool.pool import Pool, UnitRef
from ablate.pool.prepare import prepare_merge
from ablate.pool.storage import MemberRecord

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'ablate-sim[ray]'"
# A worker lost to a crash or a preempted node reruns its task this many times; an I/O
# error on the shared filesystem (OSError) is retried as well. Training errors are not:
# a member trains deterministically, so a second try would fail the same way.
TASK_RETRIES = 2


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
    pool = Pool.open(pool_path)
    unit = UnitRef(*ref)
    if pool.member(unit.partition, unit.unit) is not None:  # cheap check before loading the seed
        return None
    base = pool.load_base_model(check=True)
    rec = pool.grow_one(unit, base, progress=False, device=device)
    if rec is not None:  # what the pool's merge reads of it, on the same worker
        prepare_merge(pool, [rec], progress=False, device=device)
    return rec


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
    pool = pool if isinstance(pool, Pool) else Pool.open(pool)
    if gpus_per_member < 0:
        raise AblateError(f"--gpus-per-member must be >= 0, got {gpus_per_member}")
    todo = pool.missing(only)
    if not todo:
        prepare_merge(pool, progress=progress)  # what an interrupted run left
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
    # Each task computed its member's statistic; this finds what a task lost to a crash
    # after its member was written.
    prepare_merge(pool, progress=progress)
    trained.sort(key=lambda r: (r.partition, r.unit))
    return trained


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
        # A trained member's DDP wrapper (its reducer holds the group) can sit in a
        # reference cycle; freed only at interpreter exit, its gloo threads abort the rank
        # ("terminate called without an active exception", SIGABRT; test_torchrun_grow_two_
        # processes, ~1 in 10 runs under load). Free it while the group is still alive.
        gc.collect()
        dist.destroy_process_group()


__all__ = [
    "RAY_EXTRA",
    "TASK_RETRIES",
    "connect",
    "grow_with_ray",
    "ray_available",
    "torchrun_group",
]
