"""Really trained models for mixtures: the ground truth the simulator is checked against.

Na et al. (EMNLP 2024) validate merged-model perplexity against models trained on the
union of a mixture's partitions: same seed model, same recipe, and k base units of tokens
for a mixture that covers k units, sampled in proportion to the mixture weights. Each such
model is stored like a pool member, under ``POOL/validation/<key>/`` with a
``validation.json`` record, written atomically and keyed by everything that defines it
(mixture, units and their data, seed model, recipe), so a later run reuses it and never
trains it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ablate.mixture import Mixture
from ablate.pool.atomic import sha256_json
from ablate.pool.ensure import SeedModel, Target
from ablate.pool.ensure import ensure_trained as ensure_one
from ablate.pool.errors import CorruptMemberError, PoolError
from ablate.pool.method import method_of
from ablate.pool.pool import member_seed
from ablate.pool.storage import TrainedRecord, member_id, read_record
from ablate.pool.tokens import TokenizedPartition
from ablate.pool.weights import load_tensors

if TYPE_CHECKING:
    import numpy as np

    from ablate.evaluator import Evaluator
    from ablate.pool import Pool
    from ablate.pool.ensure import Target

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
RECORD = "validation.json"
_KEY_CHARS = 24  # 96 bits of the sha256: unique for any realistic number of mixtures


class ValidationRecord(TrainedRecord):
    """One really trained mixture model; its presence on disk marks it finished."""

    key: str = Field(description="Folder name: hash of mixture, units, seed model and recipe.")
    mixture: tuple[tuple[str, float], ...] = Field(description="Normalised partition weights.")
    units: tuple[tuple[str, str, float], ...] = Field(
        description="(member id, unit data sha256, sampling weight) of every unit trained on."
    )
    tokens: int = Field(description="Token budget: k base units for a mixture of k units.")


Budget = Literal["proportional", "fixed"]


@dataclass(frozen=True)
class TrainingPlan:
    """What a mixture's real model trains on: units, their sampling weights, the budget.

    ``proportional`` (Na et al.): k base units of tokens for a mixture of k units, sequences
    drawn at random by weight. ``fixed`` (what a mixture optimizer decides): every mixture
    trains on the same ``tokens``, each partition supplying exactly its weight's share.
    ``repeat`` > 0 is the same model again with another training seed (the noise ceiling).
    """

    mixture: Mixture
    units: tuple[tuple[str, int, str, float], ...]  # (partition, unit, data sha256, weight)
    key: str
    tokens: int
    budget: Budget = "proportional"
    repeat: int = 0

    @property
    def k(self) -> int:
        return len(self.units)


def plan_for(
    ev: Evaluator,
    mixture: Mixture,
    *,
    budget: Budget = "proportional",
    budget_tokens: int | None = None,
    repeat: int = 0,
) -> TrainingPlan:
    """The real model a mixture needs (raises MixtureError on unknown partitions).

    Keys of proportional, first-repeat plans are the ones earlier versions wrote, so models
    trained before are reused; the budget and the repeat enter the key otherwise.
    """
    w = ev.member_weights(mixture)  # checks the names
    manifest = ev.pool.manifest
    units = tuple(
        (m.partition, m.unit, m.data_hash, round(float(w[i]), 12))
        for i, m in enumerate(ev.members)
        if w[i] > 0
    )
    what: dict = {
        "mixture": mixture.key,
        "units": [(p, u, h, x) for p, u, h, x in units],
        "base": manifest.base_sha256,
        # Real models train plainly (no member-only levers): a pool whose members use them
        # is checked against the same ground truth as one whose members do not.
        "recipe": manifest.recipe.real().model_dump(mode="json"),
    }
    if budget == "fixed":
        tokens = budget_tokens or manifest.recipe.unit_tokens
        what["budget"] = {"kind": "fixed", "tokens": tokens}
    else:
        tokens = len(units) * manifest.recipe.unit_tokens
    if repeat:
        what["repeat"] = repeat
    key = sha256_json(what)[:_KEY_CHARS]
    return TrainingPlan(mixture, units, key, tokens, budget, repeat)


def folder_of(pool: Pool, key: str) -> Path:
    return pool.path / VALIDATION_DIR / key


def read_validation(pool: Pool, key: str) -> ValidationRecord | None:
    """The finished real model under ``key``, or None if it was never trained."""
    f = folder_of(pool, key) / RECORD
    if not f.is_file():
        return None
    rec = read_record(f, ValidationRecord)  # type: ignore[type-var]
    if rec.key != key or rec.base_sha256 != pool.manifest.base_sha256:
        raise PoolError(
            f"{f} does not belong to this pool's seed model; delete {f.parent} and run again"
        )
    return rec


def ensure_trained(
    ev: Evaluator, plans: list[TrainingPlan], *, progress: bool = True, device: str | None = None
) -> tuple[list[ValidationRecord], int]:
    """Train every plan without a finished model; returns (records in plan order, trained now).

    A lock file per model keeps two concurrent runs from training the same model: the second
    waits for the first and then reuses its result (``ablate.pool.ensure``, ``if_locked="wait"``).
    """
    from tqdm.auto import tqdm

    pool = ev.pool
    records: dict[str, ValidationRecord] = {}
    todo = []
    for plan in plans:
        rec = read_validation(pool, plan.key)
        if rec is None:
            todo.append(plan)
        else:
            records[plan.key] = rec
    # Loaded once, on first use; restored to the seed's weights before each later model.
    seed = SeedModel(
        partial(pool.load_base_model, check=True), keep_state=pool.method.trains_in_place
    )
    trained = 0
    with tqdm(
        total=sum(p.k for p in todo), desc="validation models", unit="unit", disable=not progress
    ) as bar:
        for plan in todo:
            done = ensure_one(
                _target(pool, plan),
                seed,
                pool.manifest.recipe.real(),
                base_sha256=pool.manifest.base_sha256,
                # Another run is training this model: wait for it, then reuse its result.
                if_locked="wait",
                progress=progress,
                device=device,
            )
            rec = done.record
            assert rec is not None  # "wait" never skips
            if done.trained:
                trained += 1
                log.info(
                    "trained validation model %s (%s): loss %.4f",
                    plan.key,
                    plan.mixture,
                    rec.final_loss,
                )
            records[plan.key] = rec
            bar.update(plan.k)
    return [records[p.key] for p in plans], trained


def _target(pool: Pool, plan: TrainingPlan) -> Target[ValidationRecord]:
    """The plan's model: k units of tokens over the plan's units (weighted), stored by key."""

    recipe = pool.manifest.recipe
    # One unit: the member's own seed, so the real model *is* the member (a built-in check).
    ident = member_id(*plan.units[0][:2]) if plan.k == 1 else f"validation/{plan.key}"
    if plan.repeat:
        ident = f"{ident}/repeat{plan.repeat}"

    def sources() -> list[np.ndarray]:
        parts = {p: TokenizedPartition.open(pool.data_folder / p) for p, *_ in plan.units}
        return [parts[p].unit_stream(u) for p, u, _, _ in plan.units]

    return Target(
        folder=folder_of(pool, plan.key),
        label=str(plan.mixture)[:40],
        read=partial(read_validation, pool, plan.key),
        record=partial(
            ValidationRecord,
            key=plan.key,
            mixture=plan.mixture.weights,
            units=tuple((f"{p}/{u}", h, w) for p, u, h, w in plan.units),
            tokens=plan.tokens,
        ),
        record_file=RECORD,
        sources=sources,
        source_weights=tuple(w for *_, w in plan.units),
        tokens=plan.tokens,
        seed=member_seed(recipe.seed, ident),
        exact_mix=plan.budget == "fixed",
    )


def load_into(ev: Evaluator, rec: ValidationRecord) -> None:
    """Put a real model's weights into the evaluator's model skeleton, so that its
    ``Scorer`` scores the real model exactly as it scores a merge."""

    pool = ev.pool
    folder = folder_of(pool, rec.key)
    try:
        tensors = load_tensors(folder / rec.weights_file, sha256=rec.weights_sha256)
    except CorruptMemberError:
        raise CorruptMemberError(
            f"validation model {folder} is missing, corrupt or modified (sha256 mismatch); "
            "delete that folder and run again to retrain it"
        ) from None
    tensors = method_of(rec).full_state(tensors, pool.load_base_model, pool.manifest.recipe)
    try:
        ev.merged.load_state(tensors, f"validation model {rec.key}")
    except CorruptMemberError as e:
        raise CorruptMemberError(f"{e}; delete {folder} and run again") from None
