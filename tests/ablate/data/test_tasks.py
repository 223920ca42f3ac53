"""Multiple-choice tasks: scoring conventions, parity with a plain forward, the store, search
targets and bad task files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from support import WORDS, domain_evaluator, eval_cli_args, run_cli, tree_digest, write_jsonl


def _items() -> list[dict]:
    """Six items: a snippet of one synthetic domain, continued by words of each domain."""
    out = []
    for i, dom in enumerate(["code", "wiki", "math"] * 2):
        ctx = " ".join(WORDS[dom][(i + k) % 10] for k in range(6))
        choices = [" ".join(WORDS[d][(i + k) % 10] for k in range(3)) for d in WORDS]
        out.append({"context": ctx, "choices": choices, "gold": list(WORDS).index(dom), "id": i})
    out[0]["fewshot"] = "def return import\n"
    return out


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("task") / "qa.jsonl", _items())


def test_metrics_by_hand():
    """acc = lowest NLL; acc_norm = lowest NLL per byte of the choice; gold_nll; ties -> first."""
    from ablate.engine.scores import TaskScore

    s = TaskScore(
        "t",
        choice_nll=np.array([2.0, 4.0, 1.0, 3.0, 0.5, 5.0, 5.0]),
        offsets=np.array([0, 2, 5, 7]),
        gold=np.array([1, 0, 0]),
        choice_bytes=np.array([1.0, 4.0, 2.0, 1.0, 3.0, 1.0, 1.0]),
    )
    # item 0: argmin nll = 0 (wrong); per byte 2.0 vs 1.0 -> 1 (right)
    # item 1: argmin nll = 2 (wrong); per byte 0.5, 3.0, 0.1667 -> 2 (wrong)
    # item 2: a tie 5.0 / 5.0 -> the first, 0 (right), also per byte
    assert s.correct.tolist() == [False, False, True]
    assert s.correct_norm.tolist() == [True, False, True]
    assert s.acc == pytest.approx(1 / 3) and s.acc_norm == pytest.approx(2 / 3)
    assert s.gold_nll == pytest.approx((4.0 + 1.0 + 5.0) / 3)
    lo, hi = s.intervals()["acc"]
    assert 0.0 <= lo <= 1 / 3 <= hi <= 1.0
    row = s.row({"a": 1.0})
    assert row["task"] == "t" and row["n"] == 3 and row["mixture"] == {"a": 1.0}


def _plain_choice_nll(model, tokenizer, item: dict, context: int) -> list[float]:
    """Summed NLL of each choice by a plain forward pass with full logits (the sequence
    cut from the left to ``context`` inputs, as lm-evaluation-harness does)."""
    import torch

    ctx = item.get("fewshot", "") + item["context"]
    ids = tokenizer(ctx, add_special_tokens=False)["input_ids"]
    out = []
    for c in item["choices"]:
        whole = tokenizer(ctx + " " + c, add_special_tokens=False)["input_ids"]
        assert whole[: len(ids)] == ids  # no merge across the boundary in this example
        seq = torch.tensor([[tokenizer.bos_token_id, *whole][-(context + 1) :]])
        with torch.no_grad():
            logits = model(input_ids=seq.to(model.device)).logits[0, :-1].cpu()
            logp = torch.log_softmax(logits.double(), -1)
        k = len(whole) - len(ids)
        tgt = seq[0, 1:]
        out.append(-float(logp[-k:].gather(1, tgt[-k:, None]).sum()))
    return out


def test_scores_match_plain_forward_and_store_reuse(full_pool_dir, corpus, task_file, tmp_path):
    """TaskScorer (fused, batched) equals a plain transformers forward; a second evaluator
    reads the task scores from the store; a changed task file is scored again."""
    store = tmp_path / "results.sqlite"
    ev = domain_evaluator(full_pool_dir, corpus, tasks=[task_file], store=store)
    r = ev.evaluate("code,wiki")
    s = r.tasks["qa"]
    assert s.n == 6 and not s.cached
    ctx = ev.pool.manifest.context  # 32: the longest items are cut from the left
    plain = [
        x
        for item in _items()
        for x in _plain_choice_nll(ev.merged.model, ev.pool.tokenizer, item, ctx)
    ]
    np.testing.assert_allclose(s.choice_nll, plain, rtol=1e-5)
    assert s.acc == np.mean(
        [np.argmin(plain[3 * i : 3 * i + 3]) == it["gold"] for i, it in enumerate(_items())]
    )

    again = domain_evaluator(full_pool_dir, corpus, tasks=[task_file], store=store)
    hit = again.evaluate("code,wiki").tasks["qa"]
    assert hit.cached and np.array_equal(hit.choice_nll, s.choice_nll)

    changed = write_jsonl(tmp_path / "qa.jsonl", _items()[:4])
    fresh = domain_evaluator(full_pool_dir, corpus, tasks=[f"qa={changed}"], store=store)
    assert not fresh.evaluate("code,wiki").tasks["qa"].cached


def test_tasks_are_scored_in_the_executors_walk_without_merging_again(
    full_pool_dir, corpus, task_file, monkeypatch
):
    """Task items are scored on the weights the walk just produced: every subset of the
    pool and one weighted mixture cost one merge (the weighted one), and each task score
    equals that mixture merged and scored on its own."""
    from ablate.engine.merge import MergedModel

    ev = domain_evaluator(full_pool_dir, corpus, tasks=[task_file])
    merges = []
    real = MergedModel.merge
    monkeypatch.setattr(
        MergedModel, "merge", lambda self, *a, **k: merges.append(1) or real(self, *a, **k)
    )
    mixtures = [*ev.all_subsets(), "code=0.25,wiki=0.75"]
    results = ev.run_many(mixtures)
    assert len(merges) == 1
    monkeypatch.setattr(MergedModel, "merge", real)
    alone = domain_evaluator(full_pool_dir, corpus, tasks=[task_file])
    for r in results:
        one = alone.evaluate(r.mixture).tasks["qa"]
        np.testing.assert_allclose(r.tasks["qa"].choice_nll, one.choice_nll, rtol=1e-5)


def test_task_search_targets(full_pool_dir, corpus, task_file):
    """task:NAME maximises accuracy; weighted combines task loss and perplexity."""
    from ablate import search
    from ablate.strategies.space import Target

    ev = domain_evaluator(full_pool_dir, corpus, tasks=[f"qa={task_file}"])
    study = search(ev, target="task:qa", strategy="exhaustive", heldout=0)
    results = ev.run_many(ev.all_subsets())
    best_acc = max(r.tasks["qa"].acc for r in results)
    assert study.best.score == pytest.approx(100 * (1 - best_acc))
    assert study.frame["acc:qa"].iloc[0] == pytest.approx(best_acc)

    t = Target.parse("weighted:code=1,task:qa:acc_norm=3")
    r = results[0]
    want = (r.ppl["code"] + 3 * 100 * (1 - r.tasks["qa"].acc_norm)) / 4
    assert t.score(r.ppl, r.tasks) == pytest.approx(want)
    assert Target.parse("task:qa:gold_nll").score({}, r.tasks) == pytest.approx(
        r.tasks["qa"].gold_nll
    )
    with pytest.raises(Exception, match="add --task FILE"):
        search(ev, target="task:nope", strategy="random", budget=2)
    with pytest.raises(Exception, match="METRIC"):
        Target.parse("task:qa:f1")


class _CharTokenizer:
    """One token per character (code point + 10); no BOS, EOS as given."""

    bos_token_id = None

    def __init__(self, eos):
        self.eos_token_id = eos

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) + 10 for c in text]}


def test_empty_context_without_bos_starts_from_eos():
    from pathlib import Path

    from ablate.data.evalset import IGNORE
    from ablate.data.tasks import Task, TaskItem
    from ablate.pool.errors import DataError

    task = Task("t", Path("t.jsonl"), (TaskItem("", ("ab", "c"), 0, "q"),), "fp")
    w = task.windows(_CharTokenizer(eos=1), 16, 0)  # crashed on a broadcast before
    assert sorted((w.targets != IGNORE).sum(1).tolist()) == [2, 3]  # " ab", " c": all scored
    assert (w.inputs[:, 0] == 1).all()  # each choice is predicted from EOS
    with pytest.raises(DataError, match="context is empty"):
        task.windows(_CharTokenizer(eos=None), 16, 0)


BAD = [
    ({"context": "a", "choices": ["x", "y"]}, "no 'gold'"),
    ({"context": "a", "choices": ["x"], "gold": 0}, "needs at least 2"),
    ({"context": "a", "choices": ["x", "y"], "gold": 2}, "out of range for 2 choices"),
]


@pytest.mark.parametrize("line,message", BAD)
def test_bad_task_lines(full_pool_dir, tmp_path, line, message):
    from ablate.data.tasks import Task
    from ablate.pool import Pool
    from ablate.pool.errors import DataError

    path = write_jsonl(tmp_path / "bad.jsonl", [_items()[0], line])
    with pytest.raises(DataError, match=message) as e:
        Task.load(Pool.open(full_pool_dir), path)
    assert "line 2" in str(e.value) and "\n" not in str(e.value)


def test_cli_task_json_and_bad_file(full_pool, corpus, task_file, tmp_path):
    """--json carries one "task" object per mixture x task; a bad task file is one line,
    exit 2, before anything is written."""
    args = eval_cli_args("eval", full_pool.path, corpus["eval"], "--mixture", "code,wiki")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["x", "y"], "gold": 5}])
    before = tree_digest(full_pool.path)
    r = run_cli(*args, "--task", task_file, "--task", bad, "--json")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "gold 5 is out of range" in lines[0]
    assert tree_digest(full_pool.path) == before
    r = run_cli(*args, "--task", task_file, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    tasks = [x for x in rows if "task" in x]
    assert len(tasks) == 1 and tasks[0]["task"] == "qa" and tasks[0]["n"] == 6
    assert 0 <= tasks[0]["acc"] <= 1 and math.isfinite(tasks[0]["gold_nll"])
    assert tasks[0]["mixture"] == {"code": 0.5, "wiki": 0.5}


def test_validate_reports_task_correlations_and_too_few_items(full_pool, corpus, task_file):
    """Proxy vs real per (task, metric); six items are too few, and the note says how many."""
    from ablate import validate

    ev = domain_evaluator(full_pool, corpus, tasks=[task_file])
    report = validate(ev, mixtures=["code", "wiki", "code,wiki"], bootstrap=0)
    t = report.tasks
    assert set(t.index) == {("qa", m) for m in ("acc", "acc_norm", "gold_nll")}
    assert (t["n"] == 3).all() and (t["items"] == 6).all()
    proxy = [ev.evaluate(m).tasks["qa"] for m in ("code", "wiki", "code,wiki")]
    for metric in ("acc", "gold_nll"):  # the proxy's task scores are the evaluator's
        want = np.mean([s.metric(metric) for s in proxy])
        assert t.loc[("qa", metric), "proxy_mean"] == pytest.approx(want, rel=1e-6)
    assert len(report.task_notes) == 1 and "task qa: 6 items are too few" in report.task_notes[0]
    assert "it needs" in report.task_notes[0]
    doc = report.json()
    assert {r["metric"] for r in doc["tasks"]} == {"acc", "acc_norm", "gold_nll"}
    assert "## Tasks" in report._markdown("t") and "note: task qa" in report.decisions_text()
    # Real models' task scores are stored with them: a rerun whose models kept no weights
    # (keep_weights=False drops them after the first) reports the same table.
    for _ in range(2):
        again = validate(
            ev, mixtures=["code", "wiki", "code,wiki"], bootstrap=0, keep_weights=False
        )
        assert again.trained == 0
        assert again.tasks["real_mean"].to_numpy() == pytest.approx(t["real_mean"].to_numpy())
    assert not any(
        (full_pool.path / "validation" / r.key / r.weights_file).exists() for r in again.records
    )


def test_demo_task_picks_the_true_next_word_among_four():
    from ablate.demo import continuation_task

    docs = [
        {"text": " ".join(f"w{d}x{i}" for i in range(120)), "domain": f"d{d % 2}"} for d in range(5)
    ]
    items = continuation_task(docs)
    assert len(items) == 15  # three per document
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        doc = next(d["text"] for d in docs if it["context"] in d["text"])
        assert it["context"] + " " + it["choices"][it["gold"]] in doc  # the true text
        assert sum(f" {c} " in doc for c in it["choices"]) == 1  # the others: other docs


def test_a_task_on_which_real_models_do_not_differ_says_so():
    """Every real model answers alike (sd 0): the note says the task cannot rank these
    mixtures instead of quoting a noise level and an item count that mean nothing."""
    from ablate.engine.scores import TaskScore
    from ablate.validation.tasks import task_table

    def score(nll):  # 4 items of 2 choices; gold is choice 0
        return TaskScore(
            "qa",
            np.array(nll, dtype=np.float64),
            np.arange(0, 9, 2),
            np.zeros(4, dtype=np.int64),
            np.ones(8, dtype=np.int64),
        )

    same = [1.0, 2.0] * 4  # every item right, by the same margin, for every model
    proxy = [{"qa": score(same)} for _ in range(3)]
    real = [[{"qa": score(same)}] for _ in range(3)]
    _, notes = task_table(proxy, real)
    assert len(notes) == 1 and "do not differ" in notes[0] and "nan" not in notes[0]
