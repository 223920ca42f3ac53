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

LoRA members: the Fisher of each adapted weight at the member's effective weights (seed plus
its adapter), keyed by the weight's name; the merge then weighs each member's update
``s B_i A_i`` of that weight by it (the rest of a LoRA merge is the seed).

Layout: ``POOL/members/<partition>/<unit>/fisher.safetensors`` (one fp32 tensor per member
tensor, same names; LoRA: per adapted weight) and ``fisher.json`` (``FisherRecord``, written
last: its presence marks the Fisher finished, and it names the member weights it belongs
to); files, resume and checks are ``ablate.pool.statistics``'. Nothing else changes, so
pools without Fisher keep their behaviour and their keys.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from ablate.pool.statistics import (
    ensure_stats,
    load_stats,
    member_model,
    require_stats,
    stat_paths,
    stat_record,
)
from ablate.pool.storage import FISHER, FISHER_FILE, FISHER_RECORD, MemberRecord

if TYPE_CHECKING:
    import torch

    from ablate.pool.pool import Pool

# Batches of the pool's batch size: 16 x 16 sequences is one epoch of a 30K-token unit at
# sequence length 128; 32 gave the same fidelity-suite table within 0.03 (docs/accuracy.md).
DEFAULT_BATCHES = 16


def _compute(pool: Pool, rec: MemberRecord, *, batches: int, device: str | None):
    tensors, n = member_fisher(pool, rec, batches=batches, device=device)
    mean = float(sum(t.double().sum() for t in tensors.values()))
    mean /= sum(t.numel() for t in tensors.values())
    return tensors, {"sequences": n, "mean": mean}


# Where a member's Fisher statistic lives, its record, all of them, its tensors
# (``ablate.pool.statistics`` for this kind).
fisher_paths = partial(stat_paths, stat=FISHER)
fisher_record = partial(stat_record, stat=FISHER)
require_fisher = partial(require_stats, stat=FISHER)
load_fisher = partial(load_stats, stat=FISHER)


def member_fisher(
    pool: Pool, rec: MemberRecord, *, batches: int = DEFAULT_BATCHES, device: str | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """The empirical diagonal Fisher of one member and the sequences it averages: of every
    parameter of a full-weight member, of the adapted weights of a LoRA member.

    A LoRA member's Fisher is that of its effective weights ``W0 + s B A`` (the gradient of
    the loss with respect to the merged weight, ``sum_t g_t x_t^T`` per sequence), not of its
    factors: the merge averages products ``B_i A_i``, whose curvature is the weight's, where
    a Fisher of ``A`` and ``B`` would weigh each factor apart. Same data as the member trained
    on (``Pool.member_sources``), drawn in a fixed order that depends only on the member, so
    a rerun gives the same tensors.
    """
    import torch

    from ablate.pool.pool import member_seed
    from ablate.pool.train import SequenceSampler, next_token_loss, pick_device

    recipe = pool.manifest.recipe
    dev = pick_device(device)
    model, adapted = member_model(pool, rec, dev)
    params = {}  # what the Fisher is of; the rest is frozen (no gradient computed)
    for name, p in model.named_parameters():
        p.requires_grad_(adapted is None or name in adapted)
        if p.requires_grad:
            params[name] = p
    sampler = SequenceSampler(
        pool.member_sources(rec.partition, rec.unit),
        pool.member_source_weights(),
        recipe.seq_len,
        member_seed(recipe.member_rng_seed, f"fisher:{rec.member_id}"),
    )
    acc = {name: torch.zeros_like(p) for name, p in params.items()}  # same shapes, fp32
    n = 0
    for _ in range(batches):
        batch = torch.from_numpy(sampler.batch(recipe.batch_size)).to(dev)  # (B, T+1)
        for seq in batch:
            loss = next_token_loss(model, seq[None])  # one sequence: its own gradient
            grads = torch.autograd.grad(loss, list(params.values()))
            for (name, _), g in zip(params.items(), grads, strict=True):
                acc[name].add_(g.detach().square())
            n += 1
    return {k: (v / n).cpu().contiguous() for k, v in acc.items()}, n


# Compute what members lack (resumable); returns the records computed now. ``compute`` is
# looked up when called, so that tests can interrupt ``member_fisher``.
ensure_fisher = partial(
    ensure_stats,
    stat=FISHER,
    compute=lambda pool, rec, **kw: _compute(pool, rec, **kw),
    batches=DEFAULT_BATCHES,
)


__all__ = [
    "DEFAULT_BATCHES",
    "FISHER",
    "FISHER_FILE",
    "FISHER_RECORD",
    "ensure_fisher",
    "fisher_paths",
    "fisher_record",
    "load_fisher",
    "member_fisher",
    "require_fisher",
]
