"""PyTorch reference twins of the kernels: the specification, the CPU path and the test oracle.

Two ops make a merged-model evaluation (Na et al., EMNLP 2024: train one model per data
partition, answer a data mixture by averaging the members' parameters, score perplexity):

* ``weighted_average``: ``out = sum_i w_i * stack[i]`` over a ``[N, P]`` stack of flattened
  members, accumulated in fp32. On CPU this is one matrix-vector product
  (``stack.T @ w``), which reads every member exactly once; when the stack is not fp32 the
  product runs over column chunks that are upcast into a small fp32 staging buffer, so
  memory stays bounded and there is never a Python loop over members per tensor.
* ``token_nll``: per-token negative log-likelihood of an LM head,
  ``-log softmax(softcap(h @ W.T * scale + b))[t, y_t]``, computed without the ``[T, V]``
  logits. Tokens are cut into chunks and the vocabulary into tiles; each tile's logits are
  reduced to a log-sum-exp at once and folded into a running value with ``logaddexp``:
  the "online log-sum-exp" that fused linear-cross-entropy kernels such as Liger-Kernel's
  use, so peak memory is one ``[chunk, tile]`` block instead of ``[T, V]``. Gradients
  recompute each block's softmax in the backward pass instead of storing it.

These functions assume validated arguments: the public wrappers in :mod:`ablate.kernels.average`
and :mod:`ablate.kernels.perplexity` check shapes, dtypes and devices first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# fp32 staging buffer per column chunk of the merge. Each chunk costs three OpenMP parallel
# regions (upcast, gemv, downcast); 32 MiB keeps them few (~55 for 8 x 54M). Measured on a
# 2-core VM: chunk size mattered little when idle (64K-1M columns within ~10%), but 8 MiB
# chunks ran 3x slower than 32 MiB ones when other processes oversubscribed the cores.
STAGE_BYTES = 32 * 2**20
# Fewest columns per chunk, so a 64-member stack still moves long contiguous runs.
MIN_CHUNK_COLS = 4096

# Token rows per chunk of the NLL: enough rows that each tile GEMM is compute bound.
TOKEN_CHUNK = 1024
# Vocabulary columns per tile: a 1024 x 4096 fp32 logit tile is 16 MiB (one tile plus one
# temporary live at a time), against 1 GiB for the full logits of 2048 tokens x 128K vocab.
VOCAB_TILE = 4096

_F32 = torch.float32


# --------------------------------------------------------------------------------------
# Weighted average
# --------------------------------------------------------------------------------------


def column_chunk(n_members: int) -> int:
    """Columns per chunk so that an fp32 ``[n_members, chunk]`` buffer is ~``STAGE_BYTES``."""
    return max(MIN_CHUNK_COLS, STAGE_BYTES // (4 * n_members))


def weighted_average_reference(stack: Tensor, weights: Tensor, out: Tensor) -> Tensor:
    """Write ``out[p] = sum_i weights[i] * stack[i, p]``, accumulated in fp32.

    Args:
        stack: ``[N, P]`` float tensor (fp32/bf16/fp16), any strides.
        weights: ``[N]`` fp32 tensor on ``stack``'s device.
        out: ``[P]`` contiguous float tensor on ``stack``'s device, not overlapping ``stack``.

    Returns:
        ``out``.
    """
    n, p = stack.shape
    if p == 0:
        return out
    with torch.no_grad():
        if stack.dtype == _F32 and out.dtype == _F32 and stack.stride(1) == 1:
            if n == 1:  # a scaled copy (subset walks): an elementwise pass beats a 1-wide gemv
                return torch.mul(stack[0], weights[0], out=out)
            # One BLAS gemv: (P, N) @ (N,) -> (P,), a single pass over the stack.
            return torch.mv(stack.T, weights, out=out)
        chunk = min(column_chunk(n), p)
        stage = torch.empty(n, chunk, dtype=_F32, device=stack.device)  # (N, chunk)
        acc = None if out.dtype == _F32 else torch.empty(chunk, dtype=_F32, device=out.device)
        for a in range(0, p, chunk):
            b = min(p, a + chunk)
            src = stack[:, a:b]  # (N, b - a)
            if src.dtype != _F32 or src.stride(1) != 1:
                src = stage[:, : b - a].copy_(src)  # upcast / gather into fp32
            _mv_into(src, weights, out[a:b], acc)
    return out


def weighted_average_sequence_reference(
    members: Sequence[Tensor], weights: Tensor, out: Tensor
) -> Tensor:
    """Write ``out = sum_i weights[i] * members[i]`` without stacking all members at once.

    Members are read in column chunks into one fp32 ``[N, chunk]`` staging buffer, so the
    extra memory is ``STAGE_BYTES`` whatever the members' size.

    Args:
        members: N same-shape, same-dtype float tensors on one device.
        weights: ``[N]`` fp32 tensor on the members' device.
        out: Contiguous tensor of the members' shape and device.

    Returns:
        ``out``.
    """
    n = len(members)
    # A contiguous member flattens to a view; others are copied once, one at a time.
    flat = [m.reshape(-1) for m in members]  # N x (P,)
    out_flat = out.view(-1)  # (P,)
    p = out_flat.numel()
    if p == 0:
        return out
    with torch.no_grad():
        chunk = min(column_chunk(n), p)
        stage = torch.empty(n, chunk, dtype=_F32, device=out.device)  # (N, chunk)
        acc = None if out.dtype == _F32 else torch.empty(chunk, dtype=_F32, device=out.device)
        for a in range(0, p, chunk):
            b = min(p, a + chunk)
            block = stage[:, : b - a]  # (N, b - a)
            for i, m in enumerate(flat):
                block[i].copy_(m[a:b])
            _mv_into(block, weights, out_flat[a:b], acc)
    return out


def _mv_into(block: Tensor, weights: Tensor, out: Tensor, acc: Tensor | None) -> None:
    """``out = block.T @ weights`` for an fp32 ``[N, c]`` block, via fp32 ``acc`` if needed."""
    if acc is None:
        torch.mv(block.T, weights, out=out)
    else:
        tmp = acc[: out.numel()]
        torch.mv(block.T, weights, out=tmp)
        out.copy_(tmp)  # round once, into out's dtype


# --------------------------------------------------------------------------------------
# Token negative log-likelihood
# --------------------------------------------------------------------------------------

NllForward = Callable[..., tuple[Tensor, Tensor]]


def _tile_logits(
    h32: Tensor,
    weight: Tensor,
    bias32: Tensor | None,
    v0: int,
    v1: int,
    logit_scale: float,
    softcap: float | None,
) -> Tensor:
    """fp32 logits of one ``[chunk, v1 - v0]`` tile: ``softcap(h @ W[v0:v1].T * s + b)``."""
    w32 = weight[v0:v1].to(_F32)  # (tile, H); a view when weight is fp32
    if bias32 is None:
        z = torch.mm(h32, w32.T)  # (chunk, tile)
        if logit_scale != 1.0:
            z.mul_(logit_scale)
    else:
        z = torch.addmm(bias32[v0:v1], h32, w32.T, alpha=logit_scale)  # (chunk, tile)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


def token_nll_forward_reference(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignore_index: int,
    logit_scale: float,
    softcap: float | None,
    *,
    token_chunk: int | None = None,
    vocab_tile: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token NLL and log-sum-exp, tiled over tokens and vocabulary; no autograd.

    Args:
        hidden: ``[T, H]`` final hidden states (fp32/bf16/fp16).
        weight: ``[V, H]`` LM head, same dtype as ``hidden``.
        bias: Optional ``[V]`` LM-head bias.
        targets: ``[T]`` integer token ids in ``[0, V)`` or ``ignore_index``.
        ignore_index: Target value whose NLL is 0.
        logit_scale: Multiplies the logits before bias and soft-capping.
        softcap: ``c`` for ``c * tanh(logits / c)``, or None.
        token_chunk: Token rows per chunk (default ``TOKEN_CHUNK``, read at call time).
        vocab_tile: Vocabulary columns per tile (default ``VOCAB_TILE``, read at call time).

    Returns:
        ``(nll, lse)``: fp32 ``[T]`` each; ``lse`` is the log-partition of every row.
    """
    n_tokens = hidden.shape[0]
    n_vocab = weight.shape[0]
    device = hidden.device
    token_chunk = token_chunk or TOKEN_CHUNK
    vocab_tile = vocab_tile or VOCAB_TILE
    nll = torch.empty(n_tokens, dtype=_F32, device=device)
    lse = torch.empty(n_tokens, dtype=_F32, device=device)
    bias32 = None if bias is None else bias.to(_F32)
    with torch.no_grad():
        for t0 in range(0, n_tokens, token_chunk):
            t1 = min(n_tokens, t0 + token_chunk)
            h32 = hidden[t0:t1].to(_F32)  # (chunk, H)
            y = targets[t0:t1]  # (chunk,)
            run_lse = torch.full((t1 - t0,), float("-inf"), dtype=_F32, device=device)
            target_logit = torch.zeros(t1 - t0, dtype=_F32, device=device)
            for v0 in range(0, n_vocab, vocab_tile):
                v1 = min(n_vocab, v0 + vocab_tile)
                z = _tile_logits(h32, weight, bias32, v0, v1, logit_scale, softcap)
                col = y - v0
                in_tile = (col >= 0) & (col < v1 - v0)
                picked = z.gather(1, col.clamp(0, v1 - v0 - 1).unsqueeze(1)).squeeze(1)
                target_logit = torch.where(in_tile, picked, target_logit)
                # Tile log-sum-exp, in place: max, shift, exp, sum, log.
                tile_max = z.amax(dim=1)  # (chunk,)
                z.sub_(tile_max.unsqueeze(1)).exp_()
                tile_lse = z.sum(dim=1).log_().add_(tile_max)
                run_lse = torch.logaddexp(run_lse, tile_lse)
            lse[t0:t1] = run_lse
            nll[t0:t1] = torch.where(y != ignore_index, run_lse - target_logit, 0.0)
    return nll, lse


