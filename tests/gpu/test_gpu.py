"""On a CUDA device: the Triton kernels against their PyTorch twins, and grow + eval end to end.

Elsewhere the Triton kernels run under the interpreter only (``tests/kernels``); these tests
are what ``benchmarks/gpu_check.sh`` runs on a GPU machine (``pytest -m gpu``). Sizes are
real-GPU sizes (more than a block, a tile or an L2 line) and deliberately odd.
"""

from __future__ import annotations

import math

import pytest
import torch

import ablate.kernels as kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# (dtype, atol, rtol): the merge accumulates in fp32, so the error is the final rounding;
# the NLL computes fp32 logits, so the error is fp32 rounding of H- and V-term sums (with
# room for the GPU's approximate exp and tensor-core accumulation order).
MERGE_DTYPES = [
    (torch.float32, 1e-5, 1e-5),
    (torch.bfloat16, 1e-2, 8e-3),
    (torch.float16, 2e-3, 1e-3),
]
NLL_DTYPES = [
    (torch.float32, 1e-4, 1e-5),
    (torch.bfloat16, 2e-4, 1e-5),
    (torch.float16, 2e-4, 1e-5),
]
MERGE_SHAPES = [(1, 1), (3, 1025), (8, 1_000_003), (33, 65_537)]  # (members, columns)
NLL_SHAPES = [(1, 64, 1000), (37, 96, 32_003), (1031, 256, 50_257), (513, 128, 128 * 1024 + 7)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("dtype,atol,rtol", MERGE_DTYPES)
@pytest.mark.parametrize("n,p", MERGE_SHAPES)
def test_weighted_average_triton_matches_torch_on_cuda(n, p, dtype, atol, rtol):
    stack = torch.randn(n, p, device="cuda").to(dtype)
    w = torch.randn(n, device="cuda")  # negative weights too: extrapolation is allowed
    ours = kernels.weighted_average(stack, w, backend="triton")
    twin = kernels.weighted_average(stack, w, backend="torch")
    judge = (w.double()[:, None] * stack.double()).sum(0).to(dtype)
    assert ours.dtype == dtype and ours.device.type == "cuda"
    torch.testing.assert_close(ours.float(), twin.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(ours.float(), judge.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype,atol,rtol", NLL_DTYPES)
@pytest.mark.parametrize("t,h,v", NLL_SHAPES)
@pytest.mark.parametrize("bias,scale,softcap", [(False, 1.0, None), (True, 0.37, 5.0)])
def test_token_nll_triton_matches_torch_on_cuda(t, h, v, dtype, atol, rtol, bias, scale, softcap):
    hidden = torch.randn(t, h, device="cuda").to(dtype)
    weight = (torch.randn(v, h, device="cuda") * (3.0 / math.sqrt(h))).to(dtype)
    targets = torch.randint(0, v, (t,), device="cuda")
    targets[2::5] = -100  # ignored positions
    b = torch.randn(v, device="cuda") if bias else None
    kw = dict(bias=b, logit_scale=scale, softcap=softcap)
    ours = kernels.token_nll(hidden, weight, targets, backend="triton", **kw)
    twin = kernels.token_nll(hidden, weight, targets, backend="torch", **kw)
    z = hidden.double() @ weight.double().T * scale
    if b is not None:
        z = z + b.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    judge = torch.logsumexp(z, 1) - z.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    judge = torch.where(targets != -100, judge, 0.0)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), twin.double(), atol=atol, rtol=rtol)
    torch.testing.assert_close(ours.double(), judge, atol=atol, rtol=rtol)


def test_grow_and_eval_on_cuda_match_cpu(corpus, tmp_path):
    """A tiny pool grown on CUDA scores the same on CUDA (Triton) as on CPU (the twins)."""
    from support import domain_evaluator, tiny_recipe, tiny_spec

    from ablate.pool import Pool

    pool = Pool.create(
        tmp_path / "pool",
        seed_data=corpus["seed"],
        recipe=tiny_recipe(),
        tiny=tiny_spec(),
        progress=False,
        device="cuda",
    )
    pool.add([corpus["train"]], by="domain", progress=False)
    pool.grow(progress=False, device="cuda")
    mixtures = ["code", "wiki", "code,wiki"]
    on_gpu = domain_evaluator(pool.path, corpus, device="cuda").run_many(mixtures)
    on_cpu = domain_evaluator(pool.path, corpus, device="cpu").run_many(mixtures)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        for d in c.scores:
            assert g.scores[d].tokens == c.scores[d].tokens
            assert math.isfinite(g.scores[d].ppl)
            assert g.scores[d].ppl == pytest.approx(c.scores[d].ppl, rel=2e-3)
