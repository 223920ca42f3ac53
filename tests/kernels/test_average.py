"""Tests for ``kernels.weighted_average``: the PyTorch twin, the Triton kernel (under
``TRITON_INTERPRET=1`` on CPU) and a float64 formula as the final judge."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import AOT_CAPABILITIES

import ablate.kernels as kernels
from ablate.kernels import _backend, reference

# (dtype, atol, rtol): fp32 accumulation is exact enough that the error is the final
# rounding into the output dtype (half an ulp: 2**-24, 2**-9, 2**-12 relative).
DTYPES = [
    (torch.float32, 1e-5, 1e-5),
    (torch.bfloat16, 1e-2, 8e-3),
    (torch.float16, 2e-3, 1e-3),
]
MEMBERS = [1, 2, 7, 33]
# 1 column, one not a multiple of the Triton block (1024) or of any chunk size.
COLUMNS = [1, 1000, 2051]


def oracle(stack: torch.Tensor, weights) -> torch.Tensor:
    """float64 ``sum_i w_i * stack[i]`` with weights rounded to fp32 like the kernels."""
    w = torch.as_tensor(weights, dtype=torch.float32).double()
    return (w[:, None] * stack.double()).sum(0)


def make(n: int, p: int, dtype: torch.dtype, device="cpu"):
    stack = torch.randn(n, p, device=device).to(dtype)
    weights = torch.randn(n, device=device)  # negative too: extrapolation is allowed
    return stack, weights


def assert_close(actual, expected, atol, rtol):
    torch.testing.assert_close(actual.double().cpu(), expected.cpu(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------- PyTorch twin


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("n", MEMBERS)
@pytest.mark.parametrize("p", COLUMNS)
def test_torch_matches_float64(n, p, dtype, atol, rtol):
    stack, w = make(n, p, dtype)
    out = kernels.weighted_average(stack, w, backend="torch")
    assert out.dtype == dtype and out.shape == (p,)
    assert_close(out, oracle(stack, w), atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("n", [2, 33])
def test_torch_chunked_path(monkeypatch, n, dtype, atol, rtol):
    """Tiny staging chunks: the last chunk is partial and out is written chunk by chunk."""
    monkeypatch.setattr(reference, "STAGE_BYTES", 64)
    monkeypatch.setattr(reference, "MIN_CHUNK_COLS", 16)
    stack, w = make(n, 1001, dtype)
    out = torch.empty(1001, dtype=torch.float16)  # forces the chunked path even for fp32
    kernels.weighted_average(stack, w, out, backend="torch")
    assert_close(out, oracle(stack, w), 2e-3 if dtype != torch.bfloat16 else atol, 1e-3)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_output_dtype_differs_from_input(in_dtype, out_dtype):
    stack, w = make(7, 999, in_dtype)
    out = torch.empty(999, dtype=out_dtype)
    result = kernels.weighted_average(stack, w, out, backend="torch")
    assert result is out
    _, atol, rtol = next(t for t in DTYPES if t[0] == out_dtype)
    assert_close(out, oracle(stack, w), atol, rtol)


def test_strided_stack_and_list_weights():
    base = torch.randn(500, 7)  # (P, N) storage, so stack = base.T has stride(1) == 7
    stack = base.T
    w = [0.5, -0.25, 1.0, 2.0, 0.0, 3, -1.5]  # ints allowed, weights need not sum to 1
    out = kernels.weighted_average(stack, w, backend="torch")
    assert_close(out, oracle(stack, w), 1e-5, 1e-5)


def test_sequence_of_tensors_keeps_member_shape():
    members = [torch.randn(13, 11) for _ in range(5)]
    members[2] = members[2].T.contiguous().T  # one non-contiguous member
    w = torch.rand(5)
    out = kernels.weighted_average(members, w, backend="torch")
    assert out.shape == (13, 11)
    expected = oracle(torch.stack([m.reshape(-1) for m in members]), w).view(13, 11)
    assert_close(out, expected, 1e-5, 1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_empty_members_give_empty_output(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    stack = torch.empty(3, 0, dtype=torch.bfloat16)
    assert kernels.weighted_average(stack, [1, 2, 3], backend=backend).shape == (0,)
    members = [torch.empty(0, 4)] * 2
    assert kernels.weighted_average(members, [1, 1], backend=backend).shape == (0, 4)


def test_sixty_four_members_uniform_is_mean():
    stack = torch.randn(64, 3001)
    out = kernels.weighted_average(stack, [1 / 64] * 64)
    assert_close(out, stack.double().mean(0), 1e-5, 1e-5)


def test_no_autograd_and_writes_into_view():
    flat = torch.zeros(10)
    stack = torch.randn(3, 10, requires_grad=True)
    kernels.weighted_average(stack, [1.0, 2.0, 3.0], flat)
    assert flat.grad_fn is None
    assert_close(flat, oracle(stack.detach(), [1.0, 2.0, 3.0]), 1e-5, 1e-5)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    p=st.integers(1, 300),
    k=st.integers(0, 8),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_one_hot_weights_return_the_member_exactly(n, p, k, dtype):
    """Invariant: a one-hot mixture is that member, bit for bit, in every dtype."""
    stack = torch.randn(n, p).to(dtype)
    w = torch.zeros(n)
    w[k % n] = 1.0
    assert torch.equal(kernels.weighted_average(stack, w), stack[k % n])


# ---------------------------------------------------------------- Triton kernel


@pytest.mark.triton
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("n", MEMBERS)
@pytest.mark.parametrize("p", COLUMNS)
def test_triton_matches_twin_and_float64(device, n, p, dtype, atol, rtol):
    pytest.importorskip("triton")
    stack, w = make(n, p, dtype, device)
    out = kernels.weighted_average(stack, w, backend="triton")
    twin = kernels.weighted_average(stack, w, backend="torch")
    assert out.dtype == dtype
    assert_close(out, oracle(stack, w), atol, rtol)
    assert_close(out, twin.double(), atol, rtol)


@pytest.mark.triton
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_triton_sequence_and_strided_stack(device, out_dtype):
    pytest.importorskip("triton")
    members = [torch.randn(9, 37, device=device, dtype=torch.bfloat16) for _ in range(3)]
    w = [0.2, 0.3, 0.5]
    out = torch.empty(9, 37, device=device, dtype=out_dtype)
    kernels.weighted_average(members, w, out, backend="triton")
    expected = oracle(torch.stack([m.reshape(-1) for m in members]), w).view(9, 37)
    assert_close(out, expected, 1e-2, 8e-3)

    strided = torch.randn(333, 3, device=device).T  # (3, 333), stride(1) == 3
    flat = kernels.weighted_average(strided, w, backend="triton")
    assert_close(flat, oracle(strided, w), 1e-5, 1e-5)


@pytest.mark.triton
def test_triton_launcher_checks_layout(device):
    pytest.importorskip("triton")
    from ablate.kernels.triton_average import weighted_average_triton

    stack = torch.randn(3, 100, device=device)
    w = torch.rand(3, device=device)
    with pytest.raises(ValueError, match="rows must be contiguous"):
        weighted_average_triton(torch.randn(100, 3, device=device).T, w, torch.empty(100))
    with pytest.raises(ValueError, match="weights must be a contiguous fp32"):
        weighted_average_triton(stack, w.double(), torch.empty(100, device=device))
    with pytest.raises(ValueError, match="out must be a contiguous"):
        weighted_average_triton(stack, w, torch.empty(200, device=device)[::2])
    with pytest.raises(TypeError, match="must be one of"):
        weighted_average_triton(stack.double(), w, torch.empty(100, device=device))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "stack, weights, out, error, match",
    [
        (torch.empty(0, 5), [], None, ValueError, "empty stack"),
        ([], [], None, ValueError, "empty stack"),
        (torch.randn(5), [1.0], None, ValueError, "must be 2-D"),
        ([torch.randn(3), torch.randn(4)], [1, 1], None, ValueError, "shape mismatch: member 1"),
        (
            [torch.randn(3), torch.randn(3).half()],
            [1, 1],
            None,
            TypeError,
            "dtype mismatch: member 1",
        ),
        (torch.randn(2, 3).double(), [1, 1], None, TypeError, "supported are"),
        (torch.randn(2, 3).int(), [1, 1], None, TypeError, "cast with"),
        (torch.randn(2, 3), [1.0], None, ValueError, "got 1 weights for 2 members"),
        (torch.randn(2, 3), torch.ones(2, 1), None, ValueError, r"one weight per member"),
        (torch.randn(2, 3), [1.0, math.nan], None, ValueError, "NaN or inf"),
        (torch.randn(2, 3), [1.0, math.inf], None, ValueError, "NaN or inf"),
        (torch.randn(2, 3), [1.0, 1e39], None, ValueError, "NaN or inf"),
        (torch.randn(2, 3), "ab", None, TypeError, "list of numbers"),
        (torch.randn(2, 3), [True, False], None, TypeError, "list of numbers"),
        (torch.randn(2, 3), [1, 1], torch.empty(4), ValueError, r"out has shape \(4,\)"),
        (torch.randn(2, 3), [1, 1], torch.empty(3, device="meta"), ValueError, "out is on meta"),
        (torch.randn(2, 3), [1, 1], torch.empty(6)[::2], ValueError, "not contiguous"),
        (torch.randn(2, 3), [1, 1], torch.empty(3).double(), TypeError, "out has dtype"),
        ("stack", [1], None, TypeError, "sequence of tensors"),
        ([torch.randn(3), "x"], [1, 1], None, TypeError, "member 1 is a str"),
    ],
)
def test_rejects_bad_arguments(stack, weights, out, error, match):
    with pytest.raises(error, match=match):
        kernels.weighted_average(stack, weights, out)


def test_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.weighted_average(torch.randn(2, 3), [1, 1], backend="cuda")


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.weighted_average(torch.randn(2, 3), [1, 1], backend="triton")


def test_triton_backend_without_triton_names_the_extra(monkeypatch):
    monkeypatch.setattr(_backend, "triton_available", lambda: False)
    with pytest.raises(ImportError, match=r"ablate-sim\[triton\]"):
        kernels.weighted_average(torch.randn(2, 3), [1, 1], backend="triton")
    # "auto" quietly uses the twin instead.
    assert kernels.weighted_average(torch.randn(2, 3), [1, 1]).shape == (3,)


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize("capability", AOT_CAPABILITIES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_kernel_compiles_for_gpus_without_a_gpu(aot_ptx, dtype, capability):
    """The real compiler (not the interpreter) accepts the kernel for every launcher dtype:
    the interpreter does not catch GPU-only errors."""
    ptx = aot_ptx("average", dtype, capability)
    assert f".target sm_{capability}" in ptx
    assert "ld.global" in ptx
