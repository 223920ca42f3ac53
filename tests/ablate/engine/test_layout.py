"""MemberLayout: rows and weights of a mixture, its exact key, and the Gray-code order."""

from __future__ import annotations

import numpy as np
import pytest

from ablate import Evaluator, Mixture, Pool
from ablate.engine.layout import MemberLayout, count_subsets, gray_subsets


def test_gray_subsets_change_one_member_per_step():
    subs = gray_subsets(5)
    assert len(subs) == 31 and len(set(subs)) == 31
    for a, b in zip(subs, subs[1:]):
        assert len(set(a) ^ set(b)) == 1
    assert all(len(s) <= 2 for s in gray_subsets(5, max_size=2))
    assert count_subsets(5) == 31 and count_subsets(5, 2) == 15


def test_a_partition_weight_is_spread_over_its_units(full_pool_dir):
    layout = MemberLayout(Pool.open(full_pool_dir))
    w = layout.member_weights(Mixture.of({"code": 0.25, "wiki": 0.75}))
    assert w.shape == (len(layout.members),) and w.sum() == pytest.approx(1.0)
    for p, rows in layout.rows_of.items():
        want = {"code": 0.25, "wiki": 0.75}.get(p, 0.0) / len(rows)
        np.testing.assert_allclose(w[list(rows)], want)


def test_walk_order_puts_uniform_subsets_in_gray_order_first(full_pool_dir):
    layout = MemberLayout(Pool.open(full_pool_dir))
    weighted = Mixture.of({"code": 0.3, "wiki": 0.7})
    subsets = layout.all_subsets()
    walk, rest = layout.walk_order([weighted, *reversed(subsets)])
    assert rest == [weighted]
    assert [m.key for m in walk] == [m.key for m in subsets]


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
