"""Weighted parameter averaging: the merge step of the data-ablation simulator.

Na et al. (EMNLP 2024) answer "what if the model were trained on mixture M?" by averaging
the parameters of models trained on M's partitions. The evaluator keeps the N members as one
flat ``[N, P]`` stack and merges a mixture into one flat ``[P]`` buffer that a model
skeleton's parameters view, so a merge is one call here: one pass over memory, fp32
accumulation, whatever N is.

This module checks arguments and dispatches per call: the Triton kernel for CUDA tensors,
the PyTorch twin (``ablate.kernels.reference``, a BLAS matrix-vector product) otherwise.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import reference
from ._backend import SUPPORTED_DTYPES, Backend, resolve_backend

# Staging buffer for Triton merges of a sequence or a strided stack: 256 MiB of device
# memory per chunk keeps launches few while bounding the extra memory.
TRITON_STAGE_BYTES = 256 * 2**20


def weighted_average(
    stack: Tensor | Sequence[Tensor],
    weights: Tensor | Sequence[float],
    out: Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> Tensor:
    """Merge N models: ``out = sum_i weights[i] * stack[i]``, accumulated in fp32.

    Weights are used as given: they may be negative and need not sum to one, so
    extrapolation (``2 * theta_a - theta_b``) is a legitimate what-if. Normalise them
    yourself for a convex mixture. Not differentiable: this writes ``out`` in place.

    Args:
        stack: ``[N, P]`` tensor of flattened members (fp32/bf16/fp16, any strides), or a
            sequence of N tensors of one shape, dtype and device.
        weights: ``[N]`` finite weights, a float tensor or a list of numbers.
        out: Contiguous output of shape ``[P]`` (or the members' shape for a sequence) on the
            same device, fp32/bf16/fp16; must not overlap ``stack``. Allocated with the
            stack's dtype when None.
        backend: ``"auto"`` (Triton for CUDA tensors, else PyTorch), ``"triton"`` or
            ``"torch"``.

    Returns:
        ``out``, filled.

    Raises:
        ValueError: Empty stack, mismatched shapes or devices, wrong weight count,
            non-finite weights, or a bad ``out``.
        TypeError: Unsupported or mismatched dtypes, or arguments of the wrong type.
        ImportError: ``backend="triton"`` without triton installed.
        RuntimeError: ``backend="triton"`` on CPU tensors without ``TRITON_INTERPRET=1``.
    """
    if isinstance(stack, Tensor):
        if stack.dim() != 2:
            raise ValueError(
                f"weighted_average: stack must be 2-D [N, P], got shape {tuple(stack.shape)}; "
                "flatten each member and stack them, or pass a list of tensors"
            )
        if stack.shape[0] == 0:
            raise ValueError("weighted_average: empty stack (N = 0); pass at least one member")
        _check_dtype(stack.dtype, "stack")
        n, shape, dtype, device = stack.shape[0], (stack.shape[1],), stack.dtype, stack.device
    elif isinstance(stack, Sequence) and not isinstance(stack, str):
        n, shape, dtype, device = _check_members(stack)
    else:
        raise TypeError(
            "weighted_average: stack must be a [N, P] tensor or a sequence of tensors, "
            f"got {type(stack).__name__}"
        )
    w = _check_weights(weights, n, device)
    out = _check_out(out, shape, dtype, device)
    impl = resolve_backend(backend, device, "weighted_average")
    with torch.no_grad():
        if impl == "torch":
            if isinstance(stack, Tensor):
                return reference.weighted_average_reference(stack, w, out)
            return reference.weighted_average_sequence_reference(stack, w, out)
        from .triton_average import weighted_average_triton  # triton imported only here

        if isinstance(stack, Tensor) and (stack.shape[1] <= 1 or stack.stride(1) == 1):
            return weighted_average_triton(stack, w, out)
        rows = list(stack.unbind(0)) if isinstance(stack, Tensor) else list(stack)
        return _staged_triton(rows, w, out, weighted_average_triton)


def _check_dtype(dtype: torch.dtype, name: str) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"weighted_average: {name} has dtype {dtype}; supported are {SUPPORTED_DTYPES}; "
            "cast with .to(torch.float32)"
        )


def _check_members(
    members: Sequence[Tensor],
) -> tuple[int, tuple[int, ...], torch.dtype, torch.device]:
    """Validate a sequence of members; return (N, shape, dtype, device)."""
    if len(members) == 0:
        raise ValueError("weighted_average: empty stack (no members); pass at least one member")
    first = members[0]
    for i, m in enumerate(members):
        if not isinstance(m, Tensor):
            raise TypeError(f"weighted_average: member {i} is a {type(m).__name__}, not a Tensor")
        if m.shape != first.shape:
            raise ValueError(
                f"weighted_average: shape mismatch: member {i} has shape {tuple(m.shape)}, "
                f"member 0 has {tuple(first.shape)}; all members must have one shape"
            )
        if m.dtype != first.dtype:
            raise TypeError(
                f"weighted_average: dtype mismatch: member {i} is {m.dtype}, member 0 is "
                f"{first.dtype}; cast all members to one dtype"
            )
        if m.device != first.device:
            raise ValueError(
                f"weighted_average: device mismatch: member {i} is on {m.device}, member 0 on "
                f"{first.device}; move all members to one device"
            )
    _check_dtype(first.dtype, "members")
    return len(members), tuple(first.shape), first.dtype, first.device


def _check_weights(weights: Tensor | Sequence[float], n: int, device: torch.device) -> Tensor:
    """Return the weights as a contiguous fp32 ``[N]`` tensor on ``device``."""
    if isinstance(weights, Tensor):
        if weights.is_complex() or weights.dtype == torch.bool:
            raise TypeError(f"weighted_average: weights must be real numbers, got {weights.dtype}")
        w = weights.detach()
    elif isinstance(weights, Sequence) and not isinstance(weights, str):
        if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in weights):
            raise TypeError("weighted_average: weights must be a tensor or a list of numbers")
        w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    else:
        raise TypeError(
            f"weighted_average: weights must be a tensor or a list of numbers, "
            f"got {type(weights).__name__}"
        )
    if w.dim() != 1 or w.shape[0] != n:
        raise ValueError(
            f"weighted_average: got {w.numel() if w.dim() == 1 else tuple(w.shape)} weights "
            f"for {n} members; pass one weight per member (shape [{n}])"
        )
    w = w.to(device=device, dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(
            "weighted_average: weights contain NaN or inf (in fp32); pass finite weights"
        )
    return w


def _check_out(
    out: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Return a valid output buffer, allocating one with the stack's dtype if None."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if not isinstance(out, Tensor):
        raise TypeError(f"weighted_average: out must be a Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(
            f"weighted_average: out has shape {tuple(out.shape)}, expected {tuple(shape)}; "
            "allocate it like the merged member (torch.empty(shape))"
        )
    if out.device != device:
        raise ValueError(
            f"weighted_average: out is on {out.device} but the stack is on {device}; "
            "allocate out on the stack's device"
        )
    _check_dtype(out.dtype, "out")
    if not out.is_contiguous():
        raise ValueError(
            "weighted_average: out is not contiguous; pass a contiguous buffer and copy "
            "the result into your view afterwards"
        )
    return out


def _staged_triton(
    rows: list[Tensor], weights: Tensor, out: Tensor, launch: Callable[..., Tensor]
) -> Tensor:
    """Triton merge of N separate rows via a bounded ``[N, chunk]`` staging buffer."""
    flat = [r.reshape(-1) for r in rows]  # N x (P,); views when contiguous
    out_flat = out.view(-1)  # (P,)
    p, n = out_flat.numel(), len(flat)
    if p == 0:
        return out
    itemsize = flat[0].element_size()
    chunk = min(p, max(1, TRITON_STAGE_BYTES // (itemsize * n)))
    stage = torch.empty(n, chunk, dtype=flat[0].dtype, device=out.device)  # (N, chunk)
    for a in range(0, p, chunk):
        b = min(p, a + chunk)
        block = stage[:, : b - a]  # (N, b - a), rows contiguous
        for i, f in enumerate(flat):
            block[i].copy_(f[a:b])
        launch(block, weights, out_flat[a:b])
    return out
