"""Diagonal Fisher information of each member, for Fisher-weighted merging.

Matena & Raffel (NeurIPS 2022, "Merging Models with Fisher-Weighted Averaging"): if each
member's loss near its optimum is the quadratic ``0.5 (theta - theta_i)^T F_i (theta - theta_i)``,
the optimum of the mixture's loss ``sum_i w_i L_i`` is ``(sum_i w_i F_i)^-1 sum_i w_i F_i theta_i``;
with diagonal ``F_i`` that is a per-parameter weighted average (``ablate.engine.merges.fisher``).
A parameter that partition i barely touches (small ``F_i``) then takes its value from the
members whose data does constrain it, as training on the mixture would do: with Adam every
member moves each of its parameters about a full step, touched or not.

The estimator is the *empirical* Fisher: the mean over sequences of the squared gradient of
the member's own next-token loss on the tokens it trained on (same streams, same sequence
length), at the member's weights. The true Fisher samples targets from the model instead of
reading them from the data; we use the data's tokens because the quantity being
approximated is the curvature of the loss on that data (the mixture's training objective),
for which the empirical Fisher is the standard diagonal Gauss-Newton stand-in, and because
it needs one backward pass per sequence and no sampling. One gradient per sequence (not per
batch): the squared mean gradient of a batch would underestimate the Fisher by about the
batch size and mix sequences' signs.

Layout: ``POOL/members/<partition>/<unit>/fisher.safetensors`` (one fp32 tensor per member
tensor, same names) and ``fisher.json`` (``FisherRecord``, written last: its presence marks
the Fisher finished, and it names the member weights it belongs to). Nothing else changes, so
pools without Fisher keep their behaviour and their keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ablate.pool.atomic import write_bytes, write_json
from ablate.pool.errors import CorruptMemberError, PoolError
from ablate.pool.storage import (
    FISHER_FILE,
    FISHER_RECORD,
    FisherRecord,
    MemberRecord,
    read_record,
    utc_now,
)
from ablate.pool.weights import load_tensors

if TYPE_CHECKING:
    import torch

    from ablate.pool.pool import Pool

# Batches of the pool's batch size: 16 x 16 sequences is one epoch of a 30K-token unit at
# sequence length 128; 32 gave the same fidelity-suite table within 0.03 (docs/accuracy.md).
DEFAULT_BATCHES = 16
# LoRA members merge exactly through their factors (sum_i w_i B_i A_i); a Fisher-weighted
# average of the products is not a sum of factor products (it would need every product's
# full matrix), and a Fisher of the factors weighs A and B separately, which is not the
# product's curvature: refused, not approximated.
LORA_REFUSAL = (
    "the Fisher merge is for full-weight pools; this pool is LoRA: use --merge average, "
    "or grow a full-weight pool (--method full) to merge by Fisher"
)


def fisher_paths(pool: Pool, rec: MemberRecord) -> tuple[Path, Path]:
    """(tensors, record) of a member's Fisher."""
    folder = pool.member_folder(rec.partition, rec.unit)
    return folder / FISHER_FILE, folder / FISHER_RECORD


def fisher_record(pool: Pool, rec: MemberRecord) -> FisherRecord | None:
    """The member's finished Fisher record, or None if it has none for its current weights."""
    _, record = fisher_paths(pool, rec)
    if not record.is_file():
        return None
    got = read_record(record, FisherRecord)
    return got if got.weights_sha256 == rec.weights_sha256 else None


def require_fisher(pool: Pool, members: Sequence[MemberRecord]) -> list[FisherRecord]:
    """Every member's finished Fisher record, in order.

    Raises:
        PoolError: a member has none (or one of older weights), naming the command to run.
    """
    if pool.method.merges_by_factors:
        raise PoolError(LORA_REFUSAL)
    out = []
    missing = []
    for rec in members:
        got = fisher_record(pool, rec)
        if got is None:
            missing.append(rec.member_id)
        else:
            out.append(got)
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise PoolError(
            f"the Fisher merge needs each member's Fisher information, which {shown} lack(s); "
            f"run `ablate pool fisher {pool.path}` first"
        )
    return out


