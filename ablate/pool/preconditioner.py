"""The members' shared AdamW preconditioner (``Recipe.member_preconditioner = "seed"``).

With a fresh AdamW each member normalises its own gradients: a parameter its partition
barely touches still moves about a full step within the first few, while in training on a
mixture the other partitions set it. Continued pre-training resumes the seed's optimizer
instead. This gives every member the second moments that optimizer would hold: the mean
squared (clipped) gradient over a few batches of the seed data at the seed's weights,
estimated once per pool, the same for every member. The first moment starts at zero and
the step count past Adam's bias corrections, so the first steps are small where the seed
data's gradients were large and the member's are not.

On the fidelity suite this estimate and the tiny seed's own saved moments ranked mixtures
alike (docs/accuracy.md). The real validation models never use it (``Recipe.real()``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.pool.atomic import sha256_file, write_bytes, write_json
from ablate.pool.errors import PoolError
from ablate.pool.storage import PreconditionerRecord, read_record, utc_now
from ablate.pool.train import SequenceSampler, next_token_loss
from ablate.pool.weights import load_tensors

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ablate.pool.recipe import Recipe

PRECONDITIONER_FILE = "preconditioner.safetensors"
PRECONDITIONER_RECORD = "preconditioner.json"
BATCHES = 20  # about the memory of AdamW's second moment at beta2 = 0.95
_SAMPLER_SEED = 0x5EED


def estimate_second_moments(
    model: PreTrainedModel,
    tokens: np.ndarray,
    recipe: Recipe,
    *,
    batches: int = BATCHES,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Mean over ``batches`` batches of the seed data of each trainable parameter's squared
    gradient, clipped as training clips it, at ``model``'s weights (fp32, on the CPU)."""
    import torch

    stream = np.asarray(tokens, dtype=np.int64)
    sampler = SequenceSampler([stream], [1.0], recipe.seq_len, _SAMPLER_SEED)
    model.to(device).train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for _ in range(batches):
        batch = torch.from_numpy(sampler.batch(recipe.batch_size)).to(device)
        next_token_loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        for a, p in zip(acc, params, strict=True):
            a += p.grad.float().square() / batches
        model.zero_grad(set_to_none=True)
    model.eval()
    return {n: a.cpu().contiguous() for (n, _), a in zip(named, acc, strict=True)}


def write_preconditioner(
    pool_path: Path,
    model: PreTrainedModel,
    tokens: np.ndarray,
    recipe: Recipe,
    *,
    base_sha256: str,
    seed_data_sha256: str,
    device: torch.device | str = "cpu",
) -> PreconditionerRecord:
    """Estimate the preconditioner and write it into the pool (file, then record; each
    through a temporary file and a rename)."""
    from safetensors.torch import save

    moments = estimate_second_moments(model, tokens, recipe, device=device)
    data = save(moments, metadata={"format": "pt"})
    write_bytes(pool_path / PRECONDITIONER_FILE, data)
    sha = hashlib.sha256(data).hexdigest()
    rec = PreconditionerRecord(
        base_sha256=base_sha256,
        seed_data_sha256=seed_data_sha256,
        batches=BATCHES,
        batch_size=recipe.batch_size,
        seq_len=recipe.seq_len,
        sha256=sha,
        created_at=utc_now(),
    )
    write_json(pool_path / PRECONDITIONER_RECORD, rec.model_dump(mode="json"))
    return rec


def load_preconditioner(pool_path: Path, base_sha256: str) -> dict[str, torch.Tensor]:
    """The pool's preconditioner, checked against its record and the pool's seed."""
    problem = preconditioner_problem(pool_path, base_sha256)
    if problem is not None:
        raise PoolError(
            f"the members' preconditioner of {pool_path} cannot be used ({problem}), and this "
            "pool's members start from it (--member-preconditioner seed): restore "
            f"{PRECONDITIONER_FILE} and {PRECONDITIONER_RECORD} from a backup or start a new pool"
        )
    return load_tensors(pool_path / PRECONDITIONER_FILE)


def preconditioner_problem(pool_path: Path, base_sha256: str) -> str | None:
    """What ``pool verify`` reports about the preconditioner (None: it checks out)."""
    record = pool_path / PRECONDITIONER_RECORD
    if not record.is_file():
        return f"{PRECONDITIONER_RECORD} missing"
    try:
        rec = read_record(record, PreconditionerRecord)
    except PoolError:
        return f"{PRECONDITIONER_RECORD} unreadable"
    if rec.base_sha256 != base_sha256:
        return f"{PRECONDITIONER_FILE} estimated for another seed model"
    tensors = pool_path / PRECONDITIONER_FILE
    if not tensors.is_file():
        return f"{PRECONDITIONER_FILE} missing"
    if sha256_file(tensors) != rec.sha256:
        return f"{PRECONDITIONER_FILE} sha256 mismatch"
    return None


__all__ = [
    "BATCHES",
    "PRECONDITIONER_FILE",
    "PRECONDITIONER_RECORD",
    "estimate_second_moments",
    "load_preconditioner",
    "preconditioner_problem",
    "write_preconditioner",
]
