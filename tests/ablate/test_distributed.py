"""Scale-out: Ray growth and evaluation equal the local backend; locks; streamed merges.

Ray tests share one session-scoped local cluster (``ray_session`` in conftest: Ray startup
is the slow part) and skip cleanly where ray is not installed; the lock, chunked-merge and torchrun tests need no Ray.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from support import domain_evaluator, eval_cli_args, run_captured, run_cli

from ablate import Evaluator, Mixture, Pool


def test_import_ablate_loads_no_optional_heavyweight():
    """`import ablate` (and so `ablate --help`) stays fast: torch, Ray, Optuna, sklearn, pandas
    and matplotlib load on use (the CLI's modules included)."""
    heavy = "torch transformers ray optuna sklearn datasets pandas scipy matplotlib triton"
    code = (
        "import sys, ablate, ablate.cli, ablate.demo, ablate.export\n"
        f"print(sorted(set({heavy.split()!r}) & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _grow_cmd(pool: Path, *launcher: str) -> list[str]:
    """``ablate pool grow POOL --device cpu``, run by ``python -m`` or a launcher module."""
    prefix = ["-m", *launcher] if launcher else []
    return [
        sys.executable,
        *prefix,
        "-m",
        "ablate.cli",
        "-q",
        "pool",
        "grow",
        str(pool),
        "--device",
        "cpu",
    ]


def _fresh_copy(
    src: Path, dst: Path, drop: tuple[str, ...] | None = None, merge: str | None = None
) -> Pool:
    """A copy of a trained pool with members removed (all, or those of partitions ``drop``),
    its default merge set to ``merge`` if given."""
    shutil.copytree(src, dst)
    for p in (dst / "members").iterdir():
        if p.is_dir() and (drop is None or p.name in drop):
            shutil.rmtree(p)
    if merge is not None:
        manifest = json.loads((dst / "pool.json").read_text())
        (dst / "pool.json").write_text(json.dumps({**manifest, "merge": merge}))
    return Pool.open(dst)


def _grams_of_all(pool: Pool) -> bool:
    """Whether every member has its input Grams (what a regmean pool's grow computes)."""
    from ablate.pool.gram import gram_record

    return all(gram_record(pool, m) is not None for m in pool.members)


def _shas(pool: Pool) -> dict[str, str]:
    return {m.member_id: m.weights_sha256 for m in pool.members}


# ---------------------------------------------------------------------- growing
@pytest.mark.ray
def test_ray_grow_equals_local_grow(ray_session, full_pool_dir, tmp_path):
    """`ablate pool grow --backend ray`: same seeds, same bytes as the local backend."""
    from ablate.pool import grow_with_ray

    local = Pool.open(full_pool_dir)
    pool = _fresh_copy(full_pool_dir, tmp_path / "pool", drop=("math", "wiki"), merge="regmean")
    n = len(pool.missing())  # 4 of 8 members
    assert n >= 3
    address = ray_session.get_runtime_context().gcs_address  # join this cluster: no second startup
    proc = run_cli("pool", "grow", pool.path, "--backend", "ray", "--address", address)
    assert proc.returncode == 0, proc.stderr
    assert f"{n} member(s) trained" in proc.stdout
    assert _shas(pool) == _shas(local)  # sha256 of every member's weights
    assert pool.verify().ok
    assert _grams_of_all(pool)  # the pool's merge reads them: tasks and the driver made them
    assert grow_with_ray(pool, progress=False) == []  # nothing left: no task is even started


@pytest.mark.ray
def test_two_ray_grows_train_each_member_once(ray_session, full_pool_dir, tmp_path):
    """Two overlapping runs on one pool: the per-member lock lets exactly one train each member."""
    from ablate.pool import grow_with_ray

    pool = _fresh_copy(full_pool_dir, tmp_path / "pool", drop=("wiki",))
    want = sorted(u.member_id for u in pool.missing())
    assert len(want) >= 2
    results: list[list] = [[], []]

    def run(i: int) -> None:
        results[i] = grow_with_ray(pool.path, progress=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r.member_id for rs in results for r in rs]
    assert sorted(ids) == want  # the union, each once
    assert not pool.missing()
    written = {r.member_id: r.created_at for rs in results for r in rs}
    now = {m.member_id: m.created_at for m in pool.members if m.member_id in written}
    assert now == written  # the records on disk are the ones returned: never overwritten


def test_two_local_grows_train_each_member_once(full_pool_dir, tmp_path):
    """Two `ablate pool grow` processes at once: every member trained by exactly one of them."""
    pool = _fresh_copy(full_pool_dir, tmp_path / "pool", drop=("wiki",))
    want = sorted(u.member_id for u in pool.missing())
    cmd = _grow_cmd(pool.path)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        # 1 = "some member is still being trained by the other run" when this one ended first
        assert p.returncode in (0, 1), err
    trained = [
        line.split()[1].rstrip(":")
        for out, _ in outs
        for line in out.splitlines()
        if line.startswith("trained ")
    ]
    assert sorted(trained) == want  # the union, each once
    assert not pool.missing()
    assert _shas(pool) == _shas(Pool.open(full_pool_dir))


# ---------------------------------------------------------------------- evaluating
@pytest.fixture(scope="module")
def local_results(full_pool_dir, corpus):
    ev = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    mixtures = [*ev.all_subsets(), Mixture.parse("code=0.25,wiki=0.75")]
    return {r.mixture.key: r for r in ev.run_many(mixtures)}


def _assert_same(got, want) -> None:
    assert set(got.scores) == set(want.scores)
    for d, s in want.scores.items():
        assert got.scores[d].tokens == s.tokens
        assert got.scores[d].nll == pytest.approx(s.nll, rel=1e-5)


@pytest.mark.ray
def test_ray_executor_matches_local(ray_session, full_pool_dir, corpus, tmp_path, local_results):
    store = tmp_path / "results.sqlite"
    mixtures = [*Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False).all_subsets()]
    mixtures += [Mixture.parse("code=0.25,wiki=0.75"), mixtures[0]]  # a weighted one and a repeat
    with Evaluator(
        full_pool_dir,
        corpus["eval"],
        by="domain",
        executor="ray",
        workers=2,
        store=store,
        progress=False,
    ) as ev:
        results = ev.run_many(mixtures)
        assert [r.mixture for r in results] == mixtures  # input order, repeats answered too
        for r in results:
            assert not r.cached
            _assert_same(r, local_results[r.mixture.key])
        again = ev.run_many(mixtures[:3])  # the driver stored every score: no actor call now
        assert all(r.cached for r in again)
    assert len(Evaluator(full_pool_dir, corpus["eval"], by="domain", store=store).store) == len(
        local_results
    )


@pytest.mark.ray
def test_ray_actors_score_tasks_like_local(ray_session, full_pool_dir, corpus, tmp_path):
    """Task items scored by the actors (with a mixture, or alone for a stored mixture)
    equal the local executor's, and the driver stores them."""
    import numpy as np
    from support import write_jsonl

    items = [
        {"context": "the code", "choices": ["def", "wiki", "sum"], "gold": 0},
        {"context": "an article", "choices": ["about", "return"], "gold": 0},
        {"context": "", "choices": ["x", "y"], "gold": 1},
    ]
    quiz = write_jsonl(tmp_path / "quiz.jsonl", items)
    mixtures = ["code,wiki", "code=0.25,wiki=0.75", "math"]
    local = Evaluator(
        full_pool_dir, corpus["eval"], by="domain", store=False, progress=False, tasks=[quiz]
    )
    want = {r.mixture.key: r.tasks["quiz"] for r in local.run_many(mixtures)}
    store = tmp_path / "results.sqlite"
    kw = dict(by="domain", executor="ray", workers=1, store=store, progress=False)
    with Evaluator(full_pool_dir, corpus["eval"], **kw) as ev:
        ev.run_many(mixtures[:1])  # perplexity stored, no task yet
    with Evaluator(full_pool_dir, corpus["eval"], tasks=[quiz], **kw) as ev:
        got = ev.run_many(mixtures)  # the first: task alone; the others: with perplexity
        assert [r.cached for r in got] == [True, False, False]
        for r in got:
            s = r.tasks["quiz"]
            assert not s.cached
            np.testing.assert_allclose(s.choice_nll, want[r.mixture.key].choice_nll, rtol=1e-5)
        assert all(r.tasks["quiz"].cached for r in ev.run_many(mixtures))


@pytest.mark.ray
def test_cli_eval_backend_ray(ray_session, full_pool, corpus, local_results, capsys):
    import json

    from ablate.cli import main

    args = ["-q", *eval_cli_args("eval", full_pool.path, corpus["eval"])]
    assert main([*args, "--all-subsets", "--json", "--backend", "ray", "--workers", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len({json.dumps(r["mixture"], sort_keys=True) for r in rows}) == 7
    for row in rows:
        if row["domain"] != "macro":
            want = local_results[Mixture.of(row["mixture"]).key].scores[row["domain"]]
            assert row["nll"] == pytest.approx(want.nll, rel=1e-5)


def test_ray_missing_names_the_extra(monkeypatch):
    from ablate import AblateError
    from ablate.pool import distributed

    monkeypatch.setattr(distributed, "ray_available", lambda: False)
    with pytest.raises(AblateError, match=r"pip install 'ablate-sim\[ray\]'"):
        distributed.connect()


# ---------------------------------------------------------------------- streamed merges
def test_chunked_merge_equals_in_memory(full_pool_dir):
    """A tiny stack budget forces streaming from the memory-mapped members, chunk by chunk."""
    from ablate.engine.merge import MergedModel

    pool = Pool.open(full_pool_dir)
    members = pool.members
    cpu = torch.device("cpu")
    full = MergedModel(pool, members, device=cpu, progress=False)
    streamed = MergedModel(pool, members, device=cpu, progress=False, stack_budget_bytes=1)
    assert not full.chunked and streamed.chunked and streamed.stack is None
    assert (
        streamed.flat.numel() > 3 * streamed._stage.shape[1]
    )  # several chunks, tensors cut across
    weights = torch.linspace(-0.5, 1.5, len(members), dtype=torch.float32)  # extrapolation too
    full.merge(weights)
    streamed.merge(weights)
    torch.testing.assert_close(streamed.flat, full.flat, atol=1e-7, rtol=1e-6)
    sparse = torch.zeros(len(members))  # a subset: streaming reads only its members
    sparse[[0, len(members) - 1]] = 0.5
    full.merge(sparse)
    streamed.merge(sparse)
    torch.testing.assert_close(streamed.flat, full.flat, atol=1e-7, rtol=1e-6)
    streamed.merge(torch.zeros(len(members)))
    assert not streamed.flat.any()
    for r in range(len(members)):
        torch.testing.assert_close(streamed.member_row(r), full.member_row(r), atol=0, rtol=0)


def test_chunked_subset_walk_equals_in_memory(full_pool_dir, corpus, local_results):
    ev = domain_evaluator(full_pool_dir, corpus, stack_budget_bytes=1)
    assert ev.merged.chunked
    for r in ev.run_many([*ev.all_subsets(), Mixture.parse("code=0.25,wiki=0.75")]):
        _assert_same(r, local_results[r.mixture.key])


# ---------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_grow_two_processes(full_pool_dir, tmp_path):
    """Two CPU processes (gloo) train one member data-parallel; rank 0 alone writes it."""
    pool = _fresh_copy(full_pool_dir, tmp_path / "pool", drop=("math",), merge="regmean")
    proc = run_captured(
        _grow_cmd(pool.path, "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    )
    # the rank's own error comes first; torchrun's summary of who was killed, last
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    assert proc.stdout.count("trained math/0:") == 1
    (rec,) = [m for m in pool.members if m.partition == "math"]
    (ref,) = [m for m in Pool.open(full_pool_dir).members if m.partition == "math"]
    assert rec.tokens_seen == ref.tokens_seen and rec.steps == ref.steps
    # Same data order and update as one process, up to float summation order.
    assert rec.final_loss == pytest.approx(ref.final_loss, rel=1e-3)
    from ablate.pool.weights import load_tensors

    got, want = (
        load_tensors(pool.weights_path(rec)),
        load_tensors(Pool.open(full_pool_dir).weights_path(ref)),
    )
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, atol=1e-3, rtol=1e-3)
    assert not list((pool.path / "members" / "math").glob(".*.tmp"))
    assert _grams_of_all(pool)  # rank 0 computed what the pool's merge reads


@pytest.mark.ray
def test_search_with_a_heldout_split_and_validate_on_the_ray_executor(
    ray_session, full_pool, corpus
):
    """The executor is a detail of the evaluator: search (held-out split included, scored by
    the actors on another eval set) and validate give the local answers."""
    from ablate import search, validate

    kw = dict(target="macro", strategy="exhaustive", heldout=0.34, seed=0)
    local_ev = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    local = search(local_ev, **kw)
    with Evaluator(
        full_pool,
        corpus["eval"],
        by="domain",
        store=False,
        progress=False,
        executor="ray",
        workers=1,
    ) as ev:
        remote = search(ev, **kw)
        checked = validate(ev, mixtures=["code,wiki"], bootstrap=0)
    assert remote.heldout == pytest.approx(local.heldout) and remote.heldout > 0
    assert remote.best.mixture == local.best.mixture
    assert remote.best.score == pytest.approx(local.best.score, rel=1e-5)
    assert remote.best.heldout_score == pytest.approx(local.best.heldout_score, rel=1e-5)
    again = validate(local_ev, mixtures=["code,wiki"], bootstrap=0)  # the same real model
    assert again.trained == 0
    assert checked.pairs["proxy"].to_numpy() == pytest.approx(
        again.pairs["proxy"].to_numpy(), rel=1e-5
    )
    assert checked.pairs["real"].to_numpy() == pytest.approx(
        again.pairs["real"].to_numpy(), rel=1e-5
    )
