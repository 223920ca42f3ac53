"""A pool's own merge (``PoolManifest.merge``): recorded at init, prepared by grow, used by
every command that is not told otherwise; old pools and average pools read and write as before.
"""

from __future__ import annotations

import json
import shutil

import pytest
from support import domain_evaluator, run_cli, tiny_recipe

from ablate.engine.layout import MemberLayout
from ablate.engine.merges import POOL_MERGES, merge_method
from ablate.mixture import Mixture
from ablate.pool import Pool, PoolError
from ablate.pool.fisher import fisher_paths, fisher_record, load_fisher
from ablate.pool.gram import gram_record
from ablate.pool.method import new_pool_merge, new_pool_proxy_level, new_pool_recipe
from ablate.pool.storage import MERGE_STATISTIC, PoolManifest
from ablate.pool.weights import load_tensors


def test_preconditioned_pools_merge_by_fisher_damped_and_grow_prepares_it(seeded, corpus):
    assert json.loads((seeded.path / "pool.json").read_text())["merge"] == "fisher_damped"
    assert Pool.open(seeded.path).merge == "fisher_damped"
    assert all(fisher_record(seeded, m) is not None for m in seeded.members)
    assert seeded.verify().ok
    ev = domain_evaluator(seeded, corpus)
    assert ev.layout.merge == "fisher_damped"
    mix = Mixture.parse("code=1,wiki=3")
    told = domain_evaluator(seeded, corpus, merge="fisher_damped").evaluate(mix)
    average = domain_evaluator(seeded, corpus, merge="average").evaluate(mix)
    got = ev.evaluate(mix)
    assert got.scores["code"].ppl == told.scores["code"].ppl  # the same merge, unasked
    assert got.scores["code"].ppl != pytest.approx(average.scores["code"].ppl, rel=1e-6)
    assert ev.pool_key(mix) == domain_evaluator(seeded, corpus, merge="fisher_damped").pool_key(mix)


def test_the_default_follows_the_members_optimizer_and_method_and_old_pools_read_as_average(
    full_pool_dir,
):
    assert new_pool_merge(tiny_recipe(member_preconditioner="seed")) == "fisher_damped"
    assert new_pool_merge(tiny_recipe()) == "average"
    assert new_pool_merge(new_pool_recipe("seed.jsonl", method="lora")) == "fisher"
    assert new_pool_merge(tiny_recipe(method="lora")) == "fisher"
    raw = json.loads((full_pool_dir / "pool.json").read_text())
    assert "merge" not in raw  # an average pool's pool.json is what it was before the field
    manifest = PoolManifest.model_validate(raw)
    assert manifest.merge == "average"
    assert manifest.model_dump(mode="json") == raw  # and writes back byte for byte


def test_a_pool_made_under_the_old_default_keeps_its_merge(seeded, tmp_path, corpus):
    """fisher_tensor was the default for preconditioned pools before fisher_damped: a pool
    that recorded it keeps merging by it (and its keys), though a new one would not."""
    shutil.copytree(seeded.path, tmp_path / "pool")
    manifest = tmp_path / "pool" / "pool.json"
    manifest.write_text(manifest.read_text().replace('"fisher_damped"', '"fisher_tensor"'))
    pool = Pool.open(tmp_path / "pool")
    assert pool.merge == "fisher_tensor" and new_pool_merge(pool.manifest.recipe) == "fisher_damped"
    ev = domain_evaluator(pool, corpus)
    mix = Mixture.parse("code=1,wiki=3")
    assert ev.layout.merge == "fisher_tensor"
    assert ev.pool_key(mix) == domain_evaluator(pool, corpus, merge="fisher_tensor").pool_key(mix)
    assert ev.pool_key(mix) != domain_evaluator(pool, corpus, merge="fisher_damped").pool_key(mix)