def load_fisher(pool: Pool, rec: MemberRecord) -> dict[str, torch.Tensor]:
    """A member's diagonal Fisher by parameter name (fp32, checked against its record).

    Raises:
        PoolError: it has not been computed (or belongs to older weights of the member).
    """
    got = fisher_record(pool, rec)
    if got is None:
        raise PoolError(
            f"member {rec.member_id} has no Fisher information for the Fisher merge; "
            f"run `ablate pool fisher {pool.path}` first"
        )
    tensors, _ = fisher_paths(pool, rec)
    try:
        return load_tensors(tensors, sha256=got.fisher_sha256)
    except CorruptMemberError as e:
        raise PoolError(f"{e}; or rerun `ablate pool fisher {pool.path} --force`") from None


def member_fisher(
    pool: Pool, rec: MemberRecord, *, batches: int = DEFAULT_BATCHES, device: str | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """The empirical diagonal Fisher of one full-weight member and the sequences it averages.

    Same data as the member trained on (``Pool.member_sources``), drawn in a fixed order that
    depends only on the member, so a rerun gives the same tensors.
    """
    import torch
    import torch.nn.functional as F

    from ablate.pool.pool import member_seed
    from ablate.pool.train import SequenceSampler, pick_device

    if pool.method.merges_by_factors:
        raise PoolError(LORA_REFUSAL)
    recipe = pool.manifest.recipe
    dev = pick_device(device)
    model = pool.load_base_model()
    params = dict(model.named_parameters())
    saved = load_tensors(pool.weights_path(rec), sha256=rec.weights_sha256)
    if set(saved) != set(params):
        raise CorruptMemberError(
            f"member {rec.member_id} does not have the seed model's architecture; "
            "delete it and run `ablate pool grow`"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    model.to(dev).eval()  # eval: no dropout, the same function the merge will score
    sampler = SequenceSampler(
        pool.member_sources(rec.partition, rec.unit),
        pool.member_source_weights(),
        recipe.seq_len,
        member_seed(recipe.seed, f"fisher:{rec.member_id}"),
    )
    acc = {name: torch.zeros_like(p) for name, p in params.items()}  # same shapes, fp32
    n = 0
    for _ in range(batches):
        batch = torch.from_numpy(sampler.batch(recipe.batch_size)).to(dev)  # (B, T+1)
        for seq in batch:
            x, y = seq[None, :-1], seq[None, 1:]  # (1, T) inputs, (1, T) targets
            logits = model(input_ids=x).logits  # (1, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            grads = torch.autograd.grad(loss, list(params.values()))
            for (name, _), g in zip(params.items(), grads, strict=True):
                acc[name].add_(g.detach().square())
            n += 1
    return {k: (v / n).cpu().contiguous() for k, v in acc.items()}, n


def ensure_fisher(
    pool: Pool,
    *,
    batches: int = DEFAULT_BATCHES,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> list[FisherRecord]:
    """Compute the Fisher of every member that lacks one (resumable: each member's files are
    written atomically, its record last); returns the records computed now."""
    from safetensors.torch import save

    if batches < 1:
        raise PoolError(f"--batches must be at least 1, got {batches}")
    members = pool.members
    if not members:
        raise PoolError("the pool has no trained members; run `ablate pool grow` first")
    if pool.method.merges_by_factors:
        raise PoolError(LORA_REFUSAL)
    todo = [
        r
        for r in members
        if force or (got := fisher_record(pool, r)) is None or got.batches != batches
    ]
    done = []
    for rec in tqdm(todo, desc="fisher", unit="member", disable=not progress):
        tensors, n = member_fisher(pool, rec, batches=batches, device=device)
        path, record = fisher_paths(pool, rec)
        # The old record goes first: until the new one lands the member has no Fisher (an
        # interrupted recompute is redone), never a record of other tensors.
        record.unlink(missing_ok=True)
        data = save(tensors, metadata={"format": "pt"})
        write_bytes(path, data)
        mean = float(sum(t.double().sum() for t in tensors.values()))
        mean /= sum(t.numel() for t in tensors.values())
        got = FisherRecord(
            member=rec.member_id,
            weights_sha256=rec.weights_sha256,
            batches=batches,
            sequences=n,
            seq_len=pool.manifest.recipe.seq_len,
            fisher_sha256=hashlib.sha256(data).hexdigest(),  # the bytes just written
            mean=mean,
            created_at=utc_now(),
        )
        write_json(record, got.model_dump(mode="json"))
        done.append(got)
    return done
