"""Triton kernel for the weighted average of a stack of flattened models.

``out[p] = sum_i w_i * stack[i, p]`` is a pure streaming op: every stacked parameter is read
once and each output written once, so the kernel should run at memory bandwidth. One
program owns one block of columns, loops over the N members inside, keeps the running sum
in fp32 registers, and writes once in ``out``'s dtype. A merge of any N is one launch.

This module imports triton at the top; :mod:`ablate.kernels.average` imports it only when a call
actually dispatches to Triton, so ``import kernels`` never needs triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._backend import SUPPORTED_DTYPES, interpreting

# Columns per program: 1024 fp32 columns over 4 warps is 8 per thread, two 16-byte vector
# loads per member, enough bytes in flight per SM to saturate HBM.
BLOCK_P = 1024
NUM_WARPS = 4


@triton.jit
def _weighted_average_kernel(
    stack_ptr,  # [N, P], rows contiguous, row stride `stride_member`
    weights_ptr,  # [N] fp32
    out_ptr,  # [P] contiguous
    n_members,
    n_cols,
    stride_member,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # int64: P may exceed 2**31 for large models
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = stack_ptr + cols
    for i in range(n_members):
        w = tl.load(weights_ptr + i)
        # Each element is read once: tell the cache not to keep it.
        x = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
        acc += w * x.to(tl.float32)
        ptrs += stride_member  # pointer bump, no i * stride product to overflow
    tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def weighted_average_triton(stack: Tensor, weights: Tensor, out: Tensor) -> Tensor:
    """Launch the kernel: ``out = weights @ stack`` with fp32 accumulation.

    Args:
        stack: ``[N, P]`` fp32/bf16/fp16 tensor with contiguous rows (``stride(1) == 1``).
        weights: ``[N]`` contiguous fp32 tensor on ``stack``'s device.
        out: ``[P]`` contiguous fp32/bf16/fp16 tensor on ``stack``'s device.

    Returns:
        ``out``.

    Raises:
        ValueError: A shape, device or layout does not match.
        TypeError: A dtype is not supported.
    """
    if stack.dim() != 2:
        raise ValueError(f"stack must be 2-D [N, P], got shape {tuple(stack.shape)}")
    n, p = stack.shape
    if stack.dtype not in SUPPORTED_DTYPES or out.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"stack and out must be one of {SUPPORTED_DTYPES}, got {stack.dtype} and {out.dtype}"
        )
    if weights.dtype != torch.float32 or weights.shape != (n,) or not weights.is_contiguous():
        raise ValueError(
            f"weights must be a contiguous fp32 [{n}] tensor, got {weights.dtype} "
            f"{tuple(weights.shape)}"
        )
    if out.shape != (p,) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous [{p}] tensor, got {tuple(out.shape)}")
    if p > 1 and stack.stride(1) != 1:
        raise ValueError("stack rows must be contiguous (stack.stride(1) == 1)")
    if not (stack.device == weights.device == out.device):
        raise ValueError(
            f"stack, weights and out must share a device, got {stack.device}, "
            f"{weights.device}, {out.device}"
        )
    if stack.device.type != "cuda" and not interpreting():
        raise RuntimeError("CPU tensors need TRITON_INTERPRET=1 to run a Triton kernel")
    if p == 0:
        return out
    grid = (triton.cdiv(p, BLOCK_P),)
    _weighted_average_kernel[grid](
        stack, weights, out, n, p, stack.stride(0), BLOCK=BLOCK_P, num_warps=NUM_WARPS
    )
    return out
