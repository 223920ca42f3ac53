"""Each member's diagonal Fisher (``ablate pool fisher``): what it computes, that it resumes,
that it changes nothing else in the pool, and the one-line refusals."""

from __future__ import annotations

import json
import shutil
from functools import partial

import pytest
import torch
from support import run_cli

from ablate.engine.layout import MemberLayout
from ablate.mixture import Mixture
from ablate.pool import Pool, PoolError
from ablate.pool.fisher import (
    FISHER_FILE,
    FISHER_RECORD,
    ensure_fisher,
    fisher_record,
    load_fisher,
    member_fisher,
)
from ablate.pool.pool import member_seed
from ablate.pool.train import SequenceSampler
from ablate.pool.weights import load_tensors


def test_fisher_is_the_mean_squared_per_sequence_gradient(full_pool):
    """The spec, computed independently: one gradient per sequence of the member's own
    loss on its own tokens, squared, averaged; deterministic; zero where a token never
    occurs (its embedding row gets no gradient)."""
    rec = full_pool.members[0]
    got, n = member_fisher(full_pool, rec, batches=1, device="cpu")
    recipe = full_pool.manifest.recipe
    assert n == recipe.batch_size
    model = full_pool.load_base_model()
    model.load_state_dict(load_tensors(full_pool.weights_path(rec)), strict=False)
    params = dict(model.named_parameters())
    sampler = SequenceSampler(
        full_pool.member_sources(rec.partition, rec.unit),
        full_pool.member_source_weights(),
        recipe.seq_len,
        member_seed(recipe.seed, f"fisher:{rec.member_id}"),
    )
    want = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    for seq in torch.from_numpy(sampler.batch(recipe.batch_size)):
        logits = model(input_ids=seq[None, :-1]).logits  # (1, T, V)
        loss = torch.nn.functional.cross_entropy(logits[0], seq[1:])
        for (k, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
            want[k] += g.double() ** 2 / n
    assert set(got) == set(params)
    for k in params:
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-4, atol=1e-12)
    assert all(bool((t >= 0).all()) and bool(t.isfinite().all()) for t in got.values())
    emb = got["model.embed_tokens.weight"]
    assert bool((emb.sum(1) == 0).any())  # unseen tokens: no curvature, the average decides
    again, _ = member_fisher(full_pool, rec, batches=1, device="cpu")
    assert all(torch.equal(again[k], got[k]) for k in got)


def test_pool_fisher_resumes_and_keeps_the_pool_and_its_keys(full_pool):
    """Old pools keep their files and the plain average's keys; each member gets its own
    files, written last by its record; a rerun computes nothing, a lost record only its member."""
    path = full_pool.path
    mixture = Mixture.of({"code": 0.3, "wiki": 0.7})
    key_before = MemberLayout(full_pool).pool_key(mixture)
    records = {
        m.member_id: (full_pool.member_folder(m.partition, m.unit) / "member.json")
        for m in full_pool.members
    }
    before = {k: p.read_bytes() for k, p in records.items()}
    manifest = (path / "pool.json").read_bytes()
    with pytest.raises(PoolError, match="ablate pool fisher"):
        MemberLayout(full_pool, merge="fisher")

    r = run_cli("pool", "fisher", path, "--batches", "1")
    assert r.returncode == 0, r.stderr
    n = len(full_pool.members)
    assert f"{n} member(s) computed now" in r.stdout
    assert (path / "pool.json").read_bytes() == manifest
    assert {k: p.read_bytes() for k, p in records.items()} == before
    for m in full_pool.members:
        got = fisher_record(full_pool, m)
        assert got is not None and got.batches == 1 and got.weights_sha256 == m.weights_sha256
        assert got.sequences == full_pool.manifest.recipe.batch_size
        assert set(load_fisher(full_pool, m)) == set(load_tensors(full_pool.weights_path(m)))
    assert MemberLayout(full_pool).pool_key(mixture) == key_before  # the average: same keys
    fisher_key = MemberLayout(full_pool, merge="fisher").pool_key(mixture)
    assert fisher_key not in (
        key_before,
        MemberLayout(full_pool, merge="fisher_tensor").pool_key(mixture),
    )

    r = run_cli("pool", "fisher", path, "--batches", "1")
    assert r.returncode == 0 and "0 member(s) computed now" in r.stdout
    lost = full_pool.members[-1]
    (full_pool.member_folder(lost.partition, lost.unit) / FISHER_RECORD).unlink()
    r = run_cli("pool", "fisher", path, "--batches", "1")
    assert "1 member(s) computed now" in r.stdout and lost.member_id in r.stdout
    assert MemberLayout(full_pool, merge="fisher").pool_key(mixture) == fisher_key  # deterministic


