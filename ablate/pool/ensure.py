"""Train a model exactly once, however many processes ask for it: members and validation models.

A pool member (``Pool.grow_one``) and a validation model (``ablate.validation``) are both a
``Target``: a folder that appears complete (weights + record) or not at all. Training one is
always the same sequence, here once: take the folder's lock, read its record again (another
process may have finished it since the caller looked), sweep this folder's leftovers of an
interrupted write, hand out the seed model with the seed's weights, continue pre-training,
write weights and record atomically. The callers differ in one decision, ``if_locked``: what
to do when another process holds the lock.

Under ``torchrun`` rank 0 alone locks, decides, sweeps and writes; the other ranks follow
its decision and train alongside it (data parallel).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from ablate.pool.atomic import remove_stale_temporaries
from ablate.pool.train import broadcast_from_main, continue_pretraining, is_main_rank, write_trained

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel

    from ablate.pool.recipe import Recipe
    from ablate.pool.storage import TrainedRecord

R = TypeVar("R", bound="TrainedRecord")

log = logging.getLogger(__name__)

IfLocked = Literal["skip", "wait"]


class SeedModel:
    """The seed model, handed out with the seed's weights every time it is asked for.

    A method that trains in place (full) changes the model it is given, so the seed's
    weights are kept and restored before each later use; LoRA trains a copy and the model
    stays the seed.
    """

    def __init__(
        self,
        load: Callable[[], PreTrainedModel],
        *,
        keep_state: bool = False,
        state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """
        Args:
            load: Returns the seed model; called once, on first use (so nothing loads when
                nothing trains).
            keep_state: Keep the seed's weights when it loads and restore them before each
                later use (pass ``Method.trains_in_place``).
            state: The seed's ``state_dict``, kept by the caller: restored before every
                use, the first included (the model ``load`` returns may have been trained
                since, as in ``Pool.grow``, which shares one model across members).
        """
        self._load = load
        self._keep_state = keep_state
        self._model: PreTrainedModel | None = None
        self._state = state

    def get(self) -> PreTrainedModel:
        """The seed model, holding the seed's weights."""
        if self._model is None:
            self._model = self._load()
            if self._state is None:
                if self._keep_state:
                    self._state = {k: v.clone() for k, v in self._model.state_dict().items()}
                return self._model
        if self._state is not None:
            self._model.load_state_dict(self._state)
        return self._model


@dataclass(frozen=True)
class Target(Generic[R]):
    """One model to train at most once, and what it trains on.

    Attributes:
        folder: Where it is written (atomically); its lock is ``.<name>.lock`` beside it.
        label: Names it in the progress bar and in log lines.
        read: Its finished record, or None when it is absent or stale (then it is retrained).
        record: Builds its record from the ``TrainedRecord`` fields (see ``write_trained``).
        record_file: The record's file name inside ``folder``.
        sources: Opens the token streams it trains on (called only when it trains).
        source_weights: Sampling weight of each stream.
        tokens: Token budget.
        seed: Seed of its data order and initialisation.
        exact_mix: Draw each source's exact share of the sequences (fixed-budget mixtures)
            rather than a source at random per sequence (``SequenceSampler``).
        second_moments: Opens the AdamW second moments it starts from (called only when it
            trains; None: a fresh optimizer; ``ablate.pool.preconditioner``).
    """

    folder: Path
    label: str
    read: Callable[[], R | None]
    record: Callable[..., R]
    record_file: str
    sources: Callable[[], Sequence[np.ndarray]]
    source_weights: tuple[float, ...]
    tokens: int
    seed: int
    exact_mix: bool = False
    second_moments: Callable[[], Mapping[str, torch.Tensor]] | None = None


@dataclass(frozen=True)
class Ensured(Generic[R]):
    """What ``ensure_trained`` did: the finished record, and whether this call trained it.

    ``record`` is None only when the target was skipped (``if_locked="skip"`` and another
    process holds its lock).
    """

    record: R | None
    trained: bool


def ensure_trained(
    target: Target[R],
    seed_model: SeedModel,
    recipe: Recipe,
    *,
    base_sha256: str,
    if_locked: IfLocked,
    progress: bool = True,
    device: str | None = None,
) -> Ensured[R]:
    """Train ``target`` from the seed unless it is finished, under its lock.

    Args:
        target: The model to train.
        seed_model: The seed, asked for only when ``target`` trains.
        recipe: The pool's recipe (its method says what trains and what is saved).
        base_sha256: The seed's fingerprint, recorded with the weights.
        if_locked: What to do when another process holds the target's lock.
            ``"skip"``: return at once, ``Ensured(None, trained=False)``, and leave the target
            to that process (``Pool.grow``: concurrent growers share out the missing members,
            each moving on to the next one).
            ``"wait"``: block until the lock is released, then return the record the other
            process wrote (or train, if it failed) (validation: the caller scores that model
            next, so it needs it now).
        progress: Show a progress bar over the training steps.
        device: Training device (default: CUDA when available, else CPU).

    Returns:
        ``Ensured(record, trained)``.
    """
    if if_locked not in ("skip", "wait"):
        raise ValueError(f'if_locked must be "skip" or "wait", got {if_locked!r}')
    folder = target.folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
    main = is_main_rank()  # under torchrun rank 0 locks and decides; the other ranks follow
    acquired = False
    if main:
        try:
            if if_locked == "skip":
                lock.acquire(timeout=0)
            else:
                lock.acquire()  # blocks until the other process releases it
            acquired = True
        except Timeout:
            log.warning("%s is being trained by another process; skipped", target.label)
    try:
        # Another run may have finished it between the caller's look and the lock.
        done = target.read() if acquired else None
        held, done = broadcast_from_main((acquired, done))
        if not held or done is not None:
            return Ensured(done, trained=False)
        if main:
            # Only this target's leftovers: we hold its lock, while other processes may be
            # staging its siblings in the same folder right now.
            remove_stale_temporaries(folder.parent, prefix=f".{folder.name}.")
        base = seed_model.get()
        with tqdm(
            total=recipe.steps_for(target.tokens),
            desc=target.label,
            leave=False,
            disable=not (progress and main),
            dynamic_ncols=True,
        ) as bar:
            model, result = continue_pretraining(
                base,
                recipe,
                target.sources(),
                target.source_weights,
                target.tokens,
                seed=target.seed,
                device=device,
                progress=bar,
                exact_mix=target.exact_mix,
                second_moments=target.second_moments() if target.second_moments else None,
            )
        # Under torchrun every rank holds the same weights; rank 0 alone writes them.
        rec = (
            write_trained(
                folder,
                model,
                result,
                recipe,
                seed=target.seed,
                base_sha256=base_sha256,
                record=target.record,
                record_file=target.record_file,
            )
            if main
            else None
        )
        return Ensured(broadcast_from_main(rec), trained=True)
    finally:
        if acquired:
            lock.release()
