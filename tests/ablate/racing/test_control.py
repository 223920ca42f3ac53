"""Racing with control variates: the adjustment keeps every total, shrinks the noise a race
must see through, and a pool race returns the same best with full scores only."""

from __future__ import annotations

import numpy as np
import pytest
from support import domain_evaluator

from ablate import EvalResult, PartialResult, Race, search
from ablate.racing.bounds import control_adjustment
from ablate.racing.engine import ArrayScores, RaceOrder, Racer


def test_adjustment_by_hand_keeps_each_stratum_total_and_skips_linear_strata():
    tokens = np.array([1, 3, 2, 2, 1])
    strata = np.array([0, 0, 1, 1, 2])
    basis = np.array([[2.0, 6.0, 4.0, 8.0, 100.0], [4.0, 2.0, 6.0, 2.0, 0.0]])
    adj = control_adjustment(np.array([0.5, 0.5]), basis, tokens, strata, [False, False, True])
    # prediction c = [3, 4, 5, 5, 50]; per token: stratum 0 = 7/4, stratum 1 = 10/4
    assert adj == pytest.approx([1.75 - 3, 5.25 - 4, 5 - 5, 5 - 5, 0.0])
    values = np.array([10.0, 20.0, 7.0, 9.0, 1.0])
    for d in range(3):  # every stratum's total, hence the full-set target, is unchanged
        assert (values + adj)[strata == d].sum() == pytest.approx(values[strata == d].sum())


def _noisy(rng, n_strata=3, per=40, tokens=128):
    """Per-unit summed NLL of two basis members and of mixtures of them whose values their
    average predicts exactly up to a per-stratum shift: members vary a lot unit by unit."""
    strata = np.repeat(np.arange(n_strata), per)
    tok = np.full(len(strata), tokens)
    level = rng.normal(3.0, 0.3, len(strata))
    members = tok * (level + rng.normal(0, 0.3, (2, len(strata))))  # (2, U)
    return strata, tok, members


def test_the_control_shrinks_the_gap_noise_and_keeps_the_full_gap():
    """Two mixtures of the same members: one 5% better than their average, one as good as
    it. The members differ by 30% unit by unit, so the raw paired gap on 8 units per
    stratum is noisy; against the mixtures' predictions only the guard's pseudo-unit is
    left. On every unit both read the same exact gap."""
    from ablate.racing.bounds import gap_bound

    rng = np.random.default_rng(0)
    strata, tok, members = _noisy(rng)
    coef = np.array([[0.5, 0.5], [0.2, 0.8]])
    shift = np.array([[-np.log(1.05)], [0.0]])  # a merge's gain, on every unit
    best, other = coef @ members + shift * tok
    adj = [control_adjustment(c, members, tok, strata) for c in coef]
    weights = np.full(3, 1 / 3)
    none = np.zeros(len(strata), dtype=bool)
    part = np.isin(np.arange(len(strata)) % 40, np.arange(8))  # 8 units per stratum

    def gap(scored, control):
        a = adj if control else [0.0, 0.0]
        return gap_bound(other + a[1], best + a[0], tok, strata, scored, none, weights)

    raw, ctl = gap(part, False), gap(part, True)
    assert ctl.se < raw.se / 3 and ctl.delta > 0
    assert (ctl.delta - 3 * ctl.se) > 0 > (raw.delta - 3 * raw.se)
    every = np.ones(len(strata), dtype=bool)
    assert gap(every, True).delta == pytest.approx(gap(every, False).delta, rel=1e-12)


def test_a_racer_reads_the_adjusted_values_and_returns_the_raw_ones():
    rng = np.random.default_rng(1)
    strata, tok, members = _noisy(rng)
    coef = np.array([[0.5, 0.5], [0.2, 0.8]])
    values = np.vstack([members, coef @ members - np.array([[0.1], [0.0]]) * tok])
    racer = Racer(RaceOrder.build(strata, range(3)), tok, strata, np.full(3, 1 / 3))
    for b in (0, 1):
        racer.admit(b, values[b])
    for k in (2, 3):
        racer.adjust[k] = control_adjustment(coef[k - 2], members, tok, strata)
    out = racer.run([2, 3], ArrayScores(values))
    assert out[2].full and np.array_equal(out[2].nll, values[2])  # its own values
    assert not out[3].full and out[3].against == 2
    # the dropped one's estimate is on the adjusted values: its target, nearly exactly
    true = np.mean([np.exp(values[3][strata == d].sum() / 40 / 128) for d in range(3)])
    assert out[3].score == pytest.approx(true, rel=1e-3)


def test_simulated_control_races_keep_the_promise_when_the_best_hides_from_the_control():
    """The harness in small: subsets whose best leads only on a few units, in the part of
    its loss its partitions' average does not predict (the control's blind spot)."""
    from ablate.racing.simulate import Setting, simulate

    kw = {"margin": 0.005, "control": True}
    s = Setting("small", 15, 4, (20, 30), "equal", "subsets_one_unit", **kw)
    ok = simulate(s, 200, 0.9, seed=3)
    assert ok["ci95"][0] <= 0.1 and ok["saving_mean"] > 1
    with pytest.raises(ValueError, match="basis"):
        simulate(Setting("x", 15, 3, (8, 16), "equal", "near_ties", control=True), 1, 0.9, 0)


def test_pool_race_with_control_returns_the_best_and_the_singletons_in_full(
    full_pool, corpus, tmp_path
):
    plain = search(
        domain_evaluator(full_pool, corpus),
        target="macro",
        strategy="exhaustive",
        heldout=0,
        progress=False,
    )
    ev = domain_evaluator(full_pool, corpus, store=tmp_path / "results.sqlite")
    race = Race(ev, "macro", confidence=0.8, control=True)
    subsets = ev.all_subsets()
    results = race.run(subsets)
    by = {str(r.mixture): r for r in results}
    for name in full_pool.partitions:  # scored first, on every unit: full scores
        r = by[name]
        assert isinstance(r, EvalResult)
        fresh = domain_evaluator(full_pool, corpus).evaluate(name)
        assert r.ppl == pytest.approx(fresh.ppl, rel=1e-5)
    full = [r for r in results if isinstance(r, EvalResult)]
    assert min(full, key=lambda r: np.mean(list(r.ppl.values()))).mixture == plain.best.mixture
    assert race.stats.full == len(full) and race.stats.full + race.stats.dropped == len(subsets)
    # every candidate raced against its prediction; each adjustment sums to 0 per domain
    r = race.racer
    dropped = [x for x in results if isinstance(x, PartialResult)]
    assert all(x.mixture.key in r.adjust for x in dropped)
    for adj in r.adjust.values():
        assert np.bincount(r.doc_domain, adj) == pytest.approx(0.0, abs=1e-6)
    # a second batch reuses the singletons: nothing scored again for them
    before = r.tokens_scored
    race.run(subsets[:1])
    assert r.tokens_scored == before


def test_control_is_automatic_for_a_crowd_of_multi_domain_candidates_only(full_pool, corpus):
    ev = domain_evaluator(full_pool, corpus)
    subsets = {m.key: m for m in ev.all_subsets()}  # 7 subsets of 3 partitions
    assert not Race(ev, "macro")._controls(subsets)  # fewer than 4 per partition to score
    assert Race(ev, "macro", control=True)._controls(subsets)
    assert not Race(ev, "code", control=None)._controls(subsets)  # one domain: not worth it
    assert not Race(ev, "macro", control=False)._controls(subsets)
    race = Race(ev, "macro", control=False)
    race.run(list(subsets.values()))
    assert not race.racer.adjust
