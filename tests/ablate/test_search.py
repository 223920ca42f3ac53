"""Mixture search: every strategy honours the contract and finds the known optimum.

The session pool has disjoint-vocabulary domains (code, wiki, math), so for the target
"code" the best subset is {code} by construction; other optima are computed by the
exhaustive strategy and compared against.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import eval_cli_args

from ablate import AblateError, Evaluator, Mixture, Study, search
from ablate.cli import main
from ablate.strategies import STRATEGIES, SearchContext, SearchSpace, Target, mixture_gradient
from ablate.strategies.driver import split_evaluators

SUBSET_TOL = 0.0  # subset spaces are small enough that every strategy must hit the optimum
WEIGHT_TOL = 0.05  # weight spaces: within 5% of the best subset's perplexity (target "code")
WEIGHT_BUDGET = 20  # TPE, the weakest here, stays within 3.4% of the optimum over 8 seeds at 20


def _store_rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(DISTINCT mixture_key) FROM results").fetchone()[0]


@pytest.fixture(scope="module")
def ev(full_pool_dir, corpus, tmp_path_factory):
    store = tmp_path_factory.mktemp("search") / "store.sqlite"
    return Evaluator(full_pool_dir, corpus["eval"], by="domain", store=store, progress=False)


@pytest.fixture(scope="module")
def truth(ev) -> dict[str, Study]:
    """Exhaustive studies: the ground truth the other strategies are held to."""
    return {t: search(ev, target=t, strategy="exhaustive") for t in ("code", "macro")}


def _spaces(name: str) -> list[bool]:
    return [kind == "weights" for kind in STRATEGIES[name].spaces]


# ---------------------------------------------------------------------- spaces and targets
def test_target_parse():
    assert Target.parse("macro").weights is None
    assert Target.parse("code").weights == (("code", 1.0),)
    assert Target.parse("wiki,code").weights == (("code", 0.5), ("wiki", 0.5))
    t = Target.parse("weighted:code=3,wiki=1")
    assert t.weights == (("code", 0.75), ("wiki", 0.25))
    assert t.score({"code": 10.0, "wiki": 20.0, "math": 99.0}) == pytest.approx(12.5)
    assert Target.parse("macro").score({"a": 1.0, "b": 3.0}) == 2.0
    for bad, msg in [
        ("", "empty"),
        ("weighted:code=x", "not a number"),
        ("code,code", "distinct"),
        ("weighted:code=-1", ">= 0"),
        ("weighted:code", "DOMAIN=W"),
    ]:
        with pytest.raises(AblateError, match=msg):
            Target.parse(bad)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    data=st.data(),
)
def test_subset_space_is_a_gray_walk_of_feasible_mixtures(n, data):
    parts = tuple(f"p{i}" for i in range(n))
    require = data.draw(st.sets(st.sampled_from(parts), max_size=2))
    rest = [p for p in parts if p not in require]
    exclude = data.draw(st.sets(st.sampled_from(rest), max_size=2)) if rest else set()
    max_size = data.draw(st.none() | st.integers(max(1, len(require)), n))
    try:
        space = SearchSpace(parts, tuple(require), tuple(exclude), max_size)
    except AblateError:
        assume_empty = not (set(parts) - set(exclude))
        assert assume_empty
        return
    subsets = space.subsets()
    brute = sum(
        space.feasible([p for i, p in enumerate(parts) if mask >> i & 1]) for mask in range(1, 2**n)
    )
    assert len(subsets) == space.size == brute
    assert len({m.key for m in subsets}) == len(subsets)
    assert all(space.contains(m) for m in subsets)
    full = SearchSpace(parts, tuple(require), tuple(exclude)).subsets()
    if space.free_limit == len(space.free):
        assert subsets == full
        for a, b in zip(subsets, subsets[1:], strict=False):
            assert len(set(a.names) ^ set(b.names)) == 1  # one member changes per step
    else:  # --max-size keeps the walk's order, skipping the larger subsets
        assert subsets == [m for m in full if len(m.names) <= max_size]
    w = data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    cont = SearchSpace(parts, tuple(require), tuple(exclude), max_size, continuous=True)
    assert cont.contains(cont.project(dict(zip(parts, w, strict=True))))


def test_space_errors(ev):
    with pytest.raises(AblateError, match="both required and excluded"):
        search(ev, strategy="exhaustive", require=["code"], exclude=["code"])
    with pytest.raises(AblateError, match="unknown partition"):
        search(ev, strategy="exhaustive", exclude=["nope"])
    with pytest.raises(AblateError, match="add --continuous"):
        search(ev, strategy="gradient")
    with pytest.raises(AblateError, match="drop --continuous"):
        search(ev, strategy="exhaustive", continuous=True)
    with pytest.raises(AblateError, match="lacks"):
        search(ev, target="poetry", strategy="random")
    with pytest.raises(AblateError, match="has none"):
        search(ev, strategy="random", storage="sqlite:///x.db")
    with pytest.raises(AblateError, match="unknown search strategy"):
        search(ev, strategy="annealing")


# ---------------------------------------------------------------------- exhaustive
def test_exhaustive_is_the_gray_walk(ev, truth, full_pool_dir, corpus):
    study = truth["code"]
    assert [t.mixture for t in study.trials] == ev.all_subsets()
    assert study.best.mixture == Mixture.uniform(["code"])  # disjoint vocabularies
    plain = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    for t, r in zip(study.trials, plain.run_many(ev.all_subsets()), strict=True):
        assert t.score == pytest.approx(r.ppl["code"], rel=1e-5)
    frame = study.frame
    assert list(frame["score"]) == sorted(frame["score"]) and frame.index[0] == 1
    assert frame.iloc[0]["mixture"] == "code"


def test_member_rules(ev):
    study = search(ev, target="macro", strategy="exhaustive", require=["code"], max_size=2)
    assert {str(t.mixture) for t in study.trials} == {"code", "code+math", "code+wiki"}
    study = search(ev, target="macro", strategy="exhaustive", exclude=["wiki"])
    assert {str(t.mixture) for t in study.trials} == {"code", "math", "code+math"}


# ---------------------------------------------------------------------- every strategy
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_finds_the_optimum(name, ev, truth):
    for continuous in _spaces(name):
        if continuous:
            best = truth["code"].best.score  # the vertex {code}
            study = search(
                ev, target="code", strategy=name, continuous=True, budget=WEIGHT_BUDGET, seed=0
            )
            tol = WEIGHT_TOL
        else:
            best = truth["macro"].best.score
            study = search(ev, target="macro", strategy=name, budget=7, seed=0)
            tol = SUBSET_TOL
        assert 1 <= study.evaluations <= (WEIGHT_BUDGET if continuous else 7)
        assert study.best.score <= best * (1 + tol) + 1e-9, (name, continuous, study.best)
        # the contract: distinct mixtures, all in the space, best is the minimum of the frame
        keys = [t.mixture.key for t in study.trials]
        assert len(set(keys)) == len(keys)
        assert all(study.space.contains(t.mixture) for t in study.trials)
        assert study.best.score == study.frame["score"].min()
        assert [t.evaluation for t in study.trials] == list(range(1, study.evaluations + 1))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_resumed_search_scores_nothing_new(name, full_pool_dir, corpus, tmp_path, monkeypatch):
    store = tmp_path / "store.sqlite"
    continuous = _spaces(name)[-1]
    kw = dict(target="wiki", strategy=name, continuous=continuous, budget=4, seed=3)
    first = search(
        Evaluator(full_pool_dir, corpus["eval"], by="domain", store=store, progress=False), **kw
    )
    assert _store_rows(store) == first.evaluations >= 1
    from ablate.engine.scoring import Scorer

    monkeypatch.setattr(Scorer, "score", lambda self: pytest.fail(f"{name} re-scored a mixture"))
    again = search(
        Evaluator(full_pool_dir, corpus["eval"], by="domain", store=store, progress=False), **kw
    )
    assert [t.mixture for t in again.trials] == [t.mixture for t in first.trials]
    assert all(t.result.cached for t in again.trials)
    assert again.best == first.best
    assert _store_rows(store) == first.evaluations


# ---------------------------------------------------------------------- gradient
def test_gradient_matches_finite_differences(full_pool_dir, corpus):
    ev = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    w = {"code": 0.2, "math": 0.5, "wiki": 0.3}
    target = Target.parse("weighted:code=1,wiki=3")
    g = mixture_gradient(ev, Mixture.of(w), target)
    eps = 1e-3
    for a, b in [("code", "math"), ("wiki", "code")]:
        up, down = dict(w), dict(w)
        up[a], up[b], down[a], down[b] = w[a] + eps, w[b] - eps, w[a] - eps, w[b] + eps
        fd = (target.score(ev.evaluate(up).ppl) - target.score(ev.evaluate(down).ppl)) / (2 * eps)
        # the directional derivative along e_a - e_b (the simplex's tangent)
        assert g[a] - g[b] == pytest.approx(fd, rel=0.05, abs=0.05)


def test_gradient_needs_a_full_pool():
    from ablate.pool import METHODS

    lora = SimpleNamespace(pool=SimpleNamespace(method=METHODS["lora"]))
    space = SearchSpace(("a", "b"), continuous=True)
    ctx = SearchContext(lora, space, Target.parse("macro"), budget=3, seed=0)  # type: ignore[arg-type]
    with pytest.raises(AblateError, match="full-weight pool; this pool is LoRA"):
        STRATEGIES["gradient"].factory(ctx)


# ---------------------------------------------------------------------- study outputs
def test_heldout_split(ev):
    auto = search(ev, target="macro", strategy="exhaustive", max_size=1)
    assert auto.heldout == 0 and auto.best.heldout_score is None
    assert "no held-out split" in auto.notes[0]  # 3 docs per domain: too few by default
    study = search(ev, target="macro", strategy="exhaustive", max_size=1, heldout=0.34)
    assert study.heldout == pytest.approx(3 / 9)
    b = study.best
    assert b.heldout_score is not None and math.isfinite(b.heldout_score)
    assert b.heldout_score == pytest.approx(Target.parse("macro").score(b.heldout_ppl))
    assert b.heldout_score != b.score  # other documents, another number
    search_ev, held_ev, _ = split_evaluators(ev, 0.34, seed=0)
    assert len(search_ev.eval_set.docs) + len(held_ev.eval_set.docs) == len(ev.eval_set.docs)
    assert not {d.tobytes() for d in search_ev.eval_set.docs} & {
        d.tobytes() for d in held_ev.eval_set.docs
    }
    assert search_ev.merged is ev.merged and held_ev.merged is ev.merged  # members load once


def test_pareto_and_plot(ev, tmp_path):
    study = search(ev, target="code,wiki", strategy="exhaustive")
    front = study.pareto(["code", "wiki"])
    pts = study.frame[["ppl:code", "ppl:wiki"]].to_numpy()
    for c, w in front[["ppl:code", "ppl:wiki"]].to_numpy():
        assert not any(x <= c and y <= w and (x < c or y < w) for x, y in pts)
    on_front = {tuple(r) for r in front[["ppl:code", "ppl:wiki"]].to_numpy()}
    for c, w in pts:
        if (c, w) not in on_front:
            assert any(x <= c and y <= w for x, y in on_front)
    assert "code" in set(front["mixture"]) and "wiki" in set(front["mixture"])
    other = search(ev, target="code,wiki", strategy="random", budget=5, seed=1)
    fig = study.plot(tmp_path / "search.png", compare=[other])
    assert (tmp_path / "search.png").stat().st_size > 1000
    progress, pareto = fig.axes[:2]
    assert progress.get_xlabel() and progress.get_ylabel() and progress.get_title()
    assert pareto.get_xlabel() == "code perplexity" and pareto.get_title() == "Pareto front"
    assert len(progress.get_legend().get_texts()) == 2  # one line per strategy


def test_missing_extra_names_the_install_command(monkeypatch, ev):
    from ablate import extras

    monkeypatch.setattr(extras, "has_module", lambda name: name != "optuna")
    with pytest.raises(AblateError, match=r"pip install 'ablate-sim\[search\]'"):
        search(ev, strategy="tpe", budget=2)


# ---------------------------------------------------------------------- CLI
def test_cli_table_and_errors(full_pool, corpus, capsys):
    args = ["-q", *eval_cli_args("search", full_pool.path, corpus["eval"])]
    assert main([*args, "--target", "code", "--strategy", "greedy"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == ["1", "code"]
    assert "best (code): code" in out and "no held-out split" in out
    assert main([*args, "--target", "poetry", "--strategy", "greedy"]) == 2
    assert "ablate: error: --target names eval domain(s) poetry" in capsys.readouterr().err


def test_every_proposal_is_observed_even_when_the_loop_stops():
    """A strategy that only repeats itself is stopped, but its last proposal is still answered.

    A shared Optuna study otherwise keeps that trial RUNNING, and another worker that drew
    the same mixture waits for it (this hung the two-worker test once).
    """
    from ablate.strategies import driver

    mix = Mixture.uniform(["code"])
    result = SimpleNamespace(mixture=mix, ppl={"code": 2.0}, tasks={})  # an EvalResult's fields

    class Repeater:
        proposed = observed = 0

        def propose(self, n):
            self.proposed += 1
            return [mix]

        def observe(self, trials):
            self.observed += 1

    ctx = SimpleNamespace(
        budget=5,
        space=SimpleNamespace(contains=lambda m: True),
        evaluator=SimpleNamespace(run_many=lambda ms, progress: [result for _ in ms]),
        target=SimpleNamespace(score=lambda ppl, tasks: ppl["code"]),
    )
    plan = Repeater()
    trials = driver._loop(plan, ctx, progress=False)  # noqa: SLF001
    assert len(trials) == 1
    assert plan.proposed == 1 + driver._MAX_STALLS  # noqa: SLF001  one new, then only repeats
    assert plan.observed == plan.proposed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_exited_unreaped_worker_counts_as_dead():
    """A worker process that exited but was not reaped yet (a zombie) is not waited for."""
    import socket
    import time

    from ablate.strategies._optuna import _is_dead_local

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    worker = f"{socket.gethostname()}:{proc.pid}"
    try:
        deadline = time.monotonic() + 60
        while not _is_dead_local(worker):  # never poll(): that would reap it
            assert time.monotonic() < deadline, "an exited child never counted as dead"
            time.sleep(0.05)
        with open(f"/proc/{proc.pid}/stat") as f:
            assert f.read().rpartition(")")[2].split()[0] == "Z"  # still there, as a zombie
    finally:
        proc.wait()
    assert _is_dead_local(worker)
    assert not _is_dead_local(f"{socket.gethostname()}:{__import__('os').getpid()}")


def test_cli_json_and_workers_sharing_an_optuna_study(full_pool, corpus, tmp_path):
    """Two `ablate search --storage` processes share one TPE study and never score a mixture twice."""
    import optuna

    db = f"sqlite:///{tmp_path / 'study.db'}"
    cmd = [
        sys.executable, "-m", "ablate.cli", "-q", "search", str(full_pool.path), "--eval-data",
        str(corpus["eval"]), "--eval-by", "domain", "--target", "code", "--strategy", "tpe",
        "--evaluations", "5", "--storage", db, "--json",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        rec = json.loads(out)
        assert set(rec) == {"best", "evaluations", "strategy"}
        assert set(rec["best"]) == {"mixture", "score", "heldout_score"}
        assert rec["strategy"] == "tpe" and 1 <= rec["evaluations"] <= 5
        assert rec["best"]["heldout_score"] is None
        assert math.isclose(sum(rec["best"]["mixture"].values()), 1.0)
        assert rec["best"]["score"] > 1
    (summary,) = optuna.get_all_study_summaries(db)
    trials = optuna.load_study(study_name=summary.study_name, storage=db).trials
    scored = [t.user_attrs["mixture"] for t in trials if t.user_attrs.get("scored")]
    assert len(scored) == len(set(scored))  # no mixture was scored by both workers
    assert len({t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}) == 2
    assert _store_rows(full_pool.path / "results.sqlite") == len(scored)


# ---------------------------------------------------------------------- output paths
def test_save_figure_writes_by_suffix_atomically(tmp_path):
    from matplotlib.figure import Figure

    from ablate.present.heatmap import save_figure

    fig = Figure()
    fig.subplots().plot([1, 2], [3, 4])
    assert save_figure(fig, tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in save_figure(fig, tmp_path / "a.SVG").read_bytes()[:500]
    assert save_figure(fig, tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
    assert save_figure(fig, tmp_path / "plain").read_bytes()[:4] == b"\x89PNG"  # no suffix: PNG
    with pytest.raises(ValueError, match="not supported"):
        save_figure(fig, tmp_path / "a.xyz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.SVG", "a.pdf", "a.png", "plain"]


def _plot_cases(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    return {
        "missing folder": (tmp_path / "nosuch" / "s.png", "does not exist; create it"),
        "bad suffix": (tmp_path / "s.txt", "cannot write a .txt image; end the name with one of"),
        "folder": (tmp_path / "dir", "is a folder; name an image file"),
        "file as folder": (tmp_path / "file.txt" / "s.png", "is a file, not a folder"),
    }


@pytest.mark.parametrize("case", ["missing folder", "bad suffix", "folder", "file as folder"])
def test_cli_plot_path_is_checked_before_any_work(case, tmp_path, capsys):
    path, says = _plot_cases(tmp_path)[case]
    # The pool does not exist: were the pool opened first, the error would name it instead.
    args = eval_cli_args("search", tmp_path / "no-pool", tmp_path / "no-eval.jsonl")
    assert main(["-q", *args, "--plot", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ablate: error: --plot {path}"), lines
    assert says in lines[0]
    assert not (tmp_path / "nosuch").exists()
