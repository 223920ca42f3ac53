"""The members' shared AdamW preconditioner (``--member-preconditioner seed``).

Estimated once per pool on the seed data at the seed's weights, checked like the pool's
other files, given to every member's optimizer and to nothing else (real validation models
train plainly); refused in one line where it cannot apply.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import run_cli, tiny_recipe, tiny_spec

from ablate.pool import DataError, Pool, PoolError
from ablate.pool import preconditioner as pre
from ablate.pool.seed import load_base
from ablate.pool.train import SequenceSampler, continue_pretraining
from ablate.pool.weights import load_tensors, save_tensors


def test_the_estimate_is_the_mean_clipped_squared_gradient_on_the_seed_data(seeded, monkeypatch):
    recipe = seeded.manifest.recipe
    tokens = np.asarray(Pool.open(seeded.path).seed_tokens(), dtype=np.int64)
    model = seeded.load_base_model()
    monkeypatch.setattr(pre, "BATCHES", 2)
    got = pre.estimate_second_moments(model, tokens, recipe, batches=2)
    # by hand: the same two batches, each gradient clipped to the recipe's norm
    sampler = SequenceSampler([tokens], [1.0], recipe.seq_len, pre._SAMPLER_SEED)
    model = seeded.load_base_model()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    want = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    for _ in range(2):
        b = torch.from_numpy(sampler.batch(recipe.batch_size))
        logits = model(input_ids=b[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten())
        grads = torch.autograd.grad(loss, [dict(model.named_parameters())[n] for n in names])
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        scale = min(1.0, recipe.grad_clip / (float(norm) + 1e-6))
        for n, g in zip(names, grads, strict=True):
            want[n] += (g * scale).square() / 2
    assert set(got) == set(want)
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-12)


def test_a_pool_records_it_and_its_members_train_from_it(seeded, full_pool_dir):
    recipe = json.loads((seeded.path / "pool.json").read_text())["recipe"]
    assert recipe["member_preconditioner"] == "seed"
    assert seeded.manifest.recipe.real().member_preconditioner == "fresh"  # real models: plain
    assert (seeded.path / pre.PRECONDITIONER_FILE).is_file()
    assert seeded.verify().ok
    moments = pre.load_preconditioner(seeded.path, seeded.manifest.base_sha256)
    assert all(bool((v >= 0).all()) and v.abs().sum() > 0 for v in moments.values())
    # the same member from a fresh optimizer lands elsewhere (same seed, data and order)
    plain = Pool.open(full_pool_dir)
    rec = seeded.members[0]
    twin = plain.member(rec.partition, rec.unit)
    assert twin is not None and twin.data_hash == rec.data_hash
    a = load_tensors(seeded.weights_path(rec))
    b = load_tensors(plain.weights_path(twin))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-4


def test_members_take_small_steps_where_the_seed_data_moved_the_weights_a_lot(seeded, corpus):
    """Second moments that dwarf the member's gradients leave the member at the seed; with
    none (a fresh AdamW) the same run moves every weight."""
    recipe = seeded.manifest.recipe
    stream = np.asarray(seeded.seed_tokens(), dtype=np.int64)
    moments = pre.load_preconditioner(seeded.path, seeded.manifest.base_sha256)
    huge = {k: v + 1e6 for k, v in moments.items()}
    seed = seeded.load_base_model()
    ref = {k: v.clone() for k, v in seed.state_dict().items()}

    def moved(second):
        model, _ = continue_pretraining(
            seeded.load_base_model(), recipe, [stream], [1.0], 4096, seed=0, second_moments=second
        )
        return max(float((v - ref[k]).abs().max()) for k, v in model.state_dict().items())

    assert moved(huge) < 1e-5 < moved(None)


def test_a_tampered_or_lost_preconditioner_is_reported_and_refused(seeded, tmp_path):
    import shutil

    copy = tmp_path / "pool"
    shutil.copytree(seeded.path, copy)
    pool = Pool.open(copy)
    f = copy / pre.PRECONDITIONER_FILE
    t = load_tensors(f)
    save_tensors({k: v * 2 for k, v in t.items()}, f)
    assert any("sha256 mismatch" in c for c in pool.verify().corrupt)
    with pytest.raises(Exception, match="sha256"):
        pool._second_moments()
    (copy / pre.PRECONDITIONER_RECORD).unlink()
    assert any("missing" in c for c in pool.verify().corrupt)
    with pytest.raises(PoolError, match="--member-preconditioner seed"):
        pool._second_moments()


def test_refused_in_one_line_without_seed_data_or_on_a_lora_pool(tmp_path, full_pool_dir, corpus):
    base = str(full_pool_dir / "base")
    with pytest.raises(DataError, match="--seed-data"):
        Pool.create(tmp_path / "a", base=base, recipe=tiny_recipe(member_preconditioner="seed"))
    with pytest.raises(PoolError, match="--method full"):
        Pool.create(
            tmp_path / "b",
            base=base,
            seed_data=corpus["seed"],
            recipe=tiny_recipe(member_preconditioner="seed", method="lora"),
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    r = run_cli("pool", "init", tmp_path / "c", "--base", base, "--member-preconditioner", "seed")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--seed-data" in r.stderr
    r = run_cli("pool", "init", tmp_path / "d", "--base", base, "--member-preconditioner", "x")
    assert r.returncode == 2 and "fresh" in r.stderr and "seed" in r.stderr


def test_load_base_reads_the_same_seed_the_estimate_used(seeded):
    model, _ = load_base(seeded.base_folder, dtype=torch.float32)
    got = pre.estimate_second_moments(
        model, np.asarray(seeded.seed_tokens(), dtype=np.int64), seeded.manifest.recipe
    )
    stored = pre.load_preconditioner(seeded.path, seeded.manifest.base_sha256)
    for k, v in stored.items():
        torch.testing.assert_close(got[k], v)


def test_it_is_the_default_for_new_full_weight_pools_with_seed_data(
    tmp_path, full_pool_dir, corpus
):
    base = full_pool_dir / "base"

    def made(name, *flags):
        small = ("--seq-len", "32", "--batch-size", "4")
        r = run_cli("pool", "init", tmp_path / name, "--base", base, *small, *flags)
        assert r.returncode == 0, r.stderr
        return json.loads((tmp_path / name / "pool.json").read_text())["recipe"]

    assert made("a", "--seed-data", corpus["seed"])["member_preconditioner"] == "seed"
    assert (tmp_path / "a" / pre.PRECONDITIONER_FILE).is_file()
    assert "member_preconditioner" not in made("b")  # no seed data: fresh, as before
    lora = made("c", "--seed-data", corpus["seed"], "--method", "lora")
    assert "member_preconditioner" not in lora  # an adapter has no seed state
    off = made("d", "--seed-data", corpus["seed"], "--member-preconditioner", "fresh")
    assert "member_preconditioner" not in off and not (tmp_path / "d" / "seed_data").exists()
    from ablate.pool.method import new_pool_recipe

    api = Pool.create(
        tmp_path / "e", base="tiny", seed_data=corpus["seed"], tiny=tiny_spec(), progress=False
    )
    assert api.manifest.recipe.member_preconditioner == "seed" and api.verify().ok
    fresh = (new_pool_recipe(None), new_pool_recipe("x", method="lora"))
    assert {r.member_preconditioner for r in fresh} == {"fresh"}
    assert new_pool_recipe("x", member_preconditioner="fresh").member_preconditioner == "fresh"
    r = run_cli("pool", "init", "--help")
    assert "seed with --seed-data and --method full" in " ".join(r.stdout.split())


def test_an_interrupted_estimate_leaves_no_pool(tmp_path, full_pool_dir, corpus, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pre, "estimate_second_moments", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Pool.create(
            tmp_path / "p",
            base=str(full_pool_dir / "base"),
            seed_data=corpus["seed"],
            recipe=tiny_recipe(member_preconditioner="seed"),
            progress=False,
        )
    assert not (tmp_path / "p" / "pool.json").exists()  # never a pool without its estimate
    assert not (tmp_path / "p" / pre.PRECONDITIONER_FILE).exists()
