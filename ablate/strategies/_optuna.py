"""Shared plumbing of the Optuna-backed strategies (``tpe``, ``gp``): ask, decode, tell.

Subsets are encoded as one boolean (categorical) parameter per free partition, or, when a
small ``--max-size`` makes coin flips nearly always too large (``slot_count``), as
``max_size`` categorical slots that each hold a partition or nothing; weights as
one float in [0, 1] per allowed partition (values under 0.05 read as 0, so sparse mixtures
are reachable), normalised onto the simplex by ``SearchSpace.project``. A subset that breaks the member rules (empty, or over
``--max-size``) is never scored: it is pruned (TPE ranks pruned trials below every scored
one) or, for samplers that ignore pruned trials, told a penalty beyond the worst score so
far. With an RDB ``storage`` several workers share one study (Optuna's distributed mode);
a file lock in the pool folder makes "ask, then check whether another worker is already
scoring this mixture" atomic, so no two workers score one mixture: a worker that draws a
mixture another one is scoring waits for that score and then reads it from the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from ablate.extras import require_extra
from ablate.mixture import Mixture
from ablate.pool.atomic import sha256_json
from ablate.strategies.base import SearchContext, Trial

if TYPE_CHECKING:
    import optuna

    from ablate.strategies.space import SearchSpace

log = logging.getLogger(__name__)

_MAX_INFEASIBLE = 100  # infeasible draws in a row before the sampler is deemed stuck
_POLL_S = 0.2  # how often a waiting worker looks at the twin trial it waits for
_WAIT_S = 600.0  # longest wait for another worker's twin trial before scoring it here
_SNAP = 0.05  # weight-space parameters below this are read as 0 (a partition left out)
_HUGE = 1e300  # told instead of an infinite perplexity (Optuna wants finite values)
_MIN_FEASIBLE = 0.05  # share of feasible coin-flip subsets below which slots encode them
_EMPTY_SLOT = "-"  # a slot that holds no partition


def slot_count(space: SearchSpace) -> int:
    """Membership slots for a subset space where one boolean per partition rarely fits.

    With one fair coin per free partition, a draw has about half of them, so with 128
    partitions and ``--max-size 4`` almost every draw breaks the member rules. When under
    ``_MIN_FEASIBLE`` of coin draws would be feasible, a subset is encoded instead as
    ``free_limit`` categorical slots, each a partition or empty (repeats collapse): every
    draw then obeys ``--max-size``. Returns 0 for the one-boolean-per-partition encoding.
    """
    if space.continuous or space.max_size is None:
        return 0
    f, k = len(space.free), space.free_limit
    lo = 0 if space.require else 1
    feasible = sum(math.comb(f, j) for j in range(lo, k + 1))
    return k if feasible < _MIN_FEASIBLE * 2**f else 0


def default_study_name(ctx: SearchContext, strategy: str) -> str:
    """Same pool, eval documents, target, space and strategy: same study (workers meet)."""
    ev = ctx.evaluator
    key = sha256_json(
        {
            "members": [(m.member_id, m.weights_sha256) for m in ev.members],
            "eval": ev.eval_set.fingerprint,
            "target": ctx.target.spec,
            "space": ctx.space.describe(),
            "strategy": strategy,
        }
    )
    return f"ablate-{strategy}-{key[:16]}"


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_dead_local(worker: str | None) -> bool:
    """Whether ``host:pid`` names a process on this host that no longer runs."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    """An exited process its parent has not reaped yet still answers ``kill(pid, 0)``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS) or gone meanwhile
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class OptunaStrategy:
    """Base of the Optuna strategies; subclasses provide ``make_sampler``."""

    name = "optuna"
    penalise_infeasible = False  # see _reject
    uses_storage = True  # search() accepts --storage for these strategies only

    def __init__(self, ctx: SearchContext):
        require_extra("optuna", f"the {self.name} search strategy")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # an INFO line per trial is noise
        self._ctx = ctx
        self._space = ctx.space
        # Hashed, because Optuna's RandomState streams for seeds 0, 1, 2, ... start alike (the
        # first draws of seeds 1, 3 and 4 are all the full set of six partitions); and workers
        # sharing a study must not draw the same random start-up points.
        salt = "" if ctx.storage is None else f"/{_worker_id()}"
        seed = int(hashlib.sha256(f"ablate-search/{ctx.seed}{salt}".encode()).hexdigest()[:8], 16)
        n_startup = max(3, min(10, ctx.budget // 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = self.make_sampler(
                seed=seed, n_startup=n_startup, shared=ctx.storage is not None
            )
        self._lock: Any = contextlib.nullcontext()
        if ctx.storage is not None:
            # One lock per storage, in the pool folder that every worker opens anyway.
            lock_name = hashlib.sha256(ctx.storage.encode()).hexdigest()[:16]
            self._lock = FileLock(str(ctx.evaluator.pool.path / f".search-{lock_name}.lock"))
        name = ctx.study_name or default_study_name(ctx, self.name)
        # Two workers creating a fresh RDB schema at once collide ("table alembic_version
        # already exists"): create or load the study under the lock.
        with self._lock:
            self.study: optuna.Study = optuna.create_study(
                storage=ctx.storage,
                study_name=name,
                sampler=sampler,
                direction="minimize",
                load_if_exists=True,
            )
        d = optuna.distributions
        self._slots = slot_count(self._space)
        if self._space.continuous:
            self._dists = {p: d.FloatDistribution(0.0, 1.0) for p in self._space.allowed}
        elif self._slots:
            choices = (_EMPTY_SLOT, *self._space.free)
            self._dists = {
                f"slot{i}": d.CategoricalDistribution(choices) for i in range(self._slots)
            }
        else:
            self._dists = {p: d.CategoricalDistribution((False, True)) for p in self._space.free}
        self._pending: list[tuple[optuna.Trial, Mixture]] = []
        self._told: set[str] = set()

    def make_sampler(
        self, *, seed: int, n_startup: int, shared: bool
    ) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    # ------------------------------------------------------------------ encoding
    def _decode(self, params: dict[str, Any]) -> Mixture | None:
        space = self._space
        if space.continuous:
            # Raw values below _SNAP count as zero so that sparse mixtures (and the simplex's
            # vertices, often where optima lie) are reachable, not just approached.
            return space.project(
                {p: params[p] if params[p] >= _SNAP else 0.0 for p in space.allowed}
            )
        if self._slots:
            chosen = {params[f"slot{i}"] for i in range(self._slots)} - {_EMPTY_SLOT}
            names = set(space.require) | chosen
        else:
            names = set(space.require) | {p for p in space.free if params[p]}
        return Mixture.uniform(sorted(names)) if space.feasible(names) else None

    def _reject(self, trial: optuna.Trial) -> None:
        """Tell an infeasible subset: pruned, or a penalty beyond the worst feasible score.

        TPE ranks pruned trials below every complete one, which is what an infeasible
        subset deserves. Samplers that ignore pruned trials (GP) would draw it again, so
        they are told ``worst + (worst - best)`` once two feasible scores exist.
        """
        from optuna.trial import TrialState

        trial.set_user_attr("infeasible", True)
        values = []
        if self.penalise_infeasible:
            done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            values = [
                t.value for t in done if not t.user_attrs.get("infeasible") and t.value is not None
            ]
        if len(values) >= 2:
            self.study.tell(trial, 2 * max(values) - min(values))
        else:
            self.study.tell(trial, state=TrialState.PRUNED)

    def _twin(self, trial: optuna.Trial, key: str) -> optuna.trial.FrozenTrial | None:
        """An earlier running trial of another worker on the same mixture, if any.

        Only earlier trials count: two workers that drew the same mixture at once would
        otherwise each wait for the other. The earliest one scores; the others read the store.
        """
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            same = t.number < trial.number and t.user_attrs.get("mixture") == key
            if same and not _is_dead_local(t.user_attrs.get("worker")):
                return t
        return None

    def _wait_for(self, twin: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        deadline = time.monotonic() + _WAIT_S
        while time.monotonic() < deadline:
            (now,) = [t for t in self.study.get_trials(deepcopy=False) if t.number == twin.number]
            if now.state != TrialState.RUNNING or _is_dead_local(now.user_attrs.get("worker")):
                return
            time.sleep(_POLL_S)
        log.warning(
            "trial %d of another worker did not finish in %.0f s; scoring its mixture here",
            twin.number,
            _WAIT_S,
        )

    # ------------------------------------------------------------------ protocol
    def propose(self, n: int) -> list[Mixture]:
        for _ in range(_MAX_INFEASIBLE):
            with self._lock:
                trial = self.study.ask(self._dists)
                mix = self._decode(trial.params)
                if mix is None:
                    self._reject(trial)
                    continue
                trial.set_user_attr("mixture", mix.key)
                trial.set_user_attr("worker", _worker_id())
                twin = self._twin(trial, mix.key)
            if twin is not None:
                self._wait_for(twin)  # its score lands in the results store; ours is then a hit
            self._pending.append((trial, mix))
            return [mix]
        log.warning(
            "%s proposed %d infeasible subsets in a row; stopping", self.name, _MAX_INFEASIBLE
        )
        return []

    def observe(self, trials: Sequence[Trial]) -> None:
        for (trial, mix), t in zip(self._pending, trials, strict=False):
            scored = not t.result.cached and mix.key not in self._told
            trial.set_user_attr("scored", scored)
            self._told.add(mix.key)
            self.study.tell(trial, t.score if math.isfinite(t.score) else _HUGE)
        self._pending.clear()
