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
from typing import TYPE_CHECKING

from pydantic import Field

from ablate.mixture import Mixture
from pool.atomic import remove_stale_temporaries, sha256_json
from pool.errors import CorruptMemberError, PoolError
from pool.storage import TrainedRecord, member_id, read_record

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ablate.evaluator import Evaluator
    from pool import Pool

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


@dataclass(frozen=True)
class TrainingPlan:
    """What a mixture's real model trains on: units, their sampling weights, the budget."""

    mixture: Mixture
    units: tuple[tuple[str, int, str, float], ...]  # (partition, unit, data sha256, weight)
    key: str
    tokens: int

    @property
    def k(self) -> int:
        return len(self.units)


def plan_for(ev: Evaluator, mixture: Mixture) -> TrainingPlan:
    """The real model a mixture needs (raises MixtureError on unknown partitions)."""
    w = ev.member_weights(mixture)  # checks the names
    manifest = ev.pool.manifest
    units = tuple(
        (m.partition, m.unit, m.data_hash, round(float(w[i]), 12))
        for i, m in enumerate(ev.members)
        if w[i] > 0
    )
    key = sha256_json(
        {
            "mixture": mixture.key,
            "units": [(p, u, h, x) for p, u, h, x in units],
            "base": manifest.base_sha256,
            "recipe": manifest.recipe.model_dump(mode="json"),
        }
    )[:_KEY_CHARS]
    return TrainingPlan(mixture, units, key, len(units) * manifest.recipe.unit_tokens)


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
    waits for the first and then reuses its result.
    """
    from filelock import FileLock
    from tqdm.auto import tqdm

    pool = ev.pool
    root = pool.path / VALIDATION_DIR
    root.mkdir(parents=True, exist_ok=True)
    records: dict[str, ValidationRecord] = {}
    todo = []
    for plan in plans:
        rec = read_validation(pool, plan.key)
        if rec is None:
            todo.append(plan)
        else:
            records[plan.key] = rec
    base_state: dict[str, torch.Tensor] | None = None
    base: PreTrainedModel | None = None
    trained = 0
    with tqdm(
        total=sum(p.k for p in todo), desc="validation models", unit="unit", disable=not progress
    ) as bar:
        for plan in todo:
            with FileLock(str(root / f".{plan.key}.lock")):
                rec = read_validation(pool, plan.key)  # another run may have finished it meanwhile
                if rec is None:
                    # Leftovers of an interrupted run of this model only; we hold its lock.
                    remove_stale_temporaries(root, prefix=f".{plan.key}.")
                    if base is None:
                        base = pool.load_base_model(check=True)
                        # Full training changes ``base`` in place: keep the seed to restore it.
                        # LoRA trains a copy, so ``base`` stays the seed.
                        if pool.manifest.recipe.method == "full":
                            base_state = {k: v.clone() for k, v in base.state_dict().items()}
                    elif base_state is not None:
                        base.load_state_dict(base_state)
                    rec = train_plan(pool, plan, base, progress=progress, device=device)
                    trained += 1
            records[plan.key] = rec
            bar.update(plan.k)
    return [records[p.key] for p in plans], trained


def train_plan(
    pool: Pool,
    plan: TrainingPlan,
    base: PreTrainedModel,
    *,
    progress: bool = True,
    device: str | None = None,
) -> ValidationRecord:
    """Continue ``base`` on the plan's units (weighted) for k units of tokens; store it."""
    from tqdm.auto import tqdm

    from pool.pool import member_seed
    from pool.tokens import TokenizedPartition
    from pool.train import continue_pretraining, write_trained

    recipe = pool.manifest.recipe
    parts = {p: TokenizedPartition.open(pool.data_folder / p) for p, *_ in plan.units}
    # One unit: the member's own seed, so the real model *is* the member (a built-in check).
    ident = member_id(*plan.units[0][:2]) if plan.k == 1 else f"validation/{plan.key}"
    seed = member_seed(recipe.seed, ident)
    sources = [parts[p].unit_stream(u) for p, u, _, _ in plan.units]
    with tqdm(
        total=recipe.steps_for(plan.tokens),
        desc=str(plan.mixture)[:40],
        leave=False,
        disable=not progress,
    ) as bar:
        model, result = continue_pretraining(
            base,
            recipe,
            sources,
            [w for *_, w in plan.units],
            plan.tokens,
            seed=seed,
            device=device,
            progress=bar,
        )
    rec = write_trained(
        folder_of(pool, plan.key),
        model,
        result,
        recipe,
        seed=seed,
        base_sha256=pool.manifest.base_sha256,
        record=partial(
            ValidationRecord,
            key=plan.key,
            mixture=plan.mixture.weights,
            units=tuple((f"{p}/{u}", h, w) for p, u, h, w in plan.units),
            tokens=plan.tokens,
        ),
        record_file=RECORD,
    )
    log.info("trained validation model %s (%s): loss %.4f", plan.key, plan.mixture, rec.final_loss)
    return rec


def load_into(ev: Evaluator, rec: ValidationRecord) -> None:
    """Write a real model's weights into the evaluator's skeleton (its parameters are views
    into ``ev.merged.flat``), so ``ev.score_current()`` and friends score it."""
    import torch

    from pool.weights import load_tensors

    pool = ev.pool
    folder = folder_of(pool, rec.key)
    try:
        tensors = load_tensors(folder / rec.weights_file, sha256=rec.weights_sha256)
    except CorruptMemberError:
        raise CorruptMemberError(
            f"validation model {folder} is missing, corrupt or modified (sha256 mismatch); "
            "delete that folder and run again to retrain it"
        ) from None
    if rec.method == "lora":
        tensors = _lora_to_full(pool, tensors)
    params = dict(ev.merged.model.named_parameters())
    if set(tensors) != set(params):
        odd = sorted(set(tensors) ^ set(params))[:3]
        raise CorruptMemberError(
            f"validation model {rec.key} does not match the seed model's architecture ({odd}); "
            f"delete {folder} and run again"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].reshape(p.shape))


def _lora_to_full(pool: Pool, adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Seed weights plus a trained LoRA adapter, merged into plain parameters (peft)."""
    from peft import set_peft_model_state_dict

    from pool.weights import wrap_lora

    model = wrap_lora(pool.load_base_model(), pool.manifest.recipe.lora)
    set_peft_model_state_dict(model, adapter)
    plain = model.merge_and_unload()
    return {k: p.detach() for k, p in plain.named_parameters()}
