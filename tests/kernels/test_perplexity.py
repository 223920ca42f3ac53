"""Tests for ``kernels.token_nll``: the tiled PyTorch twin, the Triton kernel (under
``TRITON_INTERPRET=1`` on CPU), gradients, memory bounds, and a float64 formula as judge."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from support import AOT_CAPABILITIES
from torch.utils._python_dispatch import TorchDispatchMode

import ablate.kernels as kernels
from ablate.kernels import _backend, reference

# (dtype, atol, rtol) on the NLL in nats. Both paths compute fp32 logits from the exact
# inputs, so the error is fp32 rounding of an H-term dot product and a V-term sum; the
# 16-bit rows leave room for the GPU's approximate exp and its tensor-core accumulation order.
DTYPES = [
    (torch.float32, 2e-5, 1e-5),
    (torch.bfloat16, 1e-4, 1e-5),
    (torch.float16, 1e-4, 1e-5),
]
# (T, H, V): single token; odd sizes so no dim is a multiple of a block or tile.
SHAPES = [(1, 16, 17), (37, 48, 300), (70, 24, 1000)]
# (bias, logit_scale, softcap) combinations of the optional features.
OPTIONS = [(False, 1.0, None), (True, 1.0, None), (False, 0.37, 5.0), (True, 2.0, 3.0)]


def oracle(hidden, weight, targets, bias=None, ignore_index=-100, logit_scale=1.0, softcap=None):
    """float64 formula on the (already rounded) inputs: the final judge."""
    z = hidden.double() @ weight.double().T * logit_scale
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    nll = torch.logsumexp(z, 1) - z.gather(1, targets.clamp(0, z.shape[1] - 1)[:, None])[:, 0]
    return torch.where(targets != ignore_index, nll, 0.0)


def make(t, h, v, dtype, device="cpu", bias=False, logit_magnitude=3.0):
    """Inputs whose logits have standard deviation ~ ``logit_magnitude``."""
    hidden = torch.randn(t, h, device=device)
    weight = torch.randn(v, h, device=device) * (logit_magnitude / math.sqrt(h))
    targets = torch.randint(0, v, (t,), device=device)
    targets[2::5] = -100  # ignored positions (none when t <= 2)
    b = torch.randn(v, device=device) if bias else None
    return hidden.to(dtype), weight.to(dtype), targets, b


def assert_close(actual, expected, atol, rtol):
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double().cpu(), expected.cpu(), atol=atol, rtol=rtol)


@pytest.fixture
def small_tiles(monkeypatch):
    """Force real tiling at test sizes: 16-token chunks, 128-column vocabulary tiles."""
    monkeypatch.setattr(reference, "TOKEN_CHUNK", 16)
    monkeypatch.setattr(reference, "VOCAB_TILE", 128)


# ---------------------------------------------------------------- PyTorch twin


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias, scale, cap", OPTIONS)
def test_torch_matches_float64(small_tiles, shape, dtype, atol, rtol, bias, scale, cap):
    hidden, weight, targets, b = make(*shape, dtype, bias=bias)
    out = kernels.token_nll(
        hidden, weight, targets, bias=b, logit_scale=scale, softcap=cap, backend="torch"
    )
    assert out.shape == (shape[0],)
    assert_close(out, oracle(hidden, weight, targets, b, -100, scale, cap), atol, rtol)
    assert torch.all(out[targets == -100] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_default_tiles_match_cross_entropy(dtype):
    hidden, weight, targets, _ = make(2100, 32, 5003, dtype)  # > one default chunk and tile
    out = kernels.token_nll(hidden, weight, targets)
    ce = F.cross_entropy(hidden.float() @ weight.float().T, targets, reduction="none")
    torch.testing.assert_close(out, ce, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cap", [None, 30.0])
def test_large_logits_are_stable(small_tiles, dtype, cap):
    """Logits ~1e3-1e4: a naive exp overflows; the tiled log-sum-exp must not.

    fp32 keeps ~7 significant digits, so the tolerance scales with the largest logit.
    """
    hidden, weight, targets, _ = make(33, 40, 777, dtype, logit_magnitude=3e3)
    largest = (hidden.double() @ weight.double().T).abs().max().item()
    assert largest > 1e3
    out = kernels.token_nll(hidden, weight, targets, softcap=cap, backend="torch")
    assert_close(out, oracle(hidden, weight, targets, softcap=cap), 1e-6 * largest, 1e-6)


def test_ignore_index_inside_vocabulary():
    hidden, weight, targets, _ = make(20, 16, 50, torch.float32)
    targets = targets.clamp(min=0)
    targets[::3] = 7
    out = kernels.token_nll(hidden, weight, targets, ignore_index=7)
    assert torch.all(out[targets == 7] == 0)
    assert_close(out, oracle(hidden, weight, targets, ignore_index=7), 1e-4, 1e-5)


def test_int32_targets_and_strided_inputs():
    hidden = torch.randn(48, 19).T  # (19, 48), stride(1) == 19
    weight = torch.randn(64, 48)
    targets = torch.randint(0, 64, (19,), dtype=torch.int32)
    out = kernels.token_nll(hidden, weight, targets)
    assert_close(out, oracle(hidden, weight, targets.long()), 1e-4, 1e-5)


def test_never_allocates_token_by_vocab(small_tiles):
    """Record every tensor storage the forward allocates: none may hold T x V logits."""

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            inputs = {
                a.untyped_storage().data_ptr()
                for a in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(a, torch.Tensor)
            }
            for r in torch.utils._pytree.tree_leaves(result):
                if isinstance(r, torch.Tensor) and r.untyped_storage().data_ptr() not in inputs:
                    self.bytes = max(self.bytes, r.untyped_storage().nbytes())
            return result

    t, h, v = 64, 8, 1000
    hidden, weight, targets, b = make(t, h, v, torch.float32, bias=True)
    with Largest() as mode:
        kernels.token_nll(hidden, weight, targets, bias=b, softcap=10.0, backend="torch")
    tile_bytes = 16 * 128 * 4  # TOKEN_CHUNK x VOCAB_TILE fp32
    assert mode.bytes == tile_bytes, "the largest allocation should be one logit tile"
    assert mode.bytes < t * v * 4 / 10


def test_no_grad_context_returns_plain_tensor():
    hidden, weight, targets, _ = make(9, 16, 40, torch.float32)
    hidden.requires_grad_()
    with torch.no_grad():
        out = kernels.token_nll(hidden, weight, targets)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias, scale, cap", [(False, 1.0, None), (True, 0.7, 2.5)])
def test_gradients_match_float64_autograd(small_tiles, dtype, bias, scale, cap):
    hidden, weight, targets, b = make(37, 24, 300, dtype, bias=bias)
    leaves = [hidden, weight] + ([b] if bias else [])
    for x in leaves:
        x.requires_grad_()
    upstream = torch.randn(37)
    out = kernels.token_nll(hidden, weight, targets, bias=b, logit_scale=scale, softcap=cap)
    (out * upstream).sum().backward()

    ref = [x.detach().double().requires_grad_() for x in leaves]
    expected = oracle(ref[0], ref[1], targets, ref[2] if bias else None, -100, scale, cap)
    (expected * upstream.double()).sum().backward()
    atol = 1e-5 if dtype == torch.float32 else 2e-2  # 16-bit gradients round to 2**-9
    for x, r in zip(leaves, ref, strict=True):
        assert x.grad.dtype == x.dtype
        torch.testing.assert_close(x.grad.double(), r.grad, atol=atol, rtol=1e-2)


def test_matches_hugging_face_labels_loss():
    """``model(input_ids, labels=...)`` is body -> lm_head -> shifted mean cross entropy."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 300, (2, 11))
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
        hidden = model.model(ids).last_hidden_state  # (B, S, H)
        targets = F.pad(ids[:, 1:], (0, 1), value=-100)  # (B, S): next token, last ignored
        nll = kernels.token_nll(hidden.reshape(-1, 32), model.lm_head.weight, targets.reshape(-1))
    torch.testing.assert_close(nll.sum() / (targets != -100).sum(), loss, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Triton kernel


@pytest.mark.triton
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("bias, scale, cap", [OPTIONS[0], OPTIONS[3]])
def test_triton_matches_twin_and_float64(device, shape, dtype, atol, rtol, bias, scale, cap):
    pytest.importorskip("triton")
    hidden, weight, targets, b = make(*shape, dtype, device, bias=bias)
    kwargs = {"bias": b, "logit_scale": scale, "softcap": cap}
    out = kernels.token_nll(hidden, weight, targets, backend="triton", **kwargs)
    twin = kernels.token_nll(hidden, weight, targets, backend="torch", **kwargs)
    assert_close(out, oracle(hidden, weight, targets, b, -100, scale, cap), atol, rtol)
    assert_close(out, twin.double(), atol, rtol)
    assert torch.all(out[targets == -100] == 0)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_large_logits_and_vocab_splits(device, dtype):
    pytest.importorskip("triton")
    from ablate.kernels.triton_perplexity import token_nll_forward_triton

    hidden, weight, targets, b = make(20, 32, 301, dtype, device, True, logit_magnitude=3e3)
    expected = oracle(hidden, weight, targets, b)
    largest = (hidden.double() @ weight.double().T).abs().max().item()
    assert largest > 1e3
    for splits in (1, 3, 100):  # 100 > tiles: clamped, and no split may be empty
        nll, lse = token_nll_forward_triton(
            hidden, weight, b, targets, -100, 1.0, None, vocab_splits=splits
        )
        assert torch.isfinite(lse).all()
        assert_close(nll, expected, 1e-6 * largest, 1e-6)


@pytest.mark.triton
def test_triton_forward_backs_propagates_through_twin_backward(device):
    pytest.importorskip("triton")
    hidden, weight, targets, _ = make(17, 16, 70, torch.float32, device)
    hidden.requires_grad_()
    out = kernels.token_nll(hidden, weight, targets, softcap=4.0, backend="triton")
    out.sum().backward()
    ref = hidden.detach().double().requires_grad_()
    oracle(ref, weight, targets, softcap=4.0).sum().backward()
    torch.testing.assert_close(hidden.grad.double(), ref.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.triton
def test_triton_launcher_checks_layout(device):
    pytest.importorskip("triton")
    from ablate.kernels.triton_perplexity import token_nll_forward_triton

    hidden, weight, targets, _ = make(8, 16, 40, torch.float32, device)
    with pytest.raises(ValueError, match="rows must be contiguous"):
        token_nll_forward_triton(hidden, weight.T.contiguous().T, None, targets, -100, 1.0, None)
    with pytest.raises(TypeError, match="must share one of"):
        token_nll_forward_triton(hidden, weight.half(), None, targets, -100, 1.0, None)
    with pytest.raises(ValueError, match="targets must be a contiguous integer"):
        token_nll_forward_triton(hidden, weight, None, targets.float(), -100, 1.0, None)


# ---------------------------------------------------------------- errors

H, V = 8, 10


def _args(**changes):
    args = {
        "hidden": torch.randn(4, H),
        "weight": torch.randn(V, H),
        "targets": torch.tensor([1, 2, -100, 9]),
    }
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"hidden": torch.randn(2, 2, H)}, ValueError, r"flatten batches"),
        ({"weight": torch.randn(H, V)}, ValueError, r"not its transpose"),
        ({"weight": torch.randn(0, H)}, ValueError, "empty vocabulary"),
        ({"hidden": torch.randn(4, H).double()}, TypeError, "supported are"),
        ({"weight": torch.randn(V, H).half()}, TypeError, "dtype mismatch"),
        ({"targets": torch.tensor([1, 2, 3])}, ValueError, r"targets must be 1-D \[T\]"),
        ({"targets": torch.tensor([1.0, 2, 3, 4])}, TypeError, "targets.long()"),
        ({"targets": torch.tensor([1, 2, 10, 0])}, ValueError, "target 10 is outside"),
        ({"targets": torch.tensor([1, -1, 3, 0])}, ValueError, "target -1 is outside"),
        ({"bias": torch.randn(V + 1)}, ValueError, r"bias must be \[V\]"),
        ({"bias": torch.arange(V)}, TypeError, "bias must be a float"),
        ({"bias": torch.randn(V, device="meta")}, ValueError, "different devices"),
        ({"softcap": 0.0}, ValueError, "softcap must be None or a finite number > 0"),
        ({"softcap": math.inf}, ValueError, "softcap must be"),
        ({"logit_scale": math.nan}, ValueError, "logit_scale must be a finite"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
        ({"hidden": [[0.0] * H] * 4}, TypeError, "hidden must be a Tensor"),
        ({"backend": "gpu"}, ValueError, "backend must be one of"),
    ],
)
def test_rejects_bad_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        kernels.token_nll(**_args(**changes))


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.token_nll(**_args(), backend="triton")


