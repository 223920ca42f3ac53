"""MergedModel and the merge methods: merges are exact, walks agree with merges, plug-ins
share one contract."""

from __future__ import annotations

import pytest
import torch

from ablate import Evaluator, Mixture, Pool
from ablate.engine.merge import MergedModel
from ablate.engine.merges import MERGES, Extrapolate, MergeMethod, merge_method, norm_lambda
from ablate.pool.errors import AblateError
from ablate.pool.weights import load_tensors

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ev(full_pool_dir, corpus):
    return Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)


def _member_tensors(pool: Pool, partition: str) -> list[dict[str, torch.Tensor]]:
    return [load_tensors(pool.weights_path(m)) for m in pool.members if m.partition == partition]


def test_uniform_subset_equals_mean_of_members(ev):
    pool = ev.pool
    ev.merged.load(Mixture.uniform(["code", "wiki"]))
    code, wiki = _member_tensors(pool, "code"), _member_tensors(pool, "wiki")
    params = dict(ev.merged.model.named_parameters())
    for name in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight", "model.norm.weight"):
        # a partition's weight is spread evenly over its units
        want = 0.5 * torch.stack([t[name] for t in code]).mean(0) + 0.5 * torch.stack(
            [t[name] for t in wiki]
        ).mean(0)
        torch.testing.assert_close(params[name], want, atol=1e-6, rtol=1e-6)


def test_visit_loads_each_mixture_once_walks_and_merges_agree(ev):
    """``visit`` yields every mixture once, uniform subsets first; the skeleton then holds
    exactly what ``load`` writes (running sums within float rounding)."""
    model = ev.merged
    weighted = Mixture.of({"code": 0.2, "math": 0.8})
    mixtures = [weighted, *ev.all_subsets()]
    seen = []
    for m in model.visit(mixtures):
        walked = model.flat.clone()
        model.load(m)
        torch.testing.assert_close(walked, model.flat, atol=1e-6, rtol=1e-5)
        seen.append(m)
    assert sorted(m.key for m in seen) == sorted(m.key for m in mixtures)
    assert seen[-1].key == weighted.key  # merged one by one after the walk


def test_gray_walk_matches_independent_merges(full_pool_dir, corpus):
    ev = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    walked = ev.run_many(ev.all_subsets())
    assert len(walked) == 7
    single = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    for r in walked:
        single.merged.load(r.mixture)  # the plain merge path
        direct = single.score_current()
        for d in ev.domains:
            assert r.scores[d].nll == pytest.approx(direct[d].nll, rel=1e-5)


def test_lora_merge_is_exact(lora_pool_dir, corpus):
    ev = Evaluator(lora_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    pool = ev.pool
    mix = Mixture.of({"code": 0.25, "wiki": 0.75})
    ev.evaluate(mix)
    w = ev.member_weights(mix)
    base = pool.load_base_model()
    spec = pool.manifest.recipe.lora
    name = "model.layers.1.self_attn.v_proj"  # LoRA on Llama: q_proj, v_proj (peft's default)
    delta = sum(
        w[i]
        * (
            t[f"base_model.model.{name}.lora_B.weight"]
            @ t[f"base_model.model.{name}.lora_A.weight"]
        )
        for i, t in enumerate(load_tensors(pool.weights_path(m)) for m in pool.members)
    )
    want = dict(base.named_parameters())[f"{name}.weight"] + spec.alpha / spec.rank * delta
    got = dict(ev.merged.model.named_parameters())[f"{name}.weight"]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_lora_single_member_matches_peft(lora_pool_dir, corpus):
    from peft import PeftModel, set_peft_model_state_dict

    from ablate.pool.weights import wrap_lora

    ev = Evaluator(lora_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    pool = ev.pool
    part = next(p for p, x in pool.partitions.items() if len(x.index.units) == 1)
    res = ev.evaluate(part)
    (rec,) = [m for m in pool.members if m.partition == part]
    peft_model = wrap_lora(pool.load_base_model(), pool.manifest.recipe.lora)
    set_peft_model_state_dict(peft_model, load_tensors(pool.weights_path(rec)))
    assert isinstance(peft_model, PeftModel)
    merged = peft_model.merge_and_unload()
    got = dict(ev.merged.model.named_parameters())
    for k, v in merged.named_parameters():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-5)
    assert res.macro_ppl > 1


def test_extrapolated_merges_and_the_norm_lambda(full_pool_dir):
    """``theta_0 + lambda * sum_i w_i (theta_i - theta_0)``, in memory and streamed, and the
    per-mixture lambda that restores the members' mean update length."""
    pool = Pool.open(full_pool_dir)
    seed = torch.cat([p.detach().reshape(-1) for _, p in pool.load_base_model().named_parameters()])
    n = len(pool.members)
    w = torch.full((n,), 1.0 / n)
    for budget in (None, 1):  # in memory, then streamed chunk by chunk
        m = MergedModel(pool, pool.members, device=CPU, progress=False, stack_budget_bytes=budget)
        m.merge(w)
        plain = m.flat.clone()
        m.merge(w, extrapolate=1.5)
        torch.testing.assert_close(m.flat, seed + 1.5 * (plain - seed), atol=1e-6, rtol=1e-5)
        m.merge(w, method=Extrapolate(1.5))  # the same method, named by its object
        torch.testing.assert_close(m.flat, seed + 1.5 * (plain - seed), atol=1e-6, rtol=1e-5)
        d = torch.stack([m.member_row(i) - seed for i in range(n)]).double()  # (N, P) updates
        lengths = d.norm(dim=1)
        want = float((w.double() @ lengths) / (w.double() @ d).norm())
        assert norm_lambda(m, w) == pytest.approx(want, rel=1e-6) and want > 1  # averaging shortens
        one = torch.zeros(n)
        one[0] = 1.0
        assert norm_lambda(m, one) == pytest.approx(1.0)  # one member: nothing to restore
        m.merge(w, extrapolate="norm")
        torch.testing.assert_close(m.flat, seed + want * (plain - seed), atol=1e-5, rtol=1e-4)


def test_merge_method_names_and_numbers():
    assert merge_method(1.0).name == "average" and merge_method("average").name == "average"
    assert merge_method(2.0) == Extrapolate(2.0) and merge_method("norm").name == "norm"
    for bad in ("nope", 0.0, -1.0, float("nan")):
        with pytest.raises(AblateError, match="merge method|lambda"):
            merge_method(bad)


@pytest.mark.parametrize("name", sorted(MERGES))
def test_every_merge_method_keeps_the_contract(name, full_pool_dir):
    """Each registered method is a ``MergeMethod`` with its name; with its defaults, a
    one-member mixture is exactly that member (in memory and streamed) and a merge writes
    only the skeleton (the stack is left as it was)."""
    method = MERGES[name]()
    assert isinstance(method, MergeMethod) and method.name == name
    pool = Pool.open(full_pool_dir)
    n = len(pool.members)
    for budget in (None, 1):
        m = MergedModel(pool, pool.members, device=CPU, progress=False, stack_budget_bytes=budget)
        stack = None if m.stack is None else m.stack.clone()
        for row in (0, n - 1):
            one = torch.zeros(n)
            one[row] = 1.0
            m.merge(one, method=method)
            torch.testing.assert_close(m.flat, m.member_row(row), atol=1e-6, rtol=1e-5)
        if stack is not None:
            assert torch.equal(stack, m.stack)
