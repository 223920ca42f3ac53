"""Many partitions: 128 tiny partitions through add, (fake) grow, eval and every strategy.

Growth here is ``support.fake_grow``, a fast fake-trained stand-in (seed + noise, written as
real members): these tests are about enumeration, search and scoring at scale, not training.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from support import WORDS, fake_grow, tiny_recipe, write_jsonl

from ablate import Evaluator, Mixture
from ablate.cli import main
from ablate.engine.layout import MAX_ALL_SUBSETS, count_subsets, gray_subsets, iter_subsets
from ablate.pool import AblateError, Pool
from ablate.strategies import STRATEGIES
from ablate.strategies.driver import search
from ablate.strategies.space import SearchSpace


def _many_pool(root: Path, base: Path, n: int) -> Pool:
    """``n`` partitions ``p000``... of one short document each (one tiny unit per partition)."""
    pool = Pool.create(root, base=str(base), recipe=tiny_recipe(unit_tokens=16), progress=False)
    rng = random.Random(n)
    vocab = [w for ws in WORDS.values() for w in ws]
    rows = [
        {"text": " ".join(rng.choice(vocab) for _ in range(12)), "domain": f"p{i:03d}"}
        for i in range(n)
    ]
    data = write_jsonl(root.parent / f"train{n}.jsonl", rows)
    assert main(["-q", "pool", "add", str(root), str(data), "--partition-by", "domain"]) == 0
    assert fake_grow(pool) == n
    return pool


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    rows = [
        {"text": " ".join(rng.choice(WORDS[d]) for _ in range(20)), "domain": d}
        for d in ("code", "wiki")
    ]
    return write_jsonl(tmp_path_factory.mktemp("evalscale") / "eval.jsonl", rows)


@pytest.fixture(scope="module")
def pool128(tmp_path_factory, full_pool_dir) -> Pool:
    return _many_pool(tmp_path_factory.mktemp("p128") / "pool", full_pool_dir / "base", 128)


def test_enumeration_is_lazy_and_exact():
    assert count_subsets(30, 2) == 465
    assert count_subsets(128) == 2**128 - 1
    first = list(zip(range(3), iter_subsets(128, 4), strict=False))  # nothing of size 2^128
    assert [s for _, s in first] == [(0,), (1,), (2,)]
    assert len(gray_subsets(30, 2)) == 465
    with pytest.raises(AblateError, match=r"2\^30 - 1 = 1,073,741,823 mixtures.*--max-size 4"):
        gray_subsets(30)
    space = SearchSpace(tuple(f"p{i:03d}" for i in range(128)), require=("p005",), max_size=3)
    assert space.size == 1 + 127 + math.comb(127, 2)  # required alone, plus one or two more
    assert sum(1 for _ in space.iter_subsets()) == space.size
    assert space.size > MAX_ALL_SUBSETS or len(space.subsets()) == space.size


def test_128_partitions_eval_and_every_strategy(pool128, eval_file, capsys):
    pool = pool128
    assert len(pool.partitions) == 128
    parts = list(pool.partitions)
    mixture = ",".join(parts[::4])  # 32 members
    args = ["-q", "eval", str(pool.path), "--eval-data", str(eval_file), "--eval-by", "domain"]
    assert main([*args, "--mixture", mixture, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["domain"] for r in rows} >= {"code", "wiki"}
    assert main([*args, "--all-subsets"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2^128 - 1" in err[0] and "--max-size 2 (8,256 mixtures)" in err[0]

    ev = Evaluator(pool, eval_file, by="domain", store=False, progress=False)
    budget = 6
    for name, info in sorted(STRATEGIES.items()):
        continuous = "subsets" not in info.spaces
        kw = {"max_size": None if continuous else 4, "continuous": continuous}
        study = search(ev, strategy=name, budget=budget, seed=1, heldout=0.0, **kw)
        assert 1 <= len(study.trials) <= budget, name
        assert study.best is not None and study.best.score > 0, name
        if not continuous:
            assert all(len(t.mixture.names) <= 4 for t in study.trials), name
    with pytest.raises(AblateError, match="cap it with --evaluations"):
        search(ev, strategy="exhaustive", max_size=4)
    wide = Mixture.of({p: i + 1.0 for i, p in enumerate(parts)})
    assert wide.brief().endswith(" (+120 more)")
    assert wide.brief().startswith("p127:") and len(wide.brief()) < 120  # reports stay readable


def test_30_partitions_max_size_2_scores_465_mixtures(tmp_path, full_pool_dir, eval_file, capsys):
    pool = _many_pool(tmp_path / "pool", full_pool_dir / "base", 30)
    capsys.readouterr()  # what `pool add` printed
    args = ["-q", "eval", str(pool.path), "--eval-data", str(eval_file), "--eval-by", "domain"]
    assert main([*args, "--all-subsets", "--max-size", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len({json.dumps(r["mixture"], sort_keys=True) for r in rows}) == 465
    assert main([*args, "--all-subsets"]) == 2
    err = capsys.readouterr().err
    assert "1,073,741,823 mixtures" in err and "--max-size 4 (31,930 mixtures)" in err
