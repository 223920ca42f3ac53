"""Each member's input Grams (``ablate pool gram``), for RegMean: what they hold, that they
resume, that old pools keep their keys, that ``pool verify`` checks them, LoRA pools too."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import save
from support import run_cli

from ablate.engine.layout import MemberLayout
from ablate.mixture import Mixture
from ablate.pool import Pool, PoolError
from ablate.pool.gram import ensure_gram, gram_paths, gram_record, load_gram, member_gram
from ablate.pool.pool import member_seed
from ablate.pool.train import SequenceSampler
from ablate.pool.weights import load_tensors


def test_grams_are_each_layers_mean_input_outer_product_and_token_frequencies(full_pool):
    """The spec, recomputed with pre-hooks: mean ``x x^T`` of each linear layer's inputs over
    the member's own tokens; q, k and v read the same input; embedding rows hold the token
    frequencies; deterministic."""
    rec = full_pool.members[0]
    got, tokens = member_gram(full_pool, rec, batches=1, device="cpu")
    recipe = full_pool.manifest.recipe
    assert tokens == recipe.batch_size * recipe.seq_len
    model = full_pool.load_base_model()
    model.load_state_dict(load_tensors(full_pool.weights_path(rec)), strict=False)
    model.eval()
    sampler = SequenceSampler(
        full_pool.member_sources(rec.partition, rec.unit),
        full_pool.member_source_weights(),
        recipe.seq_len,
        member_seed(recipe.seed, f"gram:{rec.member_id}"),
    )
    batch = torch.from_numpy(sampler.batch(recipe.batch_size))[:, :-1]  # (B, T)
    seen = {}
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, module in linear.items():
        module.register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(
                name, args[0].reshape(-1, args[0].shape[-1])
            )
        )
    with torch.no_grad():
        model(input_ids=batch)
    assert set(got) == {f"{n}.weight" for n in linear} | {"model.embed_tokens.weight"}
    for name, x in seen.items():
        want = x.double().T @ x.double() / tokens
        torch.testing.assert_close(got[f"{name}.weight"].double(), want, rtol=1e-4, atol=1e-7)
    layer = "model.layers.0.self_attn"
    assert torch.equal(got[f"{layer}.q_proj.weight"], got[f"{layer}.v_proj.weight"])
    freq = got["model.embed_tokens.weight"]
    assert freq.shape == (model.config.vocab_size,)
    want = torch.bincount(batch.flatten(), minlength=freq.numel()).double() / tokens
    torch.testing.assert_close(freq.double(), want)
    again, _ = member_gram(full_pool, rec, batches=1, device="cpu")
    assert all(torch.equal(again[k], got[k]) for k in got)


def test_pool_gram_resumes_keeps_the_average_keys_and_verify_checks_it(full_pool):
    path = full_pool.path
    mixture = Mixture.of({"code": 0.3, "wiki": 0.7})
    key_before = MemberLayout(full_pool).pool_key(mixture)
    manifest = (path / "pool.json").read_bytes()
    with pytest.raises(PoolError, match="ablate pool gram"):
        MemberLayout(full_pool, merge="regmean")
    checked = full_pool.verify().checked

    r = run_cli("pool", "gram", path, "--batches", "1")
    assert r.returncode == 0, r.stderr
    n = len(full_pool.members)
    assert f"{n} member(s) computed now" in r.stdout
    assert (path / "pool.json").read_bytes() == manifest
    for m in full_pool.members:
        got = gram_record(full_pool, m)
        assert got is not None and got.batches == 1 and got.weights_sha256 == m.weights_sha256
        assert "model.embed_tokens.weight" in load_gram(full_pool, m)
        # Layers that read one input (q, k, v; gate, up) keep one Gram on disk.
        layer = "model.layers.0"
        assert got.shares[f"{layer}.self_attn.v_proj.weight"] == f"{layer}.self_attn.q_proj.weight"
        assert got.shares[f"{layer}.mlp.up_proj.weight"] == f"{layer}.mlp.gate_proj.weight"
        assert not set(got.shares) & set(load_tensors(gram_paths(full_pool, m)[0]))
    assert MemberLayout(full_pool).pool_key(mixture) == key_before
    key = MemberLayout(full_pool, merge="regmean").pool_key(mixture)
    assert key != key_before
    assert run_cli("pool", "gram", path, "--batches", "1").stdout.startswith("0 member(s)")
    report = full_pool.verify()
    assert report.ok and report.checked == checked + n

    lost = full_pool.members[-1]
    tensors, record = gram_paths(full_pool, lost)
    record.unlink()
    r = run_cli("pool", "gram", path, "--batches", "1")
    assert "1 member(s) computed now" in r.stdout and lost.member_id in r.stdout
    assert MemberLayout(full_pool, merge="regmean").pool_key(mixture) == key  # deterministic
    tensors.write_bytes(tensors.read_bytes()[:-1] + b"\0")
    bad = full_pool.verify()
    assert not bad.ok and len(bad.corrupt) == 1 and "ablate pool gram" in bad.corrupt[0]
    with pytest.raises(PoolError, match="--force"):
        load_gram(full_pool, lost)
    raw = json.loads(record.read_text())
    raw["weights_sha256"] = "0" * 64  # a record of other weights is not this member's
    record.write_text(json.dumps(raw))
    assert gram_record(full_pool, lost) is None
    with pytest.raises(PoolError, match="at least 1"):
        ensure_gram(full_pool, batches=0, progress=False)


def test_lora_grams_are_the_adapted_layers_inputs_at_the_members_weights(lora_pool_dir, tmp_path):
    shutil.copytree(lora_pool_dir, tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    done = ensure_gram(pool, batches=1, progress=False)
    assert len(done) == len(pool.members)
    rec = pool.members[0]
    adapter = load_tensors(pool.weights_path(rec))
    adapted = {
        k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        for k in adapter
        if k.endswith("lora_A.weight")
    }
    grams = load_gram(pool, rec)
    assert set(grams) == adapted and adapted
    for g in grams.values():
        assert g.shape[0] == g.shape[1] and torch.allclose(g, g.T, atol=1e-6)
        assert float(torch.linalg.eigvalsh(g.double()).min()) > -1e-6  # a Gram is PSD
    # q_proj and v_proj read the same input: one Gram per layer on disk, both names loaded.
    stored = load_tensors(gram_paths(pool, rec)[0])
    record = gram_record(pool, rec)
    assert set(stored) == {n for n in adapted if "q_proj" in n} and len(stored) == len(adapted) // 2
    assert record.shares == {n: n.replace("v_proj", "q_proj") for n in adapted if "v_proj" in n}
    computed, _ = member_gram(pool, rec, batches=1, device="cpu")
    assert all(torch.equal(grams[k], computed[k]) for k in computed)
    # A record from before shares (every Gram on disk, no field) reads as it was written.
    data = save(computed, metadata={"format": "pt"})
    tensors, record_file = gram_paths(pool, rec)
    tensors.write_bytes(data)
    raw = json.loads(record_file.read_text())
    del raw["shares"]
    raw["gram_sha256"] = hashlib.sha256(data).hexdigest()
    record_file.write_text(json.dumps(raw))
    assert gram_record(pool, rec).shares == {} and pool.verify().ok
    legacy = load_gram(pool, rec)
    assert set(legacy) == adapted and all(torch.equal(legacy[k], computed[k]) for k in computed)


def test_a_head_tied_to_the_embedding_has_no_gram_of_its_own():
    """Tied weights are one parameter under the embedding's name (the merge skeleton's
    layout): the head gets no Gram, so the shared matrix is merged as the embedding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate.pool.gram import gram_sites

    cfg = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    cfg |= dict(num_attention_heads=2, num_key_value_heads=2)
    tied = gram_sites(LlamaForCausalLM(LlamaConfig(**cfg, tie_word_embeddings=True)))
    untied = gram_sites(LlamaForCausalLM(LlamaConfig(**cfg, tie_word_embeddings=False)))
    assert set(untied) - set(tied) == {"lm_head.weight"}
    assert len(tied) == 7 and all(n.startswith("model.layers.0.") for n in tied)
