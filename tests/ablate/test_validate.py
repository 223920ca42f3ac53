"""Validation: real models train once and are reused, statistics agree with scipy, the CLI works."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats
from support import eval_cli_args, run_cli

from ablate import Evaluator, Mixture, MixtureError, Pool
from ablate.objective import Target
from ablate.validation import ValidationRecord, sample_mixtures, validate
from ablate.validation.models import RECORD, VALIDATION_DIR, plan_for
from ablate.validation.stats import (
    Calibration,
    batched_kendall,
    batched_pearson,
    batched_spearman,
    bootstrap_correlations,
    correlations,
)


def _records(pool_path) -> dict[str, ValidationRecord]:
    return {
        f.parent.name: ValidationRecord.model_validate_json(f.read_text())
        for f in sorted((pool_path / VALIDATION_DIR).glob(f"*/{RECORD}"))
    }


def _one_unit_partition(pool: Pool) -> str:
    return next(name for name, p in pool.partitions.items() if len(p.index.units) == 1)


# ---------------------------------------------------------------------- statistics
@pytest.mark.parametrize("n", [3, 7, 40])
def test_batched_correlations_agree_with_scipy(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(6, n))
    y = 0.6 * x + rng.normal(size=(6, n))
    x[1, : n // 2] = x[1, 0]  # ties, which Spearman and Kendall tau-b must handle as scipy does
    y[2] = np.round(y[2])
    for i in range(6):
        assert batched_pearson(x, y)[i] == pytest.approx(
            stats.pearsonr(x[i], y[i]).statistic, abs=1e-12
        )
        assert batched_spearman(x, y)[i] == pytest.approx(
            stats.spearmanr(x[i], y[i]).statistic, abs=1e-12
        )
        assert batched_kendall(x, y)[i] == pytest.approx(
            stats.kendalltau(x[i], y[i]).statistic, abs=1e-12
        )
        got = correlations(x[i], y[i])
        assert got["n"] == n
        assert got["kendall"] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic, abs=1e-12)


def test_correlations_known_values_and_degenerate_inputs():
    r = correlations([1, 2, 3, 4], [10, 20, 30, 40])
    assert (r["pearson"], r["spearman"], r["kendall"]) == pytest.approx((1.0, 1.0, 1.0))
    r = correlations([1, 2, 3, 4], [4, 3, 2, 1])
    assert (r["pearson"], r["spearman"], r["kendall"]) == pytest.approx((-1.0, -1.0, -1.0))
    assert math.isnan(correlations([1, 2], [1, 2])["pearson"])  # two points: undefined, not 1.0
    assert math.isnan(correlations([1, 1, 1], [1, 2, 3])["spearman"])
    assert math.isnan(batched_pearson(np.ones((1, 4)), np.arange(4.0)[None])[0])


def test_bootstrap_intervals_cover_point_estimates():
    rng = np.random.default_rng(0)
    m, docs = 8, 30
    tokens = rng.integers(50, 200, size=docs)
    domain = np.repeat([0, 1, 2], 10)
    quality = rng.normal(size=(m, 1))  # mixture quality drives both proxy and real
    proxy = (3 + 0.3 * quality + 0.05 * rng.normal(size=(m, docs))) * tokens
    real = (3.2 + 0.3 * quality + 0.05 * rng.normal(size=(m, docs))) * tokens
    ci = bootstrap_correlations(proxy, real, tokens, domain, ("a", "b", "c"), replicates=300)
    assert list(ci.index) == ["a", "b", "c", "pooled"]
    for d in range(3):
        idx = domain == d
        p = np.exp(proxy[:, idx].sum(1) / tokens[idx].sum())
        r = np.exp(real[:, idx].sum(1) / tokens[idx].sum())
        est = correlations(p, r)
        row = ci.iloc[d]
        for s in ("pearson", "spearman"):
            assert row[f"{s}_lo"] <= est[s] + 1e-9 <= row[f"{s}_hi"] + 2e-9


def test_calibration_recovers_a_linear_map_and_its_intervals():
    rng = np.random.default_rng(1)
    proxy = np.exp(rng.uniform(2, 4, size=40))
    real = np.exp(0.2 + 0.9 * np.log(proxy) + 0.02 * rng.normal(size=40))
    cal = Calibration("linear", "x", proxy, real, level=0.9)
    pred = cal.predict([20.0, 30.0])
    assert pred["real"].to_numpy() == pytest.approx(
        np.exp(0.2 + 0.9 * np.log([20.0, 30.0])), rel=0.02
    )
    assert (pred["lo"] < pred["real"]).all() and (pred["real"] < pred["hi"]).all()
    assert cal.loo_mape < 0.03
    iso = Calibration("isotonic", "x", proxy, real)
    assert iso.loo_mape < 0.1
    assert np.all(np.diff(iso.predict(np.sort(proxy))["real"].to_numpy()) >= -1e-12)  # monotone
    with pytest.raises(ValueError, match="at least 3"):
        Calibration("linear", "x", proxy[:2], real[:2])


def test_sample_mixtures_is_seeded_distinct_and_extends():
    names = ["a", "b", "c", "d", "e"]
    six = sample_mixtures(names, 6, (2, 3), seed=3)
    assert six == sample_mixtures(names, 6, (2, 3), seed=3)
    assert len({m.key for m in six}) == 6
    assert all(len(m.names) in (2, 3) and m.is_uniform for m in six)
    assert sample_mixtures(names, 9, (2, 3), seed=3)[:6] == six  # more = the same plus new ones
    assert len(sample_mixtures(["a", "b", "c"], 50, (2,), seed=0)) == 3  # only 3 pairs exist
    with pytest.raises(MixtureError, match="subset size"):
        sample_mixtures(["a", "b"], 2, (3, 4))


# ---------------------------------------------------------------------- scoring
def test_document_scores_add_up_to_the_evaluators(full_pool_dir, corpus):
    ev = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    res = ev.evaluate(Mixture.uniform(["code", "wiki"]))  # leaves the merge in the skeleton
    docs = ev.scorer().score_documents()
    assert len(docs.nll) == len(ev.eval_set.docs) and (docs.tokens > 0).all()
    targets = sum(max(len(d) - 1, 0) for d in ev.eval_set.docs)
    assert docs.tokens.sum() == targets  # every token but each document's first, once
    for d, s in docs.domain_totals(ev.eval_set).items():
        assert s.tokens == res.scores[d].tokens
        assert s.nll == pytest.approx(res.scores[d].nll, rel=1e-9)


# ---------------------------------------------------------------------- end to end
def test_validate_api_trains_once_and_real_equals_member_for_one_unit(full_pool, corpus):
    ev = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    single = _one_unit_partition(full_pool)
    mixes = [
        Mixture.uniform(["math", "wiki"]),
        Mixture.parse("code=1,math=3"),
        Mixture.uniform([single]),
    ]
    report = validate(ev, mixtures=mixes, bootstrap=50)
    assert report.trained == 3 and report.mixtures == 3
    assert list(report.correlations.columns) == ["pearson", "spearman", "kendall", "n"]
    assert list(report.correlations.index) == [*ev.domains, "pooled"]
    assert report.correlations.loc["pooled", "n"] == 3 * len(ev.domains)
    recipe = full_pool.manifest.recipe
    for m, rec in zip(mixes, report.records, strict=True):
        plan = plan_for(ev, m)
        assert rec.key == plan.key and rec.mixture == m.weights
        assert rec.tokens == plan.k * recipe.unit_tokens  # k units of tokens for k units
        assert rec.steps == recipe.steps_for(rec.tokens)
    # Same data, seed and recipe as the member: the real model of one unit *is* that member.
    rows = report.pairs[report.pairs["mixture"] == single]
    assert rows["real"].to_numpy() == pytest.approx(rows["proxy"].to_numpy(), rel=1e-5)
    other = report.pairs[report.pairs["mixture"] != single]
    assert not np.allclose(other["real"], other["proxy"], rtol=1e-3)  # merging is an approximation
    cal = report.calibrate()
    assert len(cal.proxy) == 3 * len(ev.domains) and np.isfinite(cal.loo_mape)
    before = {
        k: (full_pool.path / VALIDATION_DIR / k / RECORD).stat().st_mtime_ns
        for k in _records(full_pool.path)
    }
    again = validate(ev, mixtures=mixes[:2], bootstrap=0)
    assert again.trained == 0
    after = {k: (full_pool.path / VALIDATION_DIR / k / RECORD).stat().st_mtime_ns for k in before}
    assert after == before
    assert again.pairs["real"].to_numpy() == pytest.approx(
        report.pairs["real"].to_numpy()[: len(again.pairs)]
    )


def test_cli_validate_writes_files_and_reuses_models(full_pool, corpus, tmp_path):
    out = tmp_path / "val"
    mixes = ["math", "math,wiki", "code,math"]  # 1 + 4 + 5 units: cheap, and n = 3 per domain
    args = eval_cli_args("validate", full_pool.path, corpus["eval"], "--out", out)
    args += [a for m in mixes for a in ("--mixture", m)] + ["--bootstrap", "100", "--json"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["mixtures"] == 3 and doc["ablate_version"]
    assert doc["decision_intervals"]["resamples"].startswith("mixtures")
    assert doc["correlation_intervals"]["resamples"].startswith("mixtures")
    rows = {r["domain"]: r for r in doc["correlations"]}
    assert set(rows) == {"code", "math", "wiki", "pooled"}
    assert all(r["n"] == 3 for d, r in rows.items() if d != "pooled") and rows["pooled"]["n"] == 9
    for r in rows.values():
        assert set(r) == {"domain", "pearson", "spearman", "kendall", "n"}
        assert all(-1 <= r[s] <= 1 for s in ("pearson", "spearman", "kendall"))
    with open(out / "validation.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    assert list(pairs[0]) == ["mixture", "domain", "proxy", "real"] and len(pairs) == 9
    proxy = np.array([float(p["proxy"]) for p in pairs])
    real = np.array([float(p["real"]) for p in pairs])
    assert rows["pooled"]["pearson"] == pytest.approx(
        stats.pearsonr(proxy, real).statistic, abs=1e-9
    )
    assert rows["pooled"]["kendall"] == pytest.approx(
        stats.kendalltau(proxy, real).statistic, abs=1e-9
    )
    # The proxy column is exactly what `ablate eval` reports for the same mixtures.
    ev = Evaluator(full_pool.path, corpus["eval"], by="domain", store=False, progress=False)
    for p in pairs:
        mix = Mixture.uniform(p["mixture"].split("+"))
        assert float(p["proxy"]) == pytest.approx(ev.evaluate(mix).ppl[p["domain"]], rel=1e-6)
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| pooled | 9 |" in md and "Calibration" in md and "scatter.png" in md

    records = _records(full_pool.path)
    assert len(records) == 3
    stamp = {
        k: (full_pool.path / VALIDATION_DIR / k / r.weights_file).stat().st_mtime_ns
        for k, r in records.items()
    }
    second = run_cli(*args[:-1])  # people's table this time
    assert second.returncode == 0, second.stderr
    assert "0 trained now" in second.stdout and "pooled" in second.stdout
    # One repeat: no noise ceiling, and the verdict line says how to get one.
    assert "verdict:" in second.stdout and "--repeats 2" in second.stdout
    # ... and the level-corrected macro, with a target the search command takes as it is.
    line = next(x for x in second.stdout.splitlines() if "proxy level corrected" in x)
    lc = doc["level_correction"]
    assert (f"--target {lc['target']}" in line) == lc["helps"]
    assert {d for d, _ in Target.parse(lc["target"]).weights} == {"code", "math", "wiki"}
    assert _records(full_pool.path) == records  # same sha256, loss, timestamps: nothing retrained
    for k, r in records.items():
        assert (full_pool.path / VALIDATION_DIR / k / r.weights_file).stat().st_mtime_ns == stamp[k]
    with open(out / "validation.csv", newline="") as f:
        assert [p["real"] for p in csv.DictReader(f)] == [p["real"] for p in pairs]
    # At the other proxy level: the same real models, the proxies as that level reads them.
    assert doc["proxy_level"] == "none"
    level = run_cli(*args, "--proxy-level", "specialisation")
    assert level.returncode == 0, level.stderr
    assert json.loads(level.stdout)["proxy_level"] == "specialisation"
    text = run_cli(*args[:-1], "--proxy-level", "specialisation")
    assert text.returncode == 0, text.stderr
    assert "proxies read at the specialisation level" in text.stdout.splitlines()[0]
    assert _records(full_pool.path) == records
    read = Evaluator(
        full_pool.path,
        corpus["eval"],
        by="domain",
        store=False,
        progress=False,
        proxy_level="specialisation",
    )
    with open(out / "validation.csv", newline="") as f:
        for p in csv.DictReader(f):
            mix = Mixture.uniform(p["mixture"].split("+"))
            assert float(p["proxy"]) == pytest.approx(read.evaluate(mix).ppl[p["domain"]], rel=1e-6)
    assert "proxies read at the specialisation level" in (out / "report.md").read_text()


def test_cli_unknown_partition_is_a_one_line_error(full_pool, corpus, tmp_path):
    r = run_cli(
        "validate",
        full_pool.path,
        "--eval-data",
        corpus["eval"],
        "--mixture",
        "code,nosuch",
        "--out",
        tmp_path / "val",
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate: error:") and "nosuch" in lines[0]
    assert not list((full_pool.path / VALIDATION_DIR).glob("*/" + RECORD))  # nothing trained


def test_lora_pool_validates(lora_pool_dir, corpus, tmp_path):
    pool_dir = tmp_path / "pool"
    shutil.copytree(lora_pool_dir, pool_dir)
    ev = Evaluator(pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    single = _one_unit_partition(ev.pool)
    report = validate(ev, mixtures=[Mixture.uniform([single])], bootstrap=0)
    assert all(
        r.method == "lora" and r.weights_file == "adapter.safetensors" for r in report.records
    )
    assert np.isfinite(report.pairs[["proxy", "real"]].to_numpy()).all()
    # The adapter trained on the member's unit with its seed reproduces the member.
    assert report.pairs["real"].to_numpy() == pytest.approx(
        report.pairs["proxy"].to_numpy(), rel=1e-4
    )


def test_cli_validate_out_must_be_a_folder_checked_before_any_work(tmp_path, capsys):
    from ablate.cli import main

    taken = tmp_path / "taken.csv"
    taken.write_text("keep me")
    for out, says in [
        (taken, "is an existing file; name a folder"),
        (taken / "sub", f"is inside {taken}, which is a file; name a folder"),
    ]:
        # The pool does not exist: were it opened first, the error would name it instead.
        args = eval_cli_args("validate", tmp_path / "no-pool", tmp_path / "no-eval.jsonl")
        assert main(["-q", *args, "--mixture", "a,b", "--out", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ablate: error: --out {out} "), lines
        assert says in lines[0]
    assert taken.read_text() == "keep me"


# ---------------------------------------------------------------------- decision fidelity
def test_exact_counts_and_the_fixed_budget_sampler_draw_each_share():
    from ablate.pool.train import SequenceSampler, exact_counts

    assert exact_counts(np.array([0.2, 0.3, 0.5]), 10).tolist() == [2, 3, 5]
    got = exact_counts(np.array([1 / 3, 1 / 3, 1 / 3]), 10)
    assert got.sum() == 10 and set(got.tolist()) == {3, 4}
    # Three sources whose tokens tell them apart: 100s, 200s and 300s.
    sources = [np.full(500, 100 * (i + 1), dtype=np.int64) for i in range(3)]
    weights = [0.1, 0.3, 0.6]
    steps, batch, seq = 25, 8, 7
    total = steps * batch
    sampler = SequenceSampler(sources, weights, seq, seed=5, total=total)
    drawn = np.concatenate([sampler.batch(batch) for _ in range(steps)])  # (total, seq + 1)
    per_source = [int((drawn[:, 0] == 100 * (i + 1)).sum()) for i in range(3)]
    assert per_source == [20, 60, 120]  # exactly the shares: 200 sequences x (0.1, 0.3, 0.6)
    tokens = [c * (seq + 1) for c in per_source]
    assert tokens == [int(w * total * (seq + 1)) for w in weights]
    assert sampler.source_counts(total).tolist() == per_source
    free = SequenceSampler(sources, weights, seq, seed=5)  # proportional: a random draw
    drawn = np.concatenate([free.batch(batch) for _ in range(steps)])
    assert [int((drawn[:, 0] == 100 * (i + 1)).sum()) for i in range(3)] != per_source


def test_regret_and_recall_agree_with_a_hand_computed_example():
    from ablate.validation.decisions import decision_metrics, decision_table, regret, top_recall

    proxy = np.array([10.0, 11.0, 12.0, 13.0, 14.0])  # ranks mixtures 0 < 1 < 2 < 3 < 4
    real = np.array([20.4, 20.0, 21.0, 23.0, 20.2])  # really best: 1, then 4, then 0
    assert regret(proxy, real) == pytest.approx(20.4 / 20.0 - 1)  # the proxy picks 0: +2%
    assert top_recall(proxy, real) == pytest.approx(2 / 3)  # {0,1,2} vs {1,4,0}
    m = decision_metrics(proxy, real)
    assert m["spearman"] == pytest.approx(stats.spearmanr(proxy, real).statistic)
    assert m["kendall"] == pytest.approx(stats.kendalltau(proxy, real).statistic)
    # The table: one document per domain, so per-domain perplexity is exp(nll / tokens).
    tokens = np.array([10, 10])
    p_nll = np.log(np.stack([proxy, proxy[::-1]], axis=1)) * 10  # (M, docs): domain b reversed
    r_nll = np.log(np.stack([real, real], axis=1)) * 10
    t = decision_table(p_nll, r_nll, tokens, np.array([0, 1]), ("a", "b"), replicates=0)
    assert list(t.index) == ["a", "b", "macro"]
    assert t.loc["a", "regret"] == pytest.approx(0.02)
    assert t.loc["b", "regret"] == pytest.approx(20.2 / 20.0 - 1)  # reversed: picks mixture 4
    assert t.loc["a", "top3_recall"] == pytest.approx(2 / 3) and t.loc["a", "n"] == 5
    assert math.isnan(t.loc["a", "noise_ceiling"])  # no repeats, no ceiling
    assert math.isnan(t.loc["a", "seed_spearman"])


def test_dirichlet_sampler_is_seeded_extends_and_checks_alpha():
    from ablate.validation import WeightSampler, sample_weighted

    names = ["a", "b", "c", "d"]
    six = sample_weighted(names, 6, alpha=1.0, seed=2)
    assert six == sample_weighted(names, 6, alpha=1.0, seed=2)
    assert sample_weighted(names, 9, alpha=1.0, seed=2)[:6] == six
    assert len({m.key for m in six}) == 6 and not all(m.is_uniform for m in six)
    for m in six:
        assert sum(w for _, w in m.weights) == pytest.approx(1.0)
    assert WeightSampler.parse("dirichlet:0.5") == WeightSampler("dirichlet", 0.5)
    assert WeightSampler.parse("subsets") == WeightSampler("subsets")
    for bad in ("dirichlet:0", "dirichlet:-1", "dirichlet:x", "uniform"):
        with pytest.raises(MixtureError, match="--weights"):
            WeightSampler.parse(bad)
    with pytest.raises(MixtureError, match="alpha must be > 0"):
        sample_weighted(names, 3, alpha=0.0)


def test_fixed_budget_bad_input_is_one_clear_error(full_pool_dir, corpus):
    ev = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    recipe = ev.pool.manifest.recipe
    batch = recipe.seq_len * recipe.batch_size
    with pytest.raises(MixtureError, match=f"less than one training batch.*{batch}"):
        validate(ev, mixtures=["code"], budget="fixed", budget_tokens=batch - 1)
    with pytest.raises(MixtureError, match="needs --budget fixed"):
        validate(ev, mixtures=["code"], budget_tokens=10 * batch)
    with pytest.raises(MixtureError, match="--budget must be"):
        validate(ev, mixtures=["code"], budget="both")  # type: ignore[arg-type]
    with pytest.raises(MixtureError, match=r"partitions hold: .*math \(supplies"):
        validate(ev, mixtures=["code=0.5,math=0.5"], budget="fixed", budget_tokens=100_000)
    with pytest.raises(MixtureError, match="--weights"):
        validate(ev, sample=3, weights="dirichlet:0")
    assert not (ev.pool.path / VALIDATION_DIR).exists() or not _records(ev.pool.path)


def test_fixed_budget_validation_with_repeats_and_a_search_check(full_pool, corpus):
    ev = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    single = _one_unit_partition(full_pool)
    mixes = [
        Mixture.uniform([single]),
        Mixture.parse("code=0.3,wiki=0.7"),
        Mixture.parse("code=0.6,math=0.2,wiki=0.2"),
    ]
    recipe = full_pool.manifest.recipe
    report = validate(
        ev,
        mixtures=mixes,
        budget="fixed",
        repeats=2,
        check_search="random",
        search_budget=4,
        bootstrap=30,
    )
    assert report.budget == "fixed" and report.budget_tokens == recipe.unit_tokens
    assert report.mixtures == 3 and len(report.records) == 6 and report.repeats == 2
    for rec in report.records:  # every real model trains on the same budget
        assert rec.tokens == recipe.unit_tokens and rec.steps == recipe.steps_for(
            recipe.unit_tokens
        )
    keys = [r.key for r in report.records]
    assert len(set(keys)) == 6  # the budget and the repeat are part of the key
    assert not set(keys) & {plan_for(ev, m).key for m in mixes}  # proportional keys differ
    # A one-member mixture at the members' own budget is that member, exactly (repeat 0).
    first = ev.scorer()
    from ablate.validation.models import load_into

    load_into(ev, report.records[0])
    real0 = first.score_documents()
    ev.merged.merge(__import__("torch").from_numpy(ev.member_weights(mixes[0])).float())
    proxy0 = first.score_documents()
    assert real0.nll == pytest.approx(proxy0.nll, rel=1e-6)
    d = report.decisions
    assert list(d.index) == [*ev.domains, "macro"]
    wanted = {"spearman", "kendall", "regret", "top3_recall", "n", "seed_spearman"}
    wanted |= {"spearman_single", "noise_ceiling", "p_within_1pct", "p_within_margin"}
    assert wanted | {"pick_ceiling"} <= set(d.columns)
    assert (d["regret"] >= 0).all() and d["n"].eq(3).all()
    assert d["pick_ceiling"].between(0, 1).all()  # two seeds: every target has one
    assert "P*<=1%" in report.decisions_text()
    assert "| pick ceiling |" in "\n".join(report._decisions_markdown())
    assert np.isfinite(d["seed_spearman"]).any() and np.isfinite(d["noise_ceiling"]).any()
    assert d["p_within_1pct"].between(0, 1).all()
    assert (d["p_within_margin"] <= d["p_within_1pct"]).all()  # 0.5% is stricter than 1%
    checks = report.search_checks
    assert list(checks.index) == ["macro"] and np.isfinite(checks.loc["macro", "pick_real"])
    row = checks.loc["macro"]
    # Both sides trained again with fresh seeds (repeats 2 and 3), judged on held-out docs.
    assert row["judge_seeds"] == 2 and 0 < row["heldout_docs"] < len(ev.eval_set.docs)
    assert np.isfinite(row["gain_se"]) and row["gain_se"] > 0
    assert row["gain_se"] == pytest.approx(math.hypot(row["gain_se_docs"], row["gain_se_seeds"]))
    keys = {r.key for r in _records(full_pool.path).values()}
    best = next(m for m in mixes if str(m) == row["sample_best"])
    assert {plan_for(ev, best, budget="fixed", repeat=r).key for r in (2, 3)} <= keys
    doc = report.json()
    assert doc["budget"] == "fixed" and doc["decisions"][0]["target"] == ev.domains[0]
    assert {"target", "spearman", "kendall", "regret", "top3_recall", "n"} <= set(
        doc["decisions"][0]
    )
    assert "seed labels" in doc["decision_intervals"]["resamples"]
    assert doc["decision_intervals"]["margin"] == 0.005
    md = report._markdown("t")
    assert "Decisions" in md and "really trained" in md and "noise ceiling" in md
    assert doc["verdict"] == report.verdict() and "noise ceiling" in doc["verdict"]
    lc = doc["level_correction"]  # three mixtures: the per-domain level correction is there
    assert set(lc["offsets"]) == set(ev.domains) and lc["mixtures"] == 3
    assert lc["target"] == report.level_correction().target
    assert sum(lc["weights"].values()) == pytest.approx(1.0)
    assert "proxy level corrected" in report.decisions_text() and "level per domain" in md
    assert ("--target weighted:" in report.decisions_text()) == lc["helps"]
    again = validate(ev, mixtures=mixes, budget="fixed", repeats=2, bootstrap=0)
    assert again.trained == 0  # stored and reused like every real model


def test_check_search_needs_a_fixed_budget_one_line_before_training(full_pool, corpus, tmp_path):
    before = set(_records(full_pool.path))
    args = eval_cli_args("validate", full_pool.path, corpus["eval"], "--out", tmp_path / "v")
    r = run_cli(*args, "--mixture", "code,wiki", "--check-search", "random")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "ablate: error: --check-search needs --budget fixed"
    )
    assert set(_records(full_pool.path)) == before  # nothing trained


def test_norm_extrapolation_on_a_lora_pool_is_refused_before_training(lora_pool_dir, corpus):
    ev = Evaluator(lora_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    with pytest.raises(MixtureError, match="--extrapolate norm .* LoRA"):
        validate(ev, mixtures=["code,wiki"], budget="fixed", extrapolate="norm")
    assert not (ev.pool.path / VALIDATION_DIR).exists() or not _records(ev.pool.path)


def test_macro_verdict_judges_against_the_noise_ceiling():
    from ablate.validation.report import macro_verdict

    assert "TRUSTWORTHY" in macro_verdict(0.85, 0.95, 0.002, 2)
    # Below 0.8 but within 0.05 of a low ceiling: as good as real training agrees with itself.
    assert "TRUSTWORTHY" in macro_verdict(0.62, 0.65, 0.01, 2)
    # A ranking that holds with a pick that does not (the suite's out-of-sample Fisher cell).
    pick = macro_verdict(0.91, 0.85, 0.027, 2)
    assert "TRUSTWORTHY but its PICK is not" in pick and "2.70%" in pick and "1%" in pick
    assert "like for like" not in pick  # no seeds' picks given: nothing to set it beside
    # Beside real training's own pick noise (regret_single, seed_regret), verdict unchanged.
    noisy = macro_verdict(0.91, 0.85, 0.027, 2, pick_like_for_like=(0.02, 0.045))
    assert "PICK is not" in noisy and "2.00% off" in noisy and "own 4.50%" in noisy
    assert "within real training's pick noise" in noisy and "\n" not in noisy
    worse = macro_verdict(0.91, 0.85, 0.027, 2, pick_like_for_like=(0.03, 0.012))
    assert "beyond real training's pick noise" in worse and "proxy's pick is" not in worse
    luck = macro_verdict(0.91, 0.85, 0.027, 2, pick_ceiling=0.54)
    assert "PICK is not" in luck and "perfect proxy's pick is within 1% of the best in 54%" in luck
    assert "proxy's pick is" not in macro_verdict(0.91, 0.85, 0.002, 2, pick_ceiling=0.54)
    # A ranking that fails with a pool's own non-average merge: the next steps reuse the runs
    # (seed data in the members made the suite's default pools worse: not advised).
    low = macro_verdict(0.4, 0.9, 0.05, 2)
    assert "NOT trustworthy" in low and "5.00%" in low and "--member-seed-share" not in low
    assert "--merge average" in low and "--repeats 4" in low
    assert "NOT decidable" in macro_verdict(0.1, 0.3, 0.01, 2)
    assert "--repeats 2" in macro_verdict(0.9, math.nan, 0.0, 1)
    assert "--sample" in macro_verdict(math.nan, math.nan, 0.0, 1)
    assert all(
        "\n" not in macro_verdict(*a)
        for a in [(0.9, 0.9, 0, 2), (0.9, 0.9, 0.2, 2), (0.1, 0.9, 0.2, 2), (0.5, 0.2, 0, 2)]
    )


def test_real_scores_are_stored_read_back_and_outlive_dropped_weights(full_pool, corpus, tmp_path):
    from ablate.validation.real_scores import SCORES_DIR, drop_weights

    ev = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    mixes = [Mixture.uniform(["math", "wiki"]), Mixture.uniform(["math"])]
    first = validate(ev, mixtures=mixes, bootstrap=0)
    (rec, _) = first.records
    folder = full_pool.path / VALIDATION_DIR / rec.key
    (stored,) = (folder / SCORES_DIR).glob("evalset-*.npz")
    # Read back, not scored again: doubled stored NLL doubles the real model's log perplexity.
    with np.load(stored) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(stored, **{**arrays, "nll": 2 * arrays["nll"]})
    again = validate(ev, mixtures=mixes, bootstrap=0)
    doubled = again.pairs["real"].to_numpy()[: len(ev.domains)]
    want = first.pairs["real"].to_numpy()[: len(ev.domains)] ** 2
    assert doubled == pytest.approx(want, rel=1e-9)
    # Scores of other weights are never read: a stale file is scored again and rewritten.
    np.savez(stored, **{**arrays, "weights_sha256": np.asarray("0" * 64)})
    fresh = validate(ev, mixtures=mixes, bootstrap=0)
    assert fresh.pairs["real"].to_numpy() == pytest.approx(first.pairs["real"].to_numpy())
    with np.load(stored) as z:
        assert str(z["weights_sha256"]) == rec.weights_sha256
    assert drop_weights(full_pool, rec) > 0 and drop_weights(full_pool, rec) == 0

    # The CLI: --no-keep-weights keeps records and scores, drops weights; reruns still work.
    out = tmp_path / "val"
    args = eval_cli_args("validate", full_pool.path, corpus["eval"], "--out", out)
    args += ["--mixture", "code,math", "--mixture", "math,wiki", "--bootstrap", "0", "--json"]
    kept = run_cli(*args)
    assert kept.returncode == 0, kept.stderr
    records = _records(full_pool.path)
    dropped = run_cli(*args, "--no-keep-weights")
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout)["correlations"] == json.loads(kept.stdout)["correlations"]
    assert _records(full_pool.path) == records  # nothing retrained, nothing rewritten
    cli = {k: r for k, r in records.items() if len(r.mixture) == 2}  # not the API's "math"
    assert len(cli) == 2
    for k, r in cli.items():
        assert not (full_pool.path / VALIDATION_DIR / k / r.weights_file).exists()
        assert list((full_pool.path / VALIDATION_DIR / k / SCORES_DIR).glob("evalset-*.npz"))
    rerun = run_cli(*args, "--no-keep-weights")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["correlations"] == json.loads(kept.stdout)["correlations"]
    # Another eval set needs the weights: one clear line naming the fix; nothing is lost.
    other = run_cli(
        "validate",
        full_pool.path,
        "--eval-data",
        corpus["eval"],
        "--out",
        out,
        "--mixture",
        "code,math",
        "--bootstrap",
        "0",
    )  # no --eval-by: one domain, another eval set
    assert other.returncode == 2
    (line,) = other.stderr.strip().splitlines()
    assert line.startswith("ablate: error:") and "kept only its scores" in line
    assert "delete that folder" in line
    assert _records(full_pool.path) == records


def test_a_rerun_merges_no_proxy_and_loads_no_real_model(full_pool, corpus, monkeypatch):
    """Proxies' per-document scores go to the results store and real models' beside them:
    validating again (another target, a notebook tomorrow, a resumed run) computes nothing."""
    mixes = [Mixture.uniform(["math", "wiki"]), Mixture.parse("code=1,math=3")]
    first = validate(
        Evaluator(full_pool, corpus["eval"], by="domain", progress=False),
        mixtures=mixes,
        repeats=2,
        bootstrap=0,
    )
    ev = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)  # a new session
    calls: list[str] = []
    monkeypatch.setattr(ev.merged, "load", lambda *a, **k: calls.append("merge"))
    monkeypatch.setattr(ev.merged, "load_state", lambda *a, **k: calls.append("real model"))
    again = validate(ev, mixtures=mixes, repeats=2, bootstrap=0)
    assert calls == [] and again.trained == 0
    assert again.pairs.equals(first.pairs)
    assert again.decisions["spearman"].equals(first.decisions["spearman"])
    # An extrapolated proxy is not the evaluator's: it is merged every time, never stored.
    validate(ev, mixtures=mixes, repeats=2, bootstrap=0, extrapolate=1.5)
    assert calls == ["merge", "merge"]
