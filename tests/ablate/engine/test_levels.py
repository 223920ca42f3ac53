"""The proxy level (``ablate.engine.levels``): each domain's proxy scores read lower by how
much its best partition gains over the seed, everywhere scores are read (evaluate, races,
validation's documents), while the store keeps them as scored."""

from __future__ import annotations

import numpy as np
import pytest
from support import domain_evaluator

from ablate import EvalResult
from ablate.engine.executor import Scorers
from ablate.engine.levels import LevelShift, specialisation_shift
from ablate.engine.scores import DocScores, DomainScore
from ablate.mixture import Mixture
from ablate.pool import PoolError
from ablate.racing.policy import PartialResult, Race
from ablate.validation.validate import proxy_scores

MIXES = ["code", "code=1,wiki=3", "math,wiki", "code,math,wiki"]


@pytest.fixture(scope="module")
def read_one_by_one(full_pool_dir, corpus) -> dict[str, EvalResult]:
    """Every subset of the session pool read at the level, each merged and scored alone."""
    ev = domain_evaluator(full_pool_dir, corpus, proxy_level="specialisation")
    return {m.key: ev.evaluate(m) for m in ev.all_subsets()}


def _lp(scores, d: str) -> float:
    return scores[d].nll / scores[d].tokens


def test_the_shift_is_the_scaled_gain_to_a_power_and_a_domain_no_member_helps_is_raised():
    seed = np.array([3.0, 2.0, 1.0])
    parts = np.array([[2.0, 2.5, 1.2], [2.75, 1.0, 1.1]])  # gains 1.0, 1.0, -0.1
    got = specialisation_shift(seed, parts, scale=0.2, power=1.5)
    assert got == pytest.approx([0.2, 0.2, -0.2 * 0.1**1.5])
    assert specialisation_shift(seed, parts, scale=0.2, power=1.0) == pytest.approx(
        [0.2, 0.2, -0.02]
    )


def test_a_shift_reads_domain_totals_and_documents_alike():
    shift = LevelShift(("a", "b"), np.array([0.1, -0.2]), np.array([1.0, -0.5]))
    docs = DocScores(np.array([8.0, 9.0, 4.0]), np.array([4, 3, 2]))
    doc_domain = np.array([0, 1, 0])
    read = shift.documents(docs, doc_domain)
    assert read.nll == pytest.approx([8.0 - 0.4, 9.0 + 0.6, 4.0 - 0.2])
    assert (read.tokens == docs.tokens).all()
    totals = shift.scores({"a": DomainScore(6, 12.0, 30), "b": DomainScore(3, 9.0, 10)})
    assert totals["a"] == DomainScore(6, 12.0 - 0.6, 30)
    assert totals["b"].nll == pytest.approx(9.6) and totals["b"].bytes == 10
    assert shift.as_dict()["b"] == {"gain": -0.5, "shift": -0.2}


def test_an_evaluator_reads_each_domain_lower_by_its_gain_and_the_store_keeps_scores_as_scored(
    full_pool_dir, corpus, tmp_path, monkeypatch
):
    store = tmp_path / "results.sqlite"
    raw = domain_evaluator(full_pool_dir, corpus, store=store)
    assert raw.proxy_level == "none" and raw.level_shift is None  # the pool's own
    ev = domain_evaluator(full_pool_dir, corpus, store=store, proxy_level="specialisation")
    shift = ev.level_shift
    assert shift is not None and shift.domains == ev.domains
    # the gain, from the seed and every partition scored apart from the store
    apart = domain_evaluator(full_pool_dir, corpus)
    parts = [apart.evaluate(p).scores for p in apart.partitions]
    base = apart.pool.load_base_model()
    apart.merged.load_state({k: v.detach() for k, v in base.named_parameters()}, "the seed")
    seed = apart.score_current()
    for i, d in enumerate(ev.domains):
        gain = _lp(seed, d) - min(_lp(p, d) for p in parts)
        assert shift.gain[i] == pytest.approx(gain, rel=1e-6, abs=1e-9)
    assert shift.nats == pytest.approx(
        specialisation_shift(shift.gain, np.zeros((1, len(ev.domains))))
    )
    assert np.abs(shift.nats).max() > 1e-3  # these members do move their domains

    read = [ev.evaluate(m) for m in MIXES]
    scored = [raw.evaluate(m) for m in MIXES]  # the store's rows: as scored
    assert all(r.cached for r in scored)
    for g, s in zip(read, scored, strict=True):
        for d in ev.domains:
            assert (
                g.scores[d].tokens == s.scores[d].tokens and g.scores[d].bytes == s.scores[d].bytes
            )
            assert g.scores[d].nll == pytest.approx(
                s.scores[d].nll - shift.of(d) * s.scores[d].tokens
            )
        assert g.macro_ppl == pytest.approx(
            np.mean([np.exp(_lp(s.scores, d) - shift.of(d)) for d in ev.domains])
        )
    for d in ev.domains:  # a constant per domain: no ranking on one domain changes
        assert (
            np.argsort([r.ppl[d] for r in read]).tolist()
            == np.argsort([r.ppl[d] for r in scored]).tolist()
        )
    # a second evaluator at this level finds the seed and the partitions in the store
    monkeypatch.setattr(Scorers, "merged", lambda self: pytest.fail("loaded the members"))
    again = domain_evaluator(full_pool_dir, corpus, store=store, proxy_level="specialisation")
    assert again.level_shift.nats == pytest.approx(shift.nats)
    assert again.evaluate(MIXES[1]).scores == read[1].scores


