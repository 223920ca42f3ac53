"""Member-only recipe levers: seed data in every member, a flat low member learning rate.

They change how members train and nothing else: pools made without them keep their
pool.json and keys, and real validation models train the plain way (``Recipe.real()``).
"""

from __future__ import annotations

import json

import pytest
import torch
from support import run_cli, tiny_recipe

from ablate import Evaluator, Mixture
from ablate.pool import DataError, Pool, Recipe
from ablate.pool.recipe import MEMBER_ONLY
from ablate.pool.weights import load_tensors

LEVERS = {"member_seed_share": 0.5, "member_schedule": "constant", "member_lr": 1e-4}


def test_default_levers_leave_the_serialised_recipe_as_before(full_pool_dir):
    plain = Recipe()
    assert not set(MEMBER_ONLY) & set(plain.model_dump(mode="json"))
    assert plain.real() is plain and not plain.has_member_levers
    # A pool written before the levers existed reads and writes back byte for byte.
    raw = json.loads((full_pool_dir / "pool.json").read_text())
    assert Pool.open(full_pool_dir).manifest.recipe.model_dump(mode="json") == raw["recipe"]
    levered = Recipe(**LEVERS)
    dumped = levered.model_dump(mode="json")
    assert {k: dumped[k] for k in MEMBER_ONLY if k in dumped} == LEVERS
    assert Recipe.model_validate(dumped) == levered  # recorded and read back
    pre = Recipe(member_preconditioner="seed")  # the preconditioner (test_preconditioner.py)
    assert pre.model_dump(mode="json")["member_preconditioner"] == "seed"
    assert pre.has_member_levers and pre.real() == plain
    assert levered.real() == plain and levered.real().model_dump() == plain.model_dump()
    assert levered.train_lr == 1e-4 and plain.train_lr == plain.lr


@pytest.mark.parametrize(
    "bad",
    [
        {"member_seed_share": 1.0},
        {"member_seed_share": -0.1},
        {"member_lr": 0.0},
        {"member_schedule": "linear"},
    ],
)
def test_bad_lever_values_are_refused(bad):
    with pytest.raises(ValueError):
        Recipe(**bad)


def _init(path, full_pool_dir, *flags: str):
    """``ablate pool init PATH --base`` the session pool's seed, with ``flags``."""
    return run_cli("pool", "init", path, "--base", full_pool_dir / "base", *flags)


def _levered_pool(root, full_pool_dir, corpus, **recipe) -> Pool:
    pool = Pool.create(
        root,
        base=str(full_pool_dir / "base"),
        seed_data=corpus["seed"],
        recipe=tiny_recipe(**recipe),
        progress=False,
    )
    pool.add([corpus["train"]], by="domain", progress=False)
    pool.grow(progress=False)
    return pool


def test_levers_are_recorded_and_change_only_the_members(
    tmp_path, full_pool_dir, full_pool, corpus
):
    # A member at a vanishing flat rate stays at the seed; the plain member moves away.
    still = _levered_pool(
        tmp_path / "still",
        full_pool_dir,
        corpus,
        member_seed_share=0.5,
        member_schedule="constant",
        member_lr=1e-9,
    )
    manifest = json.loads((still.path / "pool.json").read_text())["recipe"]
    assert manifest["member_seed_share"] == 0.5 and manifest["member_schedule"] == "constant"
    assert (still.path / "seed_data" / "tokens.bin").stat().st_size > 0  # the general data kept
    ref = still.units()[0]
    target = still._target(ref)
    assert target.source_weights == (0.5, 0.5) and target.exact_mix
    assert len(target.sources()) == 2
    rec = still.members[0]
    assert rec.recipe.member_lr == 1e-9 and rec.recipe.member_seed_share == 0.5
    seed = still.load_base_model().state_dict()
    member = load_tensors(still.weights_path(rec))
    drift = max((member[k] - seed[k]).abs().max().item() for k in member)
    plain = Pool.open(full_pool_dir)
    plain_rec = plain.member(rec.partition, rec.unit)
    plain_member = load_tensors(plain.weights_path(plain_rec))
    plain_drift = max((plain_member[k] - seed[k]).abs().max().item() for k in plain_member)
    assert drift < 1e-5 < plain_drift

    # Real models train plainly: same key and same recipe as the plain pool's real model.
    from ablate.validation.models import plan_for

    mix = Mixture.parse("code=0.5,wiki=0.5")
    ev_still = Evaluator(still, corpus["eval"], by="domain", store=False, progress=False)
    # The session pool: same seed weights, same data, the same recipe without the levers.
    ev_plain = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    assert (
        plan_for(ev_still, mix, budget="fixed").key == plan_for(ev_plain, mix, budget="fixed").key
    )
    from ablate.validation import validate

    report = validate(ev_still, mixtures=[mix], budget="fixed", bootstrap=0)
    real = report.records[0]
    assert real.recipe == still.manifest.recipe.real() and not real.recipe.has_member_levers