def test_triton_backend_without_triton_names_the_extra(monkeypatch):
    monkeypatch.setattr(_backend, "triton_available", lambda: False)
    with pytest.raises(ImportError, match=r"ablate-sim\[triton\]"):
        kernels.token_nll(**_args(), backend="triton")


# What tl.dot must lower to: tensor-core MMA for 16-bit inputs (wgmma on Hopper, mma.sync
# on Ampere); fp32 runs input_precision="ieee" (exact fp32 products), i.e. FMAs.
_DOT_INSTRUCTION = {
    ("bf16", 90): "wgmma",
    ("fp16", 90): "wgmma",
    ("bf16", 80): "mma.sync",
    ("fp16", 80): "mma.sync",
    ("fp32", 90): "fma.rn.f32",
    ("fp32", 80): "fma.rn.f32",
}


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize("capability", AOT_CAPABILITIES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_kernel_compiles_for_gpus_without_a_gpu(aot_ptx, dtype, capability):
    """The real compiler accepts the kernel (bias and soft-capping on) for every launcher
    dtype, and its dot product uses the instruction that makes it fast there."""
    ptx = aot_ptx("perplexity", dtype, capability)
    assert f".target sm_{capability}" in ptx
    assert _DOT_INSTRUCTION[dtype, capability] in ptx