def test_a_race_at_the_level_races_on_values_as_read_and_stores_them_as_scored(
    full_pool_dir, corpus, tmp_path, read_one_by_one
):
    store = tmp_path / "results.sqlite"
    ev = domain_evaluator(full_pool_dir, corpus, store=store, proxy_level="specialisation")
    subsets = ev.all_subsets()
    results = Race(ev, "macro", confidence=0.8).run(subsets)
    every = {str(r.mixture): r for r in read_one_by_one.values()}
    full = [r for r in results if isinstance(r, EvalResult)]
    dropped = [r for r in results if isinstance(r, PartialResult)]
    assert full and dropped
    best = min(every.values(), key=lambda r: r.macro_ppl)
    assert min(full, key=lambda r: r.macro_ppl).mixture == best.mixture
    shift = ev.level_shift
    raw = domain_evaluator(full_pool_dir, corpus, store=store)
    for r in full:
        assert r.ppl == pytest.approx(every[str(r.mixture)].ppl, rel=1e-5)
        kept = raw.evaluate(r.mixture)
        assert kept.cached
        for d in ev.domains:
            s = kept.scores[d]
            assert r.scores[d].nll == pytest.approx(s.nll - shift.of(d) * s.tokens, rel=1e-6)
    for x in dropped:
        key = ev.pool_key(x.mixture)
        rows = ev.store.get_partial(key, ev.eval_set.fingerprint, x.mixture.key)
        assert ev.cache.lookup_partial(x.mixture, key) == {
            d: (t, pytest.approx(n - shift.of(d) * t), total) for d, (t, n, total) in rows.items()
        }
        for d, (t, n, _) in rows.items():
            assert x.partial[d].nll == pytest.approx(n - shift.of(d) * t)


def test_validation_reads_the_proxys_documents_at_the_level_fresh_or_stored(
    full_pool_dir, corpus, tmp_path
):
    ev = domain_evaluator(
        full_pool_dir, corpus, store=tmp_path / "r.sqlite", proxy_level="specialisation"
    )
    m = ev.all_subsets()[2]
    fresh, _ = proxy_scores(ev, m)
    stored, _ = proxy_scores(ev, m)
    assert fresh.nll == pytest.approx(stored.nll)
    totals = fresh.domain_totals(ev.eval_set)
    assert {d: s.nll for d, s in totals.items()} == pytest.approx(
        {d: s.nll for d, s in ev.evaluate(m).scores.items()}
    )
    docs = ev.store.get_documents(ev.pool_key(m), ev.eval_set.fingerprint, m.key)
    dd = np.asarray(ev.eval_set.doc_domain)
    assert docs[0] == pytest.approx(fresh.nll + ev.level_shift.nats[dd] * fresh.tokens)


def test_an_unknown_level_is_refused_in_one_line(full_pool_dir, corpus):
    with pytest.raises(PoolError, match="--proxy-level must be one of none, specialisation"):
        domain_evaluator(full_pool_dir, corpus, proxy_level="median")


def test_a_lora_pool_reads_at_the_level_too(lora_pool_dir, corpus):
    """LoRA pools keep ``none`` by default (their levels do not follow the gain), but the
    level works there: the seed is the base model with no adapter."""
    raw = domain_evaluator(lora_pool_dir, corpus)
    assert raw.proxy_level == "none"
    ev = domain_evaluator(lora_pool_dir, corpus, proxy_level="specialisation")
    base = raw.pool.load_base_model()
    raw.merged.load_state({k: v.detach() for k, v in base.named_parameters()}, "the seed")
    seed = raw.score_current()
    parts = [raw.evaluate(p).scores for p in raw.partitions]
    shift = ev.level_shift
    for i, d in enumerate(ev.domains):
        assert shift.gain[i] == pytest.approx(_lp(seed, d) - min(_lp(p, d) for p in parts))
    got, scored = ev.evaluate("code=1,wiki=3"), raw.evaluate("code=1,wiki=3")
    for d in ev.domains:
        assert got.scores[d].nll == pytest.approx(
            scored.scores[d].nll - shift.of(d) * scored.scores[d].tokens
        )


def test_the_level_measured_while_a_mixture_is_loaded_leaves_its_weights_alone(
    full_pool_dir, corpus, read_one_by_one
):
    """With no store the level is first needed while the skeleton holds a mixture: scoring
    the seed and the partitions then must not change what is being scored."""
    ev = domain_evaluator(full_pool_dir, corpus, proxy_level="specialisation")
    m = Mixture.parse("code=1,wiki=3")
    ev.merged.load(m)
    before = ev.score_current()
    assert ev.level_shift is not None  # scores the seed and three partitions in between
    assert ev.score_current() == before
    for r in ev.run_many(ev.all_subsets()):  # a Gray walk, the level already known
        assert r.ppl == pytest.approx(read_one_by_one[r.mixture.key].ppl, rel=1e-5)