def test_member_order_seed_regrows_the_same_members_with_fresh_noise(
    tmp_path, full_pool_dir, full_pool, corpus
):
    """Another order seed: the same data, other weights, the same real models; the recipe's
    own seed given as the order seed: the members the default grows, bit for bit."""
    from ablate.validation.models import plan_for

    plain = Pool.open(full_pool_dir)
    assert plain.manifest.recipe.member_rng_seed == plain.manifest.recipe.seed
    other = _levered_pool(tmp_path / "other", full_pool_dir, corpus, member_order_seed=5)
    same = _levered_pool(
        tmp_path / "same", full_pool_dir, corpus, member_order_seed=plain.manifest.recipe.seed
    )
    raw = json.loads((other.path / "pool.json").read_text())["recipe"]
    assert raw["member_order_seed"] == 5 and other.manifest.recipe.member_rng_seed == 5
    for rec in other.members:
        mine = plain.member(rec.partition, rec.unit)
        assert rec.data_hash == mine.data_hash
        a, b = load_tensors(other.weights_path(rec)), load_tensors(plain.weights_path(mine))
        assert any(not torch.equal(a[k], b[k]) for k in a)
        twin = load_tensors(same.weights_path(same.member(rec.partition, rec.unit)))
        assert all(torch.equal(twin[k], b[k]) for k in b)
    mix = Mixture.parse("code=0.5,wiki=0.5")
    ev_other = Evaluator(other, corpus["eval"], by="domain", store=False, progress=False)
    ev_plain = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    assert (
        plan_for(ev_other, mix, budget="fixed").key == plan_for(ev_plain, mix, budget="fixed").key
    )
    r = _init(tmp_path / "q", full_pool_dir, "--member-order-seed", "-1")
    assert r.returncode != 0 and "member-order-seed" in r.stderr
    assert not (tmp_path / "q").exists()
    r = _init(tmp_path / "q", full_pool_dir, "--seq-len", "32", "--member-order-seed", "3")
    assert r.returncode == 0, r.stderr
    assert (
        json.loads((tmp_path / "q" / "pool.json").read_text())["recipe"]["member_order_seed"] == 3
    )


def test_lora_pool_takes_the_levers(tmp_path, full_pool_dir, corpus):
    pool = _levered_pool(tmp_path / "lora", full_pool_dir, corpus, method="lora", **LEVERS)
    assert pool.members and pool.verify().ok
    assert all(m.recipe.member_schedule == "constant" for m in pool.members)
    ev = Evaluator(pool, corpus["eval"], by="domain", store=False, progress=False)
    assert torch.isfinite(torch.tensor(ev.evaluate(Mixture.parse("code,wiki")).macro_ppl))


def test_seed_share_without_seed_data_is_one_line_and_writes_nothing(tmp_path, full_pool_dir):
    with pytest.raises(DataError, match="--seed-data"):
        Pool.create(
            tmp_path / "p",
            base=str(full_pool_dir / "base"),
            recipe=tiny_recipe(member_seed_share=0.5),
            progress=False,
        )
    assert not (tmp_path / "p").exists()
    r = _init(
        tmp_path / "q",
        full_pool_dir,
        "--member-seed-share",
        "0.5",
        "--member-schedule",
        "constant",
        "--member-lr",
        "1e-4",
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--seed-data" in r.stderr
    assert not (tmp_path / "q" / "pool.json").exists()
