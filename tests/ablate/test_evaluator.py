"""Evaluator: merges are exact, scores match Hugging Face, walks and caches agree."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from support import domain_evaluator, eval_cli_args, run_cli

from ablate import Evaluator, Mixture, MixtureError, Pool
from ablate.pool.weights import load_tensors


@pytest.fixture(scope="module")
def ev(full_pool_dir, corpus):
    return Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)


def _member_tensors(pool: Pool, partition: str) -> list[dict[str, torch.Tensor]]:
    return [load_tensors(pool.weights_path(m)) for m in pool.members if m.partition == partition]


def test_uniform_subset_equals_mean_of_members(ev):
    pool = ev.pool
    ev.evaluate(Mixture.uniform(["code", "wiki"]))  # leaves the merge in the skeleton
    code, wiki = _member_tensors(pool, "code"), _member_tensors(pool, "wiki")
    params = dict(ev.merged.model.named_parameters())
    for name in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight", "model.norm.weight"):
        # a partition's weight is spread evenly over its units
        want = 0.5 * torch.stack([t[name] for t in code]).mean(0) + 0.5 * torch.stack(
            [t[name] for t in wiki]
        ).mean(0)
        torch.testing.assert_close(params[name], want, atol=1e-6, rtol=1e-6)


def test_single_member_matches_hf_labels_loss(ev):
    """Our windows + token_nll equal a plain HF forward with labels= on the member's model."""
    from transformers import AutoModelForCausalLM

    pool = ev.pool
    part = next(p for p, x in pool.partitions.items() if len(x.index.units) == 1)
    res = ev.evaluate(Mixture.uniform([part]))
    (rec,) = [m for m in pool.members if m.partition == part]
    model = AutoModelForCausalLM.from_pretrained(
        pool.base_folder, local_files_only=True, dtype=torch.float32
    )
    model.load_state_dict(load_tensors(pool.weights_path(rec)), strict=False)
    model.eval()
    ctx = pool.manifest.context
    totals = {d: [0.0, 0] for d in ev.domains}
    for doc, d in zip(ev.eval_set.docs, ev.eval_set.doc_domain):
        doc = torch.as_tensor(np.asarray(doc, dtype=np.int64))
        for s in range(0, len(doc) - 1, ctx):
            # HF shifts labels by one, so ctx + 1 tokens give exactly our window's ctx targets.
            x = doc[s : s + ctx + 1][None]
            with torch.no_grad():
                loss = model(input_ids=x, labels=x).loss.item()
            n = x.shape[1] - 1
            totals[ev.domains[d]][0] += loss * n
            totals[ev.domains[d]][1] += n
    for d, (nll, n) in totals.items():
        assert res.scores[d].tokens == n
        assert res.ppl[d] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_batches_cut_padding_without_changing_scores(full_pool_dir, corpus):
    """Longest-first windows cut to each batch's longest: same NLL as one window per batch."""
    mix = Mixture.uniform(["code", "wiki"])
    scores = {}
    for budget in (1, 200, 1 << 20):
        ev = domain_evaluator(full_pool_dir, corpus, batch_tokens=budget)
        win = ev.eval_set.windows(ev.pool.manifest.context, 0)
        assert (np.diff(win.lengths) <= 0).all()
        assert ((win.targets != -100).sum(1) >= win.lengths - 1).all()
        batches = win.batches(budget)
        assert [b[0] for b in batches[1:]] == [b[1] for b in batches[:-1]]
        assert batches[0][0] == 0 and batches[-1][1] == len(win.lengths)
        for start, stop, length in batches:
            assert win.lengths[start:stop].max() == length
            assert (win.inputs[start:stop, length:] == 0).all() or length == win.inputs.shape[1]
            assert stop - start == 1 or (stop - start) * length <= budget
        scores[budget] = ev.evaluate(mix).scores
    for budget in (200, 1 << 20):
        for d, s in scores[budget].items():
            assert s.tokens == scores[1][d].tokens
            assert s.nll == pytest.approx(scores[1][d].nll, rel=1e-5)


def test_gray_walk_matches_independent_merges(full_pool_dir, corpus):
    ev = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    walked = ev.run_many(ev.all_subsets())
    assert len(walked) == 7
    for r in walked:
        single = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
        single._walk_subsets = None  # force the plain merge path  # noqa: SLF001
        direct = single.evaluate(r.mixture)
        for d in ev.domains:
            assert r.scores[d].nll == pytest.approx(direct.scores[d].nll, rel=1e-5)


def test_gray_subsets_change_one_member_per_step():
    from ablate.evaluator import gray_subsets

    subs = gray_subsets(5)
    assert len(subs) == 31 and len(set(subs)) == 31
    for a, b in zip(subs, subs[1:]):
        assert len(set(a) ^ set(b)) == 1
    assert all(len(s) <= 2 for s in gray_subsets(5, max_size=2))


