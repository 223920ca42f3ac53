"""Evaluator: the face users call (mixture checks, eval data, the eval command's JSON).

The rooms below it have their own tests: tests/ablate/engine/test_{layout,merge,scoring,results}.py.
"""

from __future__ import annotations

import json
import math

import pytest
from support import eval_cli_args, run_cli

from ablate import Evaluator, MixtureError


@pytest.fixture(scope="module")
def ev(full_pool_dir, corpus):
    return Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("code,nope", "unknown partition"),
        ("", "empty mixture"),
        ("code=nan", "must be finite"),
        ("code=1e400", "must be finite"),
        ("code=0,wiki=0", "positive weight"),
        ("code=-1,wiki=2", "negative"),
        ("../x", "path separator"),
    ],
)
def test_bad_mixtures_are_clear(ev, spec, message):
    with pytest.raises(MixtureError, match=message):
        ev.evaluate(spec)


def test_eval_by_missing_field(full_pool_dir, corpus):
    from ablate.pool.errors import DataError

    with pytest.raises(DataError, match="no field 'topic'"):
        Evaluator(full_pool_dir, corpus["eval"], by="topic", progress=False)


def test_cli_eval_json_schema(full_pool, corpus):
    args = eval_cli_args("eval", full_pool.path, corpus["eval"], "--all-subsets", "--max-size", 2)
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 6 * 4  # 6 subsets x (3 domains + macro)
    for row in rows:
        assert set(row) == {"mixture", "domain", "tokens", "nll", "ppl", "bpb"}
        assert math.isclose(sum(row["mixture"].values()), 1.0)
        if row["domain"] != "macro":
            assert row["ppl"] == pytest.approx(math.exp(row["nll"] / row["tokens"]))
    macro = [r for r in rows if r["domain"] == "macro"]
    assert len(macro) == 6
    # a repeated run reads the store and prints the same numbers
    r2 = run_cli(*args, "--json")
    assert json.loads(r2.stdout) == rows
    bad = run_cli("eval", full_pool.path, "--eval-data", corpus["eval"], "--mixture", "code,zzz")
    assert bad.returncode == 2 and "unknown partition(s) 'zzz'" in bad.stderr


def test_a_config_object_and_keywords_are_the_same(full_pool_dir, corpus):
    from ablate import EvaluatorConfig
    from ablate.pool.errors import AblateError

    cfg = EvaluatorConfig(by="domain", store=False, progress=False, batch_tokens=512)
    a = Evaluator(full_pool_dir, corpus["eval"], cfg)
    b = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False,
                  batch_tokens=512)  # fmt: skip
    c = Evaluator(full_pool_dir, corpus["eval"], cfg, batch_tokens=1024)  # a keyword overrides
    assert a.config == b.config and a.batch_tokens == b.batch_tokens == 512
    assert c.batch_tokens == 1024 and c.config.by == "domain" and a.store is None
    assert a.domains == b.domains
    with pytest.raises(TypeError, match="batch_token"):
        Evaluator(full_pool_dir, corpus["eval"], batch_token=1)
    with pytest.raises(AblateError, match="executor must be 'local' or 'ray'"):
        EvaluatorConfig(executor="slurm")
    assert EvaluatorConfig(tasks=["a.jsonl"]).tasks == ("a.jsonl",)  # frozen and hashable