def test_a_tampered_or_stale_fisher_is_refused_in_one_line(full_pool):
    ensure_fisher(full_pool, batches=1, progress=False)
    rec = full_pool.members[0]
    folder = full_pool.member_folder(rec.partition, rec.unit)
    data = bytearray((folder / FISHER_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / FISHER_FILE).write_bytes(bytes(data))
    with pytest.raises(PoolError, match="--force"):
        load_fisher(full_pool, rec)
    # A record of other weights (the member was retrained) is not this member's Fisher.
    raw = json.loads((folder / FISHER_RECORD).read_text())
    raw["weights_sha256"] = "0" * 64
    (folder / FISHER_RECORD).write_text(json.dumps(raw))
    assert fisher_record(full_pool, rec) is None
    assert [r.member for r in ensure_fisher(full_pool, batches=1, progress=False)] == [
        rec.member_id
    ]


def test_a_lora_members_fisher_is_its_effective_weights_squared_per_sequence_gradient(
    lora_pool_dir, tmp_path
):
    """A LoRA member's Fisher is of its adapted weights as merged (W0 + s B A), computed here
    the other way: through peft's unmerged adapter, the gradient of each adapted layer's
    weight is sum_t g_t x_t^T from the layer's inputs x_t and output gradients g_t."""
    from peft import set_peft_model_state_dict

    from ablate.pool.weights import wrap_lora

    shutil.copytree(lora_pool_dir, tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    rec = pool.members[0]
    got, n = member_fisher(pool, rec, batches=1, device="cpu")
    recipe = pool.manifest.recipe
    adapter = load_tensors(pool.weights_path(rec))
    assert set(got) == pool.method.adapted_weights(adapter) and got  # adapted weights only
    model = wrap_lora(pool.load_base_model(), recipe.lora)
    set_peft_model_state_dict(model, adapter)
    model.eval()
    layers = {
        name.removeprefix("base_model.model.") + ".weight": module
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and hasattr(module, "base_layer")
    }
    assert set(layers) == set(got)
    seen: dict[str, torch.Tensor] = {}  # name: the layer's input; name/g: its output's gradient

    def capture(_module, inputs, out, name):
        seen[name] = inputs[0].detach()
        out.register_hook(lambda g: seen.__setitem__(f"{name}/g", g))

    for name, module in layers.items():
        module.register_forward_hook(partial(capture, name=name))
    sampler = SequenceSampler(
        pool.member_sources(rec.partition, rec.unit),
        pool.member_source_weights(),
        recipe.seq_len,
        member_seed(recipe.seed, f"fisher:{rec.member_id}"),
    )
    want = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in got.items()}
    for seq in torch.from_numpy(sampler.batch(recipe.batch_size)):
        logits = model(input_ids=seq[None, :-1]).logits  # (1, T, V)
        torch.nn.functional.cross_entropy(logits[0], seq[1:]).backward()
        for k in want:
            x, g = seen[k][0].double(), seen[k + "/g"][0].double()  # (T, in), (T, out)
            want[k] += (g.T @ x) ** 2 / n  # (out, in): the weight's gradient, squared
    for k in want:
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-3, atol=1e-12)
    assert any(float(t.sum()) > 0 for t in got.values())

    r = run_cli("pool", "fisher", pool.path, "--batches", "1")
    assert r.returncode == 0, r.stderr
    assert all(fisher_record(pool, m) is not None for m in pool.members)
    assert set(load_fisher(pool, rec)) == set(got)


def test_bad_batches_are_refused_in_one_line(full_pool):
    with pytest.raises(PoolError, match="at least 1"):
        ensure_fisher(full_pool, batches=0, progress=False)


def test_an_interrupted_run_keeps_what_it_finished_and_resumes(full_pool, monkeypatch):
    import ablate.pool.fisher as fisher

    real = fisher.member_fisher
    calls = []

    def dies_on_the_second(pool, rec, **kw):
        calls.append(rec.member_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed while computing the second member
        return real(pool, rec, **kw)

    monkeypatch.setattr(fisher, "member_fisher", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        ensure_fisher(full_pool, batches=1, progress=False)
    members = full_pool.members
    assert fisher_record(full_pool, members[0]) is not None
    assert all(fisher_record(full_pool, m) is None for m in members[1:])
    leftovers = [p.name for p in full_pool.path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    monkeypatch.setattr(fisher, "member_fisher", real)
    again = ensure_fisher(full_pool, batches=1, progress=False)
    assert [r.member for r in again] == [m.member_id for m in members[1:]]


def test_pool_verify_checks_each_fisher_it_finds(full_pool):
    before = full_pool.verify()
    assert before.ok
    ensure_fisher(full_pool, batches=1, progress=False)
    after = full_pool.verify()
    assert after.ok and after.checked == before.checked + len(full_pool.members)
    rec = full_pool.members[0]
    tensors = full_pool.member_folder(rec.partition, rec.unit) / FISHER_FILE
    tensors.write_bytes(tensors.read_bytes()[:-1] + b"\0")
    bad = full_pool.verify()
    assert not bad.ok and len(bad.corrupt) == 1
    assert rec.member_id in bad.corrupt[0] and "--force" in bad.corrupt[0]
