"""Fused per-token negative log-likelihood of an LM head: the scoring step of the simulator.

A merged model is scored by its perplexity on held-out text (Na et al., EMNLP 2024). The
usual path, ``model(input_ids, labels=...)``, materialises the ``[T, V]`` logits and then
a ``[T, V]`` log-softmax: 2 GiB in fp32 for 2048 tokens of a 128K vocabulary. Here the LM
head, log-softmax and target pick-up are fused over vocabulary tiles with an online
log-sum-exp, so memory is ``O(T * tile)``.

This module checks arguments and dispatches per call: the Triton kernel for CUDA tensors,
the tiled PyTorch twin (``ablate.kernels.reference``) otherwise. Both are differentiable with
respect to ``hidden``, ``weight`` and ``bias`` through one autograd function whose backward
recomputes each tile's softmax in PyTorch (nothing ``[T, V]`` is saved).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import reference
from ._backend import SUPPORTED_DTYPES, Backend, resolve_backend


def token_nll(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Per-token NLL ``-log softmax(softcap(hidden @ weight.T * logit_scale + bias))[t, y_t]``.

    ``softcap(x) = c * tanh(x / c)`` when ``softcap=c`` (Gemma 2 style), identity when None.
    Logits are computed in fp32 from the inputs' dtype and never materialised as ``[T, V]``.
    Targets are used as given: shift them yourself for next-token prediction
    (``targets[t] = input_ids[t + 1]``).

    Args:
        hidden: ``[T, H]`` final hidden states (fp32/bf16/fp16); flatten batches first.
        weight: ``[V, H]`` LM-head weight, same dtype and device as ``hidden``.
        targets: ``[T]`` integer token ids in ``[0, V)``, or ``ignore_index``.
        bias: Optional ``[V]`` float LM-head bias.
        ignore_index: Target value that marks a position to skip (its NLL is 0).
        logit_scale: Finite factor applied to ``hidden @ weight.T`` before bias and cap.
        softcap: Positive cap ``c``, or None for no soft-capping.
        backend: ``"auto"`` (Triton for CUDA tensors, else PyTorch), ``"triton"`` or
            ``"torch"``.

    Returns:
        fp32 ``[T]`` NLL in nats, 0 where ``targets == ignore_index``. Differentiable with
        respect to ``hidden``, ``weight`` and ``bias`` (single backward, no double backward).

    Raises:
        ValueError: Mismatched shapes or devices, out-of-range targets, bad scale or cap.
        TypeError: Unsupported or mismatched dtypes, or arguments of the wrong type.
        ImportError: ``backend="triton"`` without triton installed.
        RuntimeError: ``backend="triton"`` on CPU tensors without ``TRITON_INTERPRET=1``.
    """
    _check(hidden, weight, targets, bias, ignore_index, logit_scale, softcap)
    impl = resolve_backend(backend, hidden.device, "token_nll")
    if impl == "torch":
        forward = reference.token_nll_forward_reference
    else:
        from .triton_perplexity import token_nll_forward_triton  # triton imported only here

        forward = token_nll_forward_triton
        # The kernel addresses rows directly; copy only when a row is strided.
        hidden = hidden if hidden.stride(1) == 1 else hidden.contiguous()
        weight = weight if weight.stride(1) == 1 else weight.contiguous()
        targets = targets.contiguous()
        bias = None if bias is None else bias.contiguous()
    return reference.token_nll_reference(
        hidden,
        weight,
        targets,
        bias=bias,
        ignore_index=ignore_index,
        logit_scale=float(logit_scale),
        softcap=None if softcap is None else float(softcap),
        forward_impl=forward,
    )


def _check(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None,
    ignore_index: int,
    logit_scale: float,
    softcap: float | None,
) -> None:
    """Raise a ValueError/TypeError naming the first problem with the arguments."""
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, Tensor):
            raise TypeError(f"token_nll: {name} must be a Tensor, got {type(t).__name__}")
    if hidden.dim() != 2:
        raise ValueError(
            f"token_nll: hidden must be 2-D [T, H], got shape {tuple(hidden.shape)}; flatten "
            "batches with hidden.reshape(-1, H) and targets.reshape(-1)"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"token_nll: weight must be [V, H] with H = {hidden.shape[1]}, got "
            f"{tuple(weight.shape)}; pass the LM head's weight (lm_head.weight), not its transpose"
        )
    if weight.shape[0] == 0:
        raise ValueError("token_nll: weight has an empty vocabulary (V = 0)")
    if hidden.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"token_nll: hidden has dtype {hidden.dtype}; supported are {SUPPORTED_DTYPES}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"token_nll: dtype mismatch: hidden is {hidden.dtype}, weight is {weight.dtype}; "
            "cast one, e.g. hidden.to(weight.dtype)"
        )
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"token_nll: targets must be 1-D [T] with T = {hidden.shape[0]}, got shape "
            f"{tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"token_nll: targets must be integer token ids, got {targets.dtype}; use targets.long()"
        )
    devices = {hidden.device, weight.device, targets.device}
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"token_nll: bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"token_nll: bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}"
            )
        if not bias.is_floating_point():
            raise TypeError(f"token_nll: bias must be a float tensor, got {bias.dtype}")
        devices.add(bias.device)
    if len(devices) > 1:
        raise ValueError(
            f"token_nll: tensors are on different devices {sorted(map(str, devices))}; "
            "move them to one device"
        )
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"token_nll: ignore_index must be an int, got {ignore_index!r}")
    if not isinstance(logit_scale, (int, float)) or not math.isfinite(logit_scale):
        raise ValueError(f"token_nll: logit_scale must be a finite number, got {logit_scale!r}")
    if softcap is not None and (
        not isinstance(softcap, (int, float)) or not math.isfinite(softcap) or softcap <= 0
    ):
        raise ValueError(f"token_nll: softcap must be None or a finite number > 0, got {softcap!r}")
    n_vocab = weight.shape[0]
    if targets.numel() > 0:
        bad = ((targets < 0) | (targets >= n_vocab)) & (targets != ignore_index)
        if bool(bad.any()):
            first = int(targets[bad][0])
            raise ValueError(
                f"token_nll: target {first} is outside the vocabulary [0, {n_vocab}) and is "
                f"not ignore_index ({ignore_index}); check the tokenizer/LM head pairing or "
                "mask it with ignore_index"
            )
