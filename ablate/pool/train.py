"""Continued pre-training of one member (or one validation model) from the seed.

Same recipe and token budget for every member: AdamW, linear warmup then cosine decay to
``min_lr_ratio * lr``, global gradient-norm clipping, bf16 autocast on CUDA and fp32 on
CPU. A recipe's member-only levers (``member_lr``, ``member_schedule``) apply to whatever
trains with that recipe: members get the pool's recipe, the seed and the real validation
models get ``Recipe.real()``, which has none. Data order depends only on the seed, so a member trains identically wherever and
whenever it is trained.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ablate.pool.atomic import staged_dir, write_json
from ablate.pool.errors import PoolError
from ablate.pool.method import method_of
from ablate.pool.recipe import Recipe
from ablate.pool.storage import utc_now
from ablate.pool.weights import save_tensors

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from transformers import PreTrainedModel

    from ablate.pool.storage import TrainedRecord

T = TypeVar("T")
R = TypeVar("R", bound="TrainedRecord")

# The step count a member resumes AdamW at (``ablate.pool.preconditioner``): past it, the
# bias corrections are 1 in float32 at betas (0.9, 0.95), so the given second moments are
# used as they are and the first moment ramps up from 0.
RESUMED_STEP = 1000
_CURVE_POINTS = 100  # loss-curve resolution kept in member.json (enough to plot, small on disk)


class SequenceSampler:
    """Draws training sequences of ``seq_len + 1`` tokens from weighted token streams.

    Each source is cut into non-overlapping windows, visited in a fresh random order per
    epoch; each sequence picks its source with probability proportional to its weight
    (one source = plain epoch shuffling). A source shorter than one window is repeated.

    With ``total`` (sequences the run will draw), the number of sequences from each source
    is fixed instead: the weights' exact share of ``total`` (largest remainder), in a random
    order. A fixed-budget mixture then trains on exactly its proportions, not on a binomial
    draw of them (at 500 sequences a 0.2 share would vary by about 10%).
    """

    def __init__(
        self,
        sources: Sequence[np.ndarray],
        weights: Sequence[float],
        seq_len: int,
        seed: int,
        *,
        total: int | None = None,
    ):
        if not sources or len(sources) != len(weights):
            raise ValueError("need one weight per source and at least one source")
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"source weights must be finite, non-negative and not all zero, got {weights}"
            )
        self.p = w / w.sum()
        self.window = seq_len + 1
        self.rng = np.random.default_rng(seed)
        self.sources = []
        for s in sources:
            s = np.asarray(s)
            if len(s) < self.window:  # a tiny unit still yields full windows
                s = np.tile(s, -(-self.window // max(len(s), 1)) + 1)
            n = len(s) // self.window
            self.sources.append(s[: n * self.window].reshape(n, self.window))  # (n, T+1)
        self.orders = [self.rng.permutation(len(s)) for s in self.sources]
        self.cursors = [0] * len(self.sources)
        self.schedule: np.ndarray | None = None  # source of each sequence, when `total` is set
        if total is not None and len(self.sources) > 1:  # one source: nothing to apportion
            self.schedule = self.rng.permutation(
                np.repeat(np.arange(len(w)), exact_counts(self.p, total))
            )
        self.drawn = 0

    def source_counts(self, n: int) -> np.ndarray:
        """Sequences per source among the first ``n`` that ``batch`` would draw (needs ``total``)."""
        if self.schedule is None:
            raise ValueError("source_counts needs a sampler built with total=")
        return np.bincount(self.schedule[:n], minlength=len(self.sources))

    def _next(self, i: int) -> np.ndarray:
        if self.cursors[i] == len(self.orders[i]):
            self.orders[i] = self.rng.permutation(len(self.sources[i]))
            self.cursors[i] = 0
        row = self.sources[i][self.orders[i][self.cursors[i]]]
        self.cursors[i] += 1
        return row

    def batch(self, batch_size: int) -> np.ndarray:
        if self.schedule is not None and self.drawn + batch_size <= len(self.schedule):
            picks = self.schedule[self.drawn : self.drawn + batch_size]
        else:
            picks = self.rng.choice(len(self.sources), size=batch_size, p=self.p)
        self.drawn += batch_size
        return np.stack([self._next(int(i)) for i in picks]).astype(np.int64)  # (B, T+1)


def exact_counts(p: np.ndarray, total: int) -> np.ndarray:
    """``total`` split by the shares ``p`` into whole counts (largest remainder: each count is
    within one of ``p * total`` and they sum to ``total``)."""
    raw = np.asarray(p, dtype=np.float64) * total
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


def lr_factor(step: int, total: int, warmup_ratio: float, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to ``min_ratio``."""
    warmup = max(1, round(total * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens_seen: int
    final_loss: float
    loss_curve: tuple[tuple[int, float], ...]
    wall_time_s: float
    device: str


def continue_pretraining(
    base: PreTrainedModel,
    recipe: Recipe,
    sources: Sequence[np.ndarray],
    source_weights: Sequence[float],
    tokens: int,
    *,
    seed: int,
    device: str | None = None,
    progress: object = None,
    exact_mix: bool = False,
    second_moments: Mapping[str, torch.Tensor] | None = None,
) -> tuple[PreTrainedModel, TrainResult]:
    """Continue ``base`` on ``sources`` exactly as every member trains.

    ``exact_mix`` draws each source's exact share of the run's sequences (see
    ``SequenceSampler``) instead of picking a source at random per sequence.
    ``second_moments`` starts AdamW from them (``ablate.pool.preconditioner``).

    The recipe's method prepares the model (``Method.prepare``): full fine-tuning trains
    ``base`` in place; LoRA wraps a copy in a fresh adapter whose initialisation comes from
    ``seed`` (not from run order), leaving ``base`` unchanged.
    """
    total = recipe.steps_for(tokens) * recipe.batch_size if exact_mix else None
    sampler = SequenceSampler(sources, source_weights, recipe.seq_len, seed, total=total)
    model = method_of(recipe).prepare(base, recipe, seed)
    result = train_model(
        model,
        sampler,
        recipe,
        tokens,
        seed=seed,
        device=pick_device(device),
        progress=progress,
        second_moments=second_moments,
    )
    if model is base:  # trained in place on the device; the seed lives on the CPU between runs
        base.cpu()
    return model, result


def write_trained(
    folder: Path,
    model: PreTrainedModel,
    result: TrainResult,
    recipe: Recipe,
    *,
    seed: int,
    base_sha256: str,
    record: Callable[..., R],
    record_file: str,
) -> R:
    """Write a trained model into ``folder`` atomically: its weights and its record.

    ``record`` builds the record from the ``TrainedRecord`` fields (passed as keyword
    arguments), e.g. ``functools.partial(MemberRecord, partition=..., unit=..., data_hash=...)``;
    it is written as ``record_file``, last, into the same staged folder, so ``folder`` appears
    complete or not at all. Returns the record.
    """

    method = method_of(recipe)
    tensors = method.trained_tensors(model)
    weights_file = method.weights_file
    with staged_dir(folder) as tmp:
        rec = record(
            base_sha256=base_sha256,
            method=recipe.method,
            recipe=recipe,
            seed=seed,
            tokens_seen=result.tokens_seen,
            steps=result.steps,
            final_loss=result.final_loss,
            loss_curve=result.loss_curve,
            wall_time_s=round(result.wall_time_s, 3),
            device=result.device,
            weights_file=weights_file,
            weights_sha256=save_tensors(tensors, tmp / weights_file),
            n_params=sum(t.numel() for t in tensors.values()),
            created_at=utc_now(),
        )
        write_json(tmp / record_file, rec.model_dump(mode="json"))
    return rec


def pick_device(device: str | None = None) -> torch.device:
    import torch

    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        # torchrun / accelerate start one process per GPU and say which in LOCAL_RANK.
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialised ``torch.distributed`` group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_rank() -> bool:
    """True outside ``torch.distributed`` and on its rank 0 (the one that writes files)."""
    return _rank_world()[0] == 0


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (so that all ranks take the same decision); no-op alone."""
    if _rank_world()[1] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def next_token_loss(
    model: torch.nn.Module, batch: torch.Tensor, autocast: object = None
) -> torch.Tensor:
    """Mean next-token cross-entropy of ``batch`` ``(B, T + 1)`` token ids: the model reads
    the first ``T``, the targets are the last ``T``. ``autocast`` (a context) covers the
    forward pass only; the loss is always taken in fp32. What members train on and what the
    Fisher and the preconditioner differentiate."""
    import torch.nn.functional as F

    with autocast or contextlib.nullcontext():
        logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def resume_second_moments(
    opt: torch.optim.Optimizer,
    model: PreTrainedModel,
    moments: Mapping[str, torch.Tensor],
) -> None:
    """Start ``opt`` (AdamW over ``model``'s trainable parameters) from ``moments``."""
    import torch

    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name not in moments or moments[name].shape != p.shape:
            raise PoolError(
                f"the pool's preconditioner has no {tuple(p.shape)} entry for {name}; it "
                "belongs to another model: restore it from a backup or start a new pool"
            )
        opt.state[p] = {
            "step": torch.tensor(float(RESUMED_STEP)),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": moments[name].to(device=p.device, dtype=p.dtype).clone(),
        }


def train_model(
    model: PreTrainedModel,
    sampler: SequenceSampler,
    recipe: Recipe,
    tokens: int,
    *,
    seed: int,
    device: torch.device,
    progress: object = None,
    second_moments: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``tokens`` tokens; returns the loss record."""
    import torch

    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    rank, world = _rank_world()
    net, share = model, recipe.batch_size
    if world > 1:
        # Data parallel under torchrun/accelerate: every rank draws the same global batch
        # (same seed) and trains on its 1/world slice; DDP averages the gradients, so the
        # data order and the update equal one process's (up to float summation order).
        if recipe.batch_size % world:
            raise ValueError(
                f"batch size {recipe.batch_size} must be divisible by the {world} processes"
            )
        from torch.nn.parallel import DistributedDataParallel

        share = recipe.batch_size // world
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(
        params, lr=recipe.train_lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.95)
    )
    if second_moments is not None:
        resume_second_moments(opt, model, second_moments)
    steps = recipe.steps_for(tokens)
    constant = recipe.member_schedule == "constant"
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            1.0 if constant else lr_factor(s, steps, recipe.warmup_ratio, recipe.min_lr_ratio)
        ),
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses = np.zeros(steps)
    start = time.perf_counter()
    for step in range(steps):
        batch = sampler.batch(recipe.batch_size)[rank * share : (rank + 1) * share]
        batch = torch.from_numpy(batch).to(device)
        loss = next_token_loss(net, batch, autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:  # record the global batch's loss, the same on every rank
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
            loss /= world
        losses[step] = loss.item()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[step]:.3f}", refresh=False)
    if not np.isfinite(losses[-1]):
        raise FloatingPointError(f"training diverged (loss {losses[-1]}); lower --lr")
    model.eval()
    # Average the per-step losses into at most _CURVE_POINTS buckets for the record.
    edges = np.linspace(0, steps, min(steps, _CURVE_POINTS) + 1).astype(int)
    curve = tuple((int(b), float(losses[a:b].mean())) for a, b in zip(edges[:-1], edges[1:]))
    tail = max(
        1, steps // 10
    )  # final loss = mean of the last 10% of steps (less noisy than one step)
    return TrainResult(
        steps=steps,
        tokens_seen=steps * recipe.tokens_per_step,
        final_loss=float(losses[-tail:].mean()),
        loss_curve=curve,
        wall_time_s=time.perf_counter() - start,
        device=str(device),
    )