def token_nll_backward_reference(
    grad_nll: Tensor,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    lse: Tensor,
    ignore_index: int,
    logit_scale: float,
    softcap: float | None,
    needs: tuple[bool, bool, bool],
    *,
    token_chunk: int | None = None,
    vocab_tile: int | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``sum_t grad_nll[t] * nll[t]``, recomputing each tile's softmax.

    With ``z`` the final logits and ``u`` the pre-cap ones (``u = s * h @ W.T + b``):
    ``dnll/dz = softmax(z) - onehot(y)``, ``dz/du = 1 - (z / c)^2`` under soft-capping,
    ``du/d(hW^T) = s`` and ``du/db = 1``. Accumulates in fp32, returns in input dtypes.

    Args:
        grad_nll: ``[T]`` upstream gradient.
        hidden, weight, bias, targets, ignore_index, logit_scale, softcap: As in the forward.
        lse: ``[T]`` fp32 log-partition from the forward.
        needs: Whether hidden, weight and bias need a gradient.
        token_chunk: Token rows per chunk (default ``TOKEN_CHUNK``, read at call time).
        vocab_tile: Vocabulary columns per tile (default ``VOCAB_TILE``, read at call time).

    Returns:
        ``(grad_hidden, grad_weight, grad_bias)``, None where not needed.
    """
    n_tokens, n_vocab = hidden.shape[0], weight.shape[0]
    need_h, need_w, need_b = needs
    device = hidden.device
    token_chunk = token_chunk or TOKEN_CHUNK
    vocab_tile = vocab_tile or VOCAB_TILE
    bias32 = None if bias is None else bias.to(_F32)
    # Ignored rows contribute nothing; fold that into the upstream gradient.
    g = torch.where(targets != ignore_index, grad_nll.to(_F32), 0.0)  # (T,)
    grad_h = torch.zeros(hidden.shape, dtype=_F32, device=device) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=_F32, device=device) if need_w else None
    grad_b = torch.zeros(n_vocab, dtype=_F32, device=device) if need_b else None
    with torch.no_grad():
        for t0 in range(0, n_tokens, token_chunk):
            t1 = min(n_tokens, t0 + token_chunk)
            h32 = hidden[t0:t1].to(_F32)  # (chunk, H)
            y, g_chunk, lse_chunk = targets[t0:t1], g[t0:t1], lse[t0:t1]
            for v0 in range(0, n_vocab, vocab_tile):
                v1 = min(n_vocab, v0 + vocab_tile)
                z = _tile_logits(h32, weight, bias32, v0, v1, logit_scale, softcap)
                dcap = None if softcap is None else 1.0 - (z / softcap).square()
                dz = z.sub_(lse_chunk.unsqueeze(1)).exp_()  # softmax(z), (chunk, tile)
                col = y - v0
                in_tile = ((col >= 0) & (col < v1 - v0)).to(_F32)
                dz.scatter_add_(1, col.clamp(0, v1 - v0 - 1).unsqueeze(1), -in_tile.unsqueeze(1))
                dz.mul_(g_chunk.unsqueeze(1))
                if dcap is not None:
                    dz.mul_(dcap)  # now d/du
                if grad_b is not None:
                    grad_b[v0:v1] += dz.sum(dim=0)
                if logit_scale != 1.0:
                    dz.mul_(logit_scale)  # now d/d(h @ W.T)
                if grad_h is not None:
                    grad_h[t0:t1].addmm_(dz, weight[v0:v1].to(_F32))  # (chunk, H)
                if grad_w is not None:
                    grad_w[v0:v1].addmm_(dz.T, h32)  # (tile, H)
    return (
        None if grad_h is None else grad_h.to(hidden.dtype),
        None if grad_w is None else grad_w.to(weight.dtype),
        None if grad_b is None or bias is None else grad_b.to(bias.dtype),
    )


class TokenNLLFunction(torch.autograd.Function):
    """Autograd wrapper: any tiled forward (twin or Triton), a recomputing tiled backward.

    Only the ``[T]`` log-partition is saved between passes, never the logits. Double
    backward is not supported.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        ignore_index: int,
        logit_scale: float,
        softcap: float | None,
        forward_impl: NllForward,
    ) -> Tensor:
        nll, lse = forward_impl(hidden, weight, bias, targets, ignore_index, logit_scale, softcap)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.options = (ignore_index, logit_scale, softcap)
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_nll: Tensor) -> tuple:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        ignore_index, logit_scale, softcap = ctx.options
        needs = tuple(ctx.needs_input_grad[:3])
        grads = token_nll_backward_reference(
            grad_nll, hidden, weight, bias, targets, lse, ignore_index, logit_scale, softcap, needs
        )
        return (*grads, None, None, None, None, None)


def token_nll_reference(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    forward_impl: NllForward = token_nll_forward_reference,
) -> Tensor:
    """Per-token NLL of an LM head, tiled; differentiable w.r.t. hidden, weight and bias.

    Args:
        hidden: ``[T, H]`` final hidden states (fp32/bf16/fp16).
        weight: ``[V, H]`` LM head, same dtype as ``hidden``.
        targets: ``[T]`` integer token ids in ``[0, V)`` or ``ignore_index``.
        bias: Optional ``[V]`` LM-head bias.
        ignore_index: Target value whose NLL (and gradient) is 0.
        logit_scale: Multiplies the logits before bias and soft-capping.
        softcap: ``c`` for ``c * tanh(logits / c)`` (Gemma 2), or None.
        forward_impl: The tiled forward to run; the Triton launcher plugs in here.

    Returns:
        fp32 ``[T]`` NLL, 0 at ignored positions.
    """
    tensors = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return TokenNLLFunction.apply(
            hidden, weight, bias, targets, ignore_index, logit_scale, softcap, forward_impl
        )
    nll, _ = forward_impl(hidden, weight, bias, targets, ignore_index, logit_scale, softcap)
    return nll
