"""Triton kernel for the fused LM head + log-softmax + per-token NLL.

For a block of token rows, one program walks the vocabulary tile by tile: it computes the
tile's logits with ``tl.dot`` (hidden block x LM-head tile, fp32 accumulation), applies
scale, bias and tanh soft-capping, and folds the tile into a running maximum and a running
sum of exponentials rescaled to that maximum (the online log-sum-exp also used by
Liger-Kernel's fused linear cross entropy). The target's logit is picked up when its tile
passes by. The ``[T, V]`` logits never exist; each program holds one
``[BLOCK_T, BLOCK_V]`` tile in registers.

A few thousand tokens make only a few dozen row blocks, too few to fill a large GPU, so
the vocabulary may also be split across a second grid axis: each split writes a partial
log-sum-exp and target logit per row, and the splits are merged with one small
``logsumexp`` in PyTorch.

This module imports triton at the top; :mod:`ablate.kernels.perplexity` imports it only when a
call dispatches to Triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._backend import SUPPORTED_DTYPES, interpreting

# GPU tile: a 64 x 128 fp32 accumulator over 4 warps is 64 registers per thread, which
# leaves room for the dot operands; BLOCK_H = 64 bf16 is one 128-byte load per row.
GPU_BLOCKS = (64, 128, 64)
# Interpreter tile: tl.dot needs every dim >= 16 there, and small tiles keep tests fast.
INTERPRET_BLOCKS = (16, 32, 16)
NUM_WARPS = 4
# Aim for this many programs per streaming multiprocessor when splitting the vocabulary.
PROGRAMS_PER_SM = 2


@triton.jit
def _token_nll_kernel(
    hidden_ptr,  # [T, H], rows contiguous
    weight_ptr,  # [V, H], rows contiguous
    bias_ptr,  # [V] or a dummy when HAS_BIAS is False
    targets_ptr,  # [T] integer
    part_lse_ptr,  # [S, T] fp32 out: log-sum-exp of each split
    part_target_ptr,  # [S, T] fp32 out: target logit if it lies in the split, else 0
    n_tokens,
    n_vocab,
    hidden_size,
    stride_hidden,
    stride_weight,
    tiles_per_split,
    logit_scale,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_t = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
    row_mask = rows < n_tokens
    rows64 = rows.to(tl.int64)  # T * H may exceed 2**31
    targets = tl.load(targets_ptr + rows, mask=row_mask, other=-1).to(tl.int64)

    run_max = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_T,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_T,), dtype=tl.float32)

    v_start = split * tiles_per_split * BLOCK_V
    v_stop = tl.minimum(v_start + tiles_per_split * BLOCK_V, n_vocab)
    for v0 in range(v_start, v_stop, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # (BV,)
        col_mask = cols < v_stop
        cols64 = cols.to(tl.int64)  # V * H may exceed 2**31
        acc = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
        for k0 in range(0, hidden_size, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)  # (BH,)
            k_mask = ks < hidden_size
            h = tl.load(
                hidden_ptr + rows64[:, None] * stride_hidden + ks[None, :],
                mask=row_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # (BT, BH)
            w = tl.load(
                weight_ptr + cols64[None, :] * stride_weight + ks[:, None],
                mask=col_mask[None, :] & k_mask[:, None],
                other=0.0,
            )  # (BH, BV): the LM-head tile, transposed by addressing
            if UPCAST:
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            if IEEE:  # noqa: SIM108  (a constexpr branch; one tl.dot gets compiled)
                acc = tl.dot(h, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(h, w, acc)
        z = acc * logit_scale
        if HAS_BIAS:
            b = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            z += b[None, :]
        if HAS_SOFTCAP:
            # c * tanh(z / c) via exp (no tanh in tl); exp(-2|x|) never overflows.
            x = z / softcap
            e = tl.exp(-2.0 * tl.abs(x))
            th = (1.0 - e) / (1.0 + e)
            z = softcap * tl.where(x < 0, -th, th)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
        hit = cols64[None, :] == targets[:, None]  # (BT, BV)
        target_logit += tl.sum(tl.where(hit, z, 0.0), axis=1)

    out_offs = split.to(tl.int64) * n_tokens + rows64
    tl.store(part_lse_ptr + out_offs, run_max + tl.log(run_sum), mask=row_mask)
    tl.store(part_target_ptr + out_offs, target_logit, mask=row_mask)


def token_nll_forward_triton(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignore_index: int,
    logit_scale: float,
    softcap: float | None,
    *,
    blocks: tuple[int, int, int] | None = None,
    vocab_splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Launch the kernel; same contract as ``reference.token_nll_forward_reference``.

    Args:
        hidden: ``[T, H]`` fp32/bf16/fp16 with contiguous rows.
        weight: ``[V, H]`` same dtype as ``hidden``, contiguous rows.
        bias: Optional ``[V]`` float tensor.
        targets: ``[T]`` contiguous integer tensor.
        ignore_index: Target value whose NLL is 0.
        logit_scale: Multiplies the logits before bias and soft-capping.
        softcap: ``c`` for ``c * tanh(logits / c)``, or None.
        blocks: ``(BLOCK_T, BLOCK_V, BLOCK_H)``; default by device (GPU vs interpreter).
        vocab_splits: Programs along the vocabulary; default fills the GPU.

    Returns:
        ``(nll, lse)``: fp32 ``[T]`` each.

    Raises:
        ValueError: A shape, device or layout does not match.
        TypeError: A dtype is not supported.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"need hidden [T, H] and weight [V, H], got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    n_tokens, hidden_size = hidden.shape
    n_vocab = weight.shape[0]
    if hidden.dtype not in SUPPORTED_DTYPES or weight.dtype != hidden.dtype:
        raise TypeError(
            f"hidden and weight must share one of {SUPPORTED_DTYPES}, got {hidden.dtype} "
            f"and {weight.dtype}"
        )
    if targets.shape != (n_tokens,) or targets.is_floating_point() or not targets.is_contiguous():
        raise ValueError(f"targets must be a contiguous integer [{n_tokens}] tensor")
    if bias is not None and (bias.shape != (n_vocab,) or not bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous [{n_vocab}] tensor")
    if hidden.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("hidden and weight rows must be contiguous (stride(1) == 1)")
    device = hidden.device
    tensors = [weight, targets] + ([] if bias is None else [bias])
    if any(t.device != device for t in tensors):
        raise ValueError("hidden, weight, targets and bias must share a device")
    interpret = interpreting()
    if device.type != "cuda" and not interpret:
        raise RuntimeError("CPU tensors need TRITON_INTERPRET=1 to run a Triton kernel")

    block_t, block_v, block_h = blocks or (INTERPRET_BLOCKS if interpret else GPU_BLOCKS)
    row_blocks = triton.cdiv(n_tokens, block_t)
    n_tiles = triton.cdiv(n_vocab, block_v)
    if vocab_splits is None:
        if interpret:
            vocab_splits = 1
        else:
            n_sm = torch.cuda.get_device_properties(device).multi_processor_count
            vocab_splits = triton.cdiv(PROGRAMS_PER_SM * n_sm, max(row_blocks, 1))
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(vocab_splits, n_tiles)))
    n_splits = triton.cdiv(n_tiles, tiles_per_split)  # no empty split

    part_lse = torch.empty(n_splits, n_tokens, dtype=torch.float32, device=device)  # (S, T)
    part_target = torch.empty_like(part_lse)  # (S, T)
    if n_tokens > 0:
        _token_nll_kernel[(row_blocks, n_splits)](
            hidden,
            weight,
            hidden if bias is None else bias,  # never read when HAS_BIAS is False
            targets,
            part_lse,
            part_target,
            n_tokens,
            n_vocab,
            hidden_size,
            hidden.stride(0),
            weight.stride(0),
            tiles_per_split,
            float(logit_scale),
            1.0 if softcap is None else float(softcap),
            HAS_BIAS=bias is not None,
            HAS_SOFTCAP=softcap is not None,
            # The interpreter's tl.dot mishandles bf16 (numpy has no bf16): upcast there.
            UPCAST=interpret,
            # fp32 inputs get full-precision products rather than TF32's 10-bit mantissa.
            IEEE=hidden.dtype == torch.float32,
            BLOCK_T=block_t,
            BLOCK_V=block_v,
            BLOCK_H=block_h,
            num_warps=NUM_WARPS,
        )
    lse = torch.logsumexp(part_lse, dim=0) if n_splits > 1 else part_lse[0]
    nll = torch.where(targets != ignore_index, lse - part_target.sum(dim=0), 0.0)
    return nll, lse