def test_an_evaluator_of_the_pools_merge_computes_what_a_member_lacks(seeded, tmp_path, corpus):
    """A member whose Fisher is gone (grown by the Python API, an older ablate or a run
    interrupted after its weights): the pool's own merge, its export, or another merge of the
    same statistic computes it (the same tensors: it is deterministic); a merge that reads
    another statistic still asks for its command."""
    shutil.copytree(seeded.path, tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    rec = pool.members[0]
    tensors, record = fisher_paths(pool, rec)
    before = tensors.read_bytes()
    record.unlink()
    with pytest.raises(PoolError, match="ablate pool gram"):  # another statistic: asked for
        domain_evaluator(pool, corpus, merge="regmean")
    with pytest.raises(PoolError, match="ablate pool fisher"):
        MemberLayout(pool)  # the layout alone loads nothing, computes nothing
    assert domain_evaluator(pool, corpus).layout.merge == "fisher_damped"
    assert fisher_record(pool, rec) is not None and tensors.read_bytes() == before
    record.unlink()  # and so does an export of the pool's merge
    r = run_cli("export", pool.path, tmp_path / "out", "--mixture", "code,wiki")
    assert r.returncode == 0, r.stderr
    assert fisher_record(pool, rec) is not None and tensors.read_bytes() == before
    record.unlink()  # and so does another merge that reads the same Fisher
    assert domain_evaluator(pool, corpus, merge="fisher").layout.merge == "fisher"
    assert fisher_record(pool, rec) is not None and tensors.read_bytes() == before


def test_an_unknown_merge_is_refused_before_anything_is_written_and_lora_takes_any(
    tmp_path, full_pool_dir, corpus
):
    base = str(full_pool_dir / "base")
    with pytest.raises(PoolError, match="--merge must be one of"):
        Pool.create(tmp_path / "b", base=base, recipe=tiny_recipe(), merge="median")  # type: ignore[arg-type]
    r = run_cli("pool", "init", tmp_path / "c", "--base", base, "--merge", "median")
    assert r.returncode == 2 and "fisher_tensor" in r.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    # Every merge reads LoRA members too (Fisher and Grams of the adapted weights).
    lora = ("--method", "lora", "--seq-len", "32", "--merge", "fisher_damped")
    r = run_cli("pool", "init", tmp_path / "d", "--base", base, *lora)
    assert r.returncode == 0, r.stderr
    assert Pool.open(tmp_path / "d").merge == "fisher_damped"


def test_cli_init_records_the_merge_ls_shows_it_and_grow_prepares_it(
    tmp_path, full_pool_dir, corpus
):
    path = tmp_path / "pool"
    small = ("--seq-len", "32", "--batch-size", "4", "--unit-tokens", "400")
    r = run_cli(
        "pool", "init", path, "--base", full_pool_dir / "base", *small, "--merge", "regmean"
    )
    assert r.returncode == 0, r.stderr
    assert "merge regmean" in r.stdout and "proxy level none" in r.stdout
    assert run_cli("pool", "add", path, corpus["math"], "--partition-by", "domain").returncode == 0
    r = run_cli("pool", "grow", path)
    assert r.returncode == 0, r.stderr
    pool = Pool.open(path)
    assert pool.merge == "regmean" and all(gram_record(pool, m) for m in pool.members)
    assert "merge regmean" in run_cli("pool", "ls", path).stdout
    assert json.loads(run_cli("pool", "ls", path, "--json").stdout)["merge"] == "regmean"
    help_text = " ".join(run_cli("pool", "init", "--help").stdout.split())
    assert "fisher_damped where members start from the seed's second moments" in help_text
    assert "fisher for --method lora" in help_text
    assert "specialisation where full-weight members start from the seed's" in help_text


def test_a_new_lora_pool_merges_by_fisher_and_exports_the_average_adapter_only_when_asked(
    tmp_path, full_pool_dir, corpus
):
    """LoRA pools default to the Fisher merge (it met the fidelity suite's bar on more LoRA
    cells): grow computes each member's Fisher of its adapted weights, evaluators merge by it
    unasked, and an adapter export (the average's factors) says how to get one."""
    path = tmp_path / "pool"
    small = ("--seq-len", "32", "--batch-size", "4", "--unit-tokens", "400")
    r = run_cli("pool", "init", path, "--base", full_pool_dir / "base", "--method", "lora", *small)
    assert r.returncode == 0, r.stderr
    assert "merge fisher" in r.stdout
    for part in ("train", "math"):
        assert (
            run_cli("pool", "add", path, corpus[part], "--partition-by", "domain").returncode == 0
        )
    assert run_cli("pool", "grow", path).returncode == 0
    pool = Pool.open(path)
    assert pool.merge == "fisher" and all(fisher_record(pool, m) for m in pool.members)
    adapted = pool.method.adapted_weights(load_tensors(pool.weights_path(pool.members[0])))
    assert set(load_fisher(pool, pool.members[0])) == adapted
    mix = Mixture.parse("code=1,wiki=3")
    ev = domain_evaluator(pool, corpus)
    average = domain_evaluator(pool, corpus, merge="average")
    assert ev.layout.merge == "fisher"
    assert ev.evaluate(mix).scores["code"].ppl != pytest.approx(
        average.evaluate(mix).scores["code"].ppl, rel=1e-6
    )
    r = run_cli("export", path, tmp_path / "a", "--mixture", "code=1,wiki=3", "--adapter")
    assert r.returncode != 0 and "--merge average" in r.stderr and not (tmp_path / "a").exists()
    r = run_cli(
        "export",
        path,
        tmp_path / "a",
        "--mixture",
        "code=1,wiki=3",
        "--adapter",
        "--merge",
        "average",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_export_and_the_average_only_commands_follow_or_override_the_pool(seeded, tmp_path, corpus):
    r = run_cli("export", seeded.path, tmp_path / "ft", "--mixture", "code,wiki")
    assert r.returncode == 0, r.stderr
    assert (
        json.loads((tmp_path / "ft" / "ablate_merge.json").read_text())["merge"] == "fisher_damped"
    )
    r = run_cli(
        "export", seeded.path, tmp_path / "avg", "--mixture", "code,wiki", "--merge", "average"
    )
    assert r.returncode == 0, r.stderr
    assert "merge" not in json.loads((tmp_path / "avg" / "ablate_merge.json").read_text())
    from ablate.export import export
    from ablate.pool.errors import AblateError

    with pytest.raises(AblateError, match="unknown merge 'median'"):  # one line, nothing written
        export(seeded, Mixture.parse("code,wiki"), tmp_path / "bad", merge="median")  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()
    # the gradient strategy differentiates the average: unasked, it takes it; told otherwise,
    # it says how to fix the call
    from ablate.strategies import search

    with pytest.raises(Exception, match="pass --merge average"):
        search(domain_evaluator(seeded, corpus), strategy="gradient", continuous=True, budget=2)
    r = run_cli(
        "search", seeded.path, "--eval-data", corpus["eval"], "--eval-by", "domain",
        "--strategy", "gradient", "--continuous", "--evaluations", "2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_each_pool_merge_names_the_statistic_its_method_reads():
    for name in POOL_MERGES:
        stat = MERGE_STATISTIC[name]
        assert merge_method(name).statistic == (None if stat is None else stat.name)


def test_preconditioned_full_pools_read_their_proxies_at_the_specialisation_level(
    seeded, full_pool_dir, corpus, tmp_path
):
    """The level is recorded at init like the merge: ``specialisation`` for full-weight
    members that start from the seed's second moments (where the fidelity suite measured
    it), ``none`` for every other pool and for pools made before the field existed."""
    assert new_pool_proxy_level(tiny_recipe(member_preconditioner="seed")) == "specialisation"
    assert new_pool_proxy_level(tiny_recipe()) == "none"
    assert new_pool_proxy_level(new_pool_recipe("seed.jsonl", method="lora")) == "none"
    assert json.loads((seeded.path / "pool.json").read_text())["proxy_level"] == "specialisation"
    ev = domain_evaluator(seeded, corpus)
    assert ev.proxy_level == "specialisation" and ev.level_shift is not None
    told = domain_evaluator(seeded, corpus, proxy_level="none")
    mix = Mixture.parse("code=1,wiki=3")
    got, scored = ev.evaluate(mix), told.evaluate(mix)
    for d in ev.domains:
        assert got.scores[d].nll == pytest.approx(
            scored.scores[d].nll - ev.level_shift.of(d) * scored.scores[d].tokens
        )
    raw = json.loads((full_pool_dir / "pool.json").read_text())
    assert "proxy_level" not in raw  # pools without the field read and write as before
    assert PoolManifest.model_validate(raw).proxy_level == "none"
    # the CLI: recorded at init, shown by ls, taken by eval; a bad one refused before writing
    base = full_pool_dir / "base"
    r = run_cli("pool", "init", tmp_path / "bad", "--base", base, "--proxy-level", "high")
    assert r.returncode == 2 and "specialisation" in r.stderr and not (tmp_path / "bad").exists()
    path = tmp_path / "pool"
    r = run_cli(
        "pool", "init", path, "--base", base, "--seq-len", "32", "--proxy-level", "specialisation"
    )
    assert r.returncode == 0, r.stderr
    assert "proxy level specialisation" in r.stdout
    assert "proxy level specialisation" in run_cli("pool", "ls", path).stdout
    assert (
        json.loads(run_cli("pool", "ls", path, "--json").stdout)["proxy_level"] == "specialisation"
    )
    args = ("--eval-data", corpus["eval"], "--eval-by", "domain", "--mixture", "code=1,wiki=3")
    shown = {}
    for level in ("none", "specialisation"):
        r = run_cli("eval", seeded.path, *args, "--proxy-level", level, "--json")
        assert r.returncode == 0, r.stderr
        shown[level] = {row["domain"]: row["ppl"] for row in json.loads(r.stdout)}
    assert shown["none"]["code"] == pytest.approx(scored.scores["code"].ppl, rel=1e-5)
    assert shown["specialisation"]["code"] == pytest.approx(got.scores["code"].ppl, rel=1e-5)
    # people's tables end with what the level (the pool's own here) did; read as scored they
    # do not
    said = "proxy level specialisation: perplexity read lower by code"
    assert said in run_cli("eval", seeded.path, *args).stdout
    assert said not in run_cli("eval", seeded.path, *args, "--proxy-level", "none").stdout
    search = ("--eval-data", corpus["eval"], "--eval-by", "domain", "--strategy", "exhaustive")
    r = run_cli("search", seeded.path, *search)
    assert r.returncode == 0, r.stderr
    assert said in r.stdout
