"""``benchmarks/probe_calibration.py`` measures what ``ablate validate`` reports: its per-document
form keeps each domain's perplexity, and its shift is the report's leave-one-out correction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from support import load_benchmark

from ablate.validation.decisions import target_ppl
from ablate.validation.levels import level_correction


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("probe_calibration")


def test_document_form_keeps_each_domain_and_the_shift_is_the_reports(probe):
    rng = np.random.default_rng(3)
    doc_domain = np.array([0, 1, 1, 2, 0, 2, 1])
    tokens = rng.integers(5, 50, len(doc_domain)).astype(float)
    proxy_nll = rng.uniform(1.0, 4.0, (5, len(doc_domain))) * tokens
    real_nll = proxy_nll * rng.uniform(0.7, 1.1, proxy_nll.shape)
    lp = probe.domain_log_ppl(proxy_nll, tokens, doc_domain, 3)
    lr = probe.domain_log_ppl(real_nll, tokens, doc_domain, 3)
    back = probe.domain_log_ppl(
        probe.as_document_nll(lp, tokens, doc_domain), tokens, doc_domain, 3
    )
    np.testing.assert_allclose(back, lp, rtol=1e-12)
    shifted = probe.level_shift(lp, lr)
    pairs = pd.DataFrame(
        [
            {
                "mixture": f"m{i}",
                "domain": f"d{d}",
                "proxy": np.exp(lp[i, d]),
                "real": np.exp(lr[i, d]),
            }
            for i in range(5)
            for d in range(3)
        ]
    )
    lc = level_correction(pairs)
    truth = np.exp(lr).mean(axis=1)
    pick = int(np.argmin(np.exp(shifted).mean(axis=1)))
    assert lc.regret_corrected == pytest.approx(truth[pick] / truth.min() - 1)
    # From chosen rows every mixture gets the same shift, read from those rows only.
    fixed = probe.level_shift(lp, lr, np.array([1, 3]))
    np.testing.assert_allclose(fixed - lp, np.broadcast_to((lr - lp)[[1, 3]].mean(0), lp.shape))
    np.testing.assert_allclose(target_ppl(real_nll, tokens, doc_domain, 3)[:, :3], np.exp(lr))


def test_specialisation_is_the_seed_minus_the_best_member_per_domain(probe, full_pool, corpus):
    """What the probe's --gain reads: the evaluator's own measure, whatever its level."""
    from ablate import Evaluator, Mixture

    ev = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    assert ev.proxy_level == "none"
    scorer = ev.scorer()
    tokens, dd = scorer.doc_tokens, np.asarray(ev.eval_set.doc_domain)
    n = len(ev.eval_set.domains)
    got = ev.specialisation().gain
    base = {k: v.detach() for k, v in full_pool.load_base_model().named_parameters()}
    ev.merged.load_state(base, "the seed")
    seed = probe.domain_log_ppl(scorer.score_documents().nll[None], tokens, dd, n)[0]
    members = np.array(
        [
            [math.log(ev.evaluate(Mixture.uniform([p])).ppl[d]) for d in ev.eval_set.domains]
            for p in ev.partitions
        ]
    )
    np.testing.assert_allclose(got, seed - members.min(axis=0), rtol=1e-5, atol=1e-6)
    assert (got > 0).any()  # a member trained on its partition beats the seed somewhere
    seed_lp, parts = ev.partition_log_ppl()  # what --transfer reads: every member, not the best
    np.testing.assert_allclose(seed_lp, seed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts, members, rtol=1e-5, atol=1e-6)


def test_the_gain_feature_is_the_shipped_levels_shape_and_relative_ignores_the_scale(probe):
    from ablate.engine.levels import POWER, SCALE, specialisation_shift

    gain = np.array([0.3, 1.2, -0.1, 2.5])  # a domain no member helps is read higher
    seed = np.full(4, 6.0)
    members = np.stack([seed - gain, seed + 0.5])  # the best member gains ``gain``
    np.testing.assert_allclose(
        SCALE * probe.gain_feature(gain, POWER), specialisation_shift(seed, members)
    )
    rel = probe.gain_feature(gain, 1.0, relative=True)
    np.testing.assert_allclose(rel, gain / np.abs(gain).mean())
    # twice the gains (units twice as long): the same correction, where the plain one doubles
    np.testing.assert_allclose(
        probe.gain_feature(2 * gain, 1.5, relative=True),
        probe.gain_feature(gain, 1.5, relative=True),
    )
    np.testing.assert_allclose(probe.gain_feature(2 * gain, 1.0), 2 * gain)
    assert probe.gain_feature(gain, 1.5)[2] < 0
    np.testing.assert_array_equal(probe.gain_feature(np.zeros(3), 1.5, relative=True), 0.0)


def test_transfer_features_split_each_domain_into_its_own_member_and_the_others(probe):
    share = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    seed_lp = np.array([5.0, 6.0])  # domains "b", "x": "x" is no partition's
    parts_lp = np.array([[4.9, 5.0], [4.0, 5.5], [4.5, 6.2]])  # members a, b, c
    own, cross = probe.transfer_features(share, ("a", "b", "c"), ("b", "x"), seed_lp, parts_lp)
    np.testing.assert_allclose(own, [[0.5 * 1.0, 0.0], [0.3 * 1.0, 0.0]])
    np.testing.assert_allclose(
        cross, [[0.5 * 0.1, 0.5 * 1.0 + 0.5 * 0.5], [0.2 * 0.1 + 0.5 * 0.5, 0.2 + 0.15 - 0.1]]
    )


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # one seed twice: no seed-vs-seed ceiling
def test_transfer_fits_recover_the_coefficients_and_the_oracle_each_real_run(probe):
    """Real runs that follow ``level + b * own + c * cross`` exactly: each cell's pooled
    coefficients from the other cells are ``(b, c)``, and the oracle reads every mixture's
    real log perplexity without seeing it."""
    from types import SimpleNamespace

    rng = np.random.default_rng(4)
    b, c = -0.3, 0.05
    cells = {}
    for k in range(3):
        m, d = 12, 3
        lp = rng.normal(5.0, 0.2, (m, d))
        own, cross = rng.uniform(0, 1, (m, d)), rng.uniform(0, 0.5, (m, d))
        lr = lp + rng.normal(0, 0.3, d) + b * own + c * cross
        uniform = (np.full((1, d), 0.3), np.full((1, d), 0.1))
        cells[f"c{k}"] = {"lp": lp, "lr": lr, "own": own, "cross": cross, "uniform": uniform}
    for name in cells:
        got = probe.transfer_fit([o for k, o in cells.items() if k != name])
        np.testing.assert_allclose(got, [b, c], rtol=1e-8)
    doc_domain = np.repeat(np.arange(3), 2)
    tokens = np.full(6, 40.0)
    for cell in cells.values():
        runs = probe.as_document_nll(cell["lr"], tokens, doc_domain)
        cell |= {
            "runs": np.stack([runs, runs]),
            "tokens": tokens,
            "es": SimpleNamespace(doc_domain=list(doc_domain), domains=("a", "b", "c")),
        }
    captured = {}
    real_verdict = probe.bench.verdict

    def spy(guess, ref, tok, es, seed):
        captured.setdefault("guesses", []).append(guess)
        return real_verdict(guess, ref, tok, es, seed)

    probe.bench.verdict = spy
    try:
        rows = probe.transfer_rows(cells, seed=1)
    finally:
        probe.bench.verdict = real_verdict
    assert rows["c0"]["coef"] == pytest.approx((b, c))
    for row in rows.values():
        assert all(ok for _, ok in row["oracle"])
    pooled, _, centred, _, oracle, _ = captured["guesses"][:6]  # c0's, two seeds then all
    np.testing.assert_allclose(oracle, cells["c0"]["runs"][0], rtol=1e-8)
    shift = (b * 0.3 + c * 0.1) * tokens  # the uniform mixture's features, every document
    np.testing.assert_allclose(pooled - centred, np.broadcast_to(shift, pooled.shape))


def test_the_affine_reading_recovers_a_line_and_leaves_each_mixture_out(probe):
    rng = np.random.default_rng(5)
    lp = rng.normal(5.0, 0.3, (12, 3))
    slope, icpt = np.array([1.5, 0.8, 2.0]), np.array([-2.0, 1.0, -5.0])
    read, fitted = probe.affine_reading(lp, icpt + slope * lp)
    np.testing.assert_allclose(fitted, slope, rtol=1e-10)
    np.testing.assert_allclose(read, icpt + slope * lp, rtol=1e-10)
    # With noise, mixture i's reading does not see its own real score: changing it moves
    # every other mixture's reading but not its own.
    real = icpt + slope * lp + rng.normal(0, 0.05, lp.shape)
    moved = real.copy()
    moved[4] += 1.0
    a, _ = probe.affine_reading(lp, real)
    b, _ = probe.affine_reading(lp, moved)
    np.testing.assert_allclose(a[4], b[4], rtol=1e-12)
    assert not np.allclose(np.delete(a, 4, axis=0), np.delete(b, 4, axis=0))


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # per-domain ceilings: unused here
def test_the_switch_rule_keeps_the_default_unless_only_the_other_merge_holds(probe):
    """``--switch``: a default that ranks like the real runs is never switched away from; a
    default that ranks backwards is, wherever the other merge holds on the validating pair."""
    from types import SimpleNamespace

    rng = np.random.default_rng(11)
    m, docs_per = 16, 4
    doc_domain = np.repeat(np.arange(3), docs_per)
    tokens = np.full(len(doc_domain), 50.0)
    lp = rng.normal(5.0, 0.2, (m, 3))  # log perplexity per mixture and domain
    runs = np.stack(
        [
            probe.as_document_nll(lp + rng.normal(0, 0.002, lp.shape), tokens, doc_domain)
            for _ in range(4)
        ]
    )
    es = SimpleNamespace(doc_domain=list(doc_domain), domains=("a", "b", "c"))
    ev = SimpleNamespace(eval_set=es, specialisation=lambda: SimpleNamespace(nats=np.zeros(3)))
    args = SimpleNamespace(seed=1)
    right = probe.as_document_nll(lp, tokens, doc_domain)
    backwards = probe.as_document_nll(10.0 - lp, tokens, doc_domain)
    kept = probe.switch_row(ev, right, runs, tokens, backwards, args)
    assert kept == {"default": 6, "other": 0, "rule": 6, "switched": 0, "cases": 6}
    switched = probe.switch_row(ev, backwards, runs, tokens, right, args)
    assert switched == {"default": 0, "other": 6, "rule": 6, "switched": 6, "cases": 6}


def test_the_weight_response_is_the_ratio_of_the_slopes_on_the_log_share(probe):
    rng = np.random.default_rng(2)
    share = rng.dirichlet(np.ones(3), 20)
    x = np.log(share + 0.01)
    lp = 5.0 - 0.2 * x
    lr = 4.0 - np.array([0.3, 0.2, 0.5]) * x
    np.testing.assert_allclose(probe.weight_response(lp, lr, share), [1.5, 1.0, 2.5])
    # below a share, only those mixtures: a response that bends above 0.35 is not seen
    bent = lr - np.where(share >= 0.35, 3.0 * share, 0.0)
    np.testing.assert_allclose(
        probe.weight_response(lp, bent, share, 0.35), [1.5, 1.0, 2.5], rtol=1e-10
    )
    assert not np.allclose(probe.weight_response(lp, bent, share), [1.5, 1.0, 2.5])


def test_transfer_with_one_cell_is_refused_before_anything_is_read(
    probe, tmp_path, monkeypatch, capsys
):
    """``--transfer`` fits on the other cells: one cell is a usage error, said at once (not
    after every cell has been read)."""
    argv = ["probe_calibration.py", "--work", str(tmp_path), "--transfer", "--cells", "x:1:2"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as stop:
        probe.main()
    assert stop.value.code == 2
    assert "--transfer fits its coefficients on the other cells" in capsys.readouterr().err


def test_another_member_draw_is_read_from_its_own_pool_or_refused_with_its_build(
    probe, tmp_path, monkeypatch, capsys
):
    """``--variant precond_ms2`` reads that pool of each cell; where the cell has only the
    default's, the usage error names the folder and the command that grows it."""
    (tmp_path / "mlcode" / "seed1-unit2" / "precond").mkdir(parents=True)
    (tmp_path / "mlcode" / "seed1-unit2" / "precond" / "pool.json").write_text("{}")
    argv = ["probe_calibration.py", "--work", str(tmp_path), "--cells", "mlcode:1:2"]
    monkeypatch.setattr("sys.argv", [*argv, "--variant", "precond_ms2"])
    with pytest.raises(SystemExit) as stop:
        probe.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "seed1-unit2/precond_ms2" in err
    assert "--variants precond_ms2 --merge fisher_damped" in err