def test_cache_hits_do_not_recompute(full_pool, corpus, monkeypatch):
    ev = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)
    first = ev.evaluate("code,math")
    assert not first.cached
    again = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)
    from ablate.engine.merge import MergedModel

    # A cache hit neither scores nor loads the members.
    monkeypatch.setattr(MergedModel, "__init__", lambda *a, **k: pytest.fail("loaded members"))
    hit = again.evaluate("math,code")
    assert hit.cached and hit.ppl == first.ppl


def test_growing_changes_keys_only_for_touched_mixtures(full_pool, corpus, tmp_path):
    from support import make_docs, write_jsonl

    ev = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)
    before = {m: ev.pool_key(Mixture.parse(m)) for m in ("code", "code,wiki")}
    ev.evaluate("code,wiki")
    new = write_jsonl(
        tmp_path / "n.jsonl", [dict(r, domain="extra") for r in make_docs("math", 4, 7)]
    )
    full_pool.add([new], by="domain", progress=False)
    full_pool.grow(progress=False)
    ev2 = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)
    assert {m: ev2.pool_key(Mixture.parse(m)) for m in before} == before
    assert ev2.evaluate("code,wiki").cached


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


@pytest.mark.parametrize(
    "spec, message",
    [
        ("code,nope", "unknown partition"),
        ("", "empty mixture"),
        ("code=nan", "must be finite"),
        ("code=1e400", "must be finite"),
        ("code=0,wiki=0", "positive weight"),
        ("code=-1,wiki=2", "negative"),
        ("../x", "path separator"),
    ],
)
def test_bad_mixtures_are_clear(ev, spec, message):
    with pytest.raises(MixtureError, match=message):
        ev.evaluate(spec)


def test_eval_by_missing_field(full_pool_dir, corpus):
    from ablate.pool.errors import DataError

    with pytest.raises(DataError, match="no field 'topic'"):
        Evaluator(full_pool_dir, corpus["eval"], by="topic", progress=False)


def test_cli_eval_json_schema(full_pool, corpus):
    args = eval_cli_args("eval", full_pool.path, corpus["eval"], "--all-subsets", "--max-size", 2)
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 6 * 4  # 6 subsets x (3 domains + macro)
    for row in rows:
        assert set(row) == {"mixture", "domain", "tokens", "nll", "ppl", "bpb"}
        assert math.isclose(sum(row["mixture"].values()), 1.0)
        if row["domain"] != "macro":
            assert row["ppl"] == pytest.approx(math.exp(row["nll"] / row["tokens"]))
    macro = [r for r in rows if r["domain"] == "macro"]
    assert len(macro) == 6
    # a repeated run reads the store and prints the same numbers
    r2 = run_cli(*args, "--json")
    assert json.loads(r2.stdout) == rows
    bad = run_cli("eval", full_pool.path, "--eval-data", corpus["eval"], "--mixture", "code,zzz")
    assert bad.returncode == 2 and "unknown partition(s) 'zzz'" in bad.stderr


def test_extrapolated_merges_and_the_norm_lambda(full_pool_dir):
    """``theta_0 + lambda * sum_i w_i (theta_i - theta_0)``, in memory and streamed, and the
    per-mixture lambda that restores the members' mean update length."""
    from ablate.engine.merge import MergedModel
    from ablate.pool import Pool

    pool = Pool.open(full_pool_dir)
    cpu = torch.device("cpu")
    seed = torch.cat([p.detach().reshape(-1) for _, p in pool.load_base_model().named_parameters()])
    n = len(pool.members)
    w = torch.full((n,), 1.0 / n)
    for budget in (None, 1):  # in memory, then streamed chunk by chunk
        m = MergedModel(pool, pool.members, device=cpu, progress=False, stack_budget_bytes=budget)
        m.merge(w)
        plain = m.flat.clone()
        m.merge(w, extrapolate=1.5)
        torch.testing.assert_close(m.flat, seed + 1.5 * (plain - seed), atol=1e-6, rtol=1e-5)
        d = torch.stack([m.member_row(i) - seed for i in range(n)]).double()  # (N, P) updates
        lengths = d.norm(dim=1)
        want = float((w.double() @ lengths) / (w.double() @ d).norm())
        assert m.norm_lambda(w) == pytest.approx(want, rel=1e-6) and want > 1  # averaging shortens
        one = torch.zeros(n)
        one[0] = 1.0
        assert m.norm_lambda(one) == pytest.approx(1.0)  # one member: nothing to restore
        m.merge(w, extrapolate="norm")
        torch.testing.assert_close(m.flat, seed + want * (plain - seed), atol=1e-5, rtol=1e-4)
