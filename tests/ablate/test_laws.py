"""Mixture laws: runs tables, the shared surrogate family, capped proposals, multi-fidelity.

Synthetic tables with a known law (Ye et al.'s exponential law) check that a fit recovers
it; bad tables go through the real CLI (one ``ablate: error:`` line, exit 2); the regression
strategy and ``MixtureLaw.fit`` must predict the same numbers from the same runs.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("sklearn")

from ablate import Evaluator, Mixture, MixtureLaw, __version__, validate  # noqa: E402
from ablate.cli import main  # noqa: E402
from ablate.laws import Constraints, read_runs  # noqa: E402
from ablate.laws.propose import cap_rows  # noqa: E402
from ablate.pool.errors import AblateError  # noqa: E402
from ablate.strategies import STRATEGIES, SearchContext, SearchSpace, Target, Trial, search  # noqa: E402

PARTS = ("arxiv", "code", "web", "wiki")
T = np.array([-1.2, 0.4, -2.0, 0.8])  # the known law's exponents, one per partition
C, K = 1.5, 2.0  # loss = C + K * exp(T . w)


def true_loss(x: np.ndarray) -> np.ndarray:
    return C + K * np.exp(x @ T)


def synthetic(m: int, seed: int, acc: bool = False) -> pd.DataFrame:
    """``m`` runs over PARTS (Dirichlet weights, some partitions absent) and their loss
    (and an accuracy, 1 / loss)."""
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.ones(len(PARTS)), size=m) * (rng.random((m, len(PARTS))) > 0.2)
    x[x.sum(1) == 0, 0] = 1.0
    x /= x.sum(1, keepdims=True)
    frame = pd.DataFrame(x, columns=list(PARTS))
    frame["loss"] = true_loss(x)
    if acc:
        frame["acc"] = 1.0 / frame["loss"]
    return frame


# ---------------------------------------------------------------------- fit and predict
def test_fit_recovers_a_known_law():
    law = MixtureLaw.fit(synthetic(120, 0), "loss", features="exp")
    test = synthetic(40, 1)
    pred = law.predict(test)
    assert np.abs(pred / test["loss"].to_numpy() - 1).max() < 1e-3
    assert law.cv_spearman > 0.99 and law.cv_spearman_interval[0] > 0.98
    assert law.partitions == tuple(sorted(PARTS))
    # auto tries the whole family and keeps the lowest k-fold error: the true law here
    auto = MixtureLaw.fit(synthetic(120, 0), "loss")
    assert set(auto.kfold_mse) == {"linear", "quadratic", "gbm", "exp"}
    assert auto.surrogate.kind == "exp"
    assert auto.cv_error == pytest.approx(np.sqrt(auto.kfold_mse["exp"]))
    # one mixture, notation, mapping and array give the same prediction
    one = law.predict("arxiv=0.5,web=0.5")[0]
    assert one == pytest.approx(law.predict({"web": 1, "arxiv": 1})[0])
    assert one == pytest.approx(law.predict(np.array([[0.5, 0, 0.5, 0]]))[0])
    assert one == pytest.approx(true_loss(np.array([0.5, 0, 0.5, 0])), rel=1e-3)


def test_higher_is_better_and_mixture_column():
    frame = synthetic(80, 2, acc=True)
    frame["mixture"] = [
        ",".join(f"{p}={float(w)!r}" for p, w in zip(PARTS, row, strict=True) if w > 0)
        for row in frame[list(PARTS)].to_numpy()
    ]
    table = frame[["mixture", "acc"]]
    law = MixtureLaw.fit(table, "acc", higher_is_better=True, features="weights+pairs")
    assert law.transform == "none" and law.surrogate.kind == "quadratic"
    best = law.propose(1)
    # the known law is best on all web (the most negative exponent): accuracy is maximised
    assert best.loc[0, "web"] > 0.9
    check = law.holdout(synthetic(30, 3, acc=True), weights=list(PARTS))
    assert check["spearman"] > 0.95 and check["pick_rank"] <= 2


def test_weights_off_one_are_normalised_with_a_warning(caplog):
    frame = synthetic(20, 4, acc=True)
    frame.loc[3, list(PARTS)] *= 2
    with pytest.raises(AblateError, match="name the weight columns with --weights"):
        read_runs(frame, ["loss"])  # guessed columns (acc among them) must sum to 1
    with caplog.at_level(logging.WARNING, logger="ablate.laws.table"):
        runs = read_runs(frame, ["loss"], weights=list(PARTS))
    assert "do not sum to 1" in caplog.text and "row 4" in caplog.text
    assert np.allclose(runs.weights.sum(1), 1)
    with pytest.raises(AblateError, match=r"unknown partition\(s\) 'wiki'"):
        read_runs(frame, ["loss"], weights=list(PARTS), partitions=["arxiv", "code", "web"])


# ---------------------------------------------------------------------- propose and caps
def test_propose_respects_caps():
    law = MixtureLaw.fit(synthetic(120, 0), "loss", features="exp")
    free = law.propose(1)
    assert free.loc[0, "web"] > 0.9  # uncapped, the law's best is (nearly) all web
    out = law.propose(4, Constraints({"web": 0.3, "arxiv": 0.25}))
    assert len(out) == 4 and list(out["rank"]) == [1, 2, 3, 4]
    w = out[list(law.partitions)].to_numpy()
    assert (w[:, law.partitions.index("web")] <= 0.3 + 1e-9).all()
    assert (w[:, law.partitions.index("arxiv")] <= 0.25 + 1e-9).all()
    assert np.allclose(w.sum(1), 1)
    assert (np.diff(out["predicted"].to_numpy()) >= 0).all()
    # capped, the best keeps web and arxiv at their caps and the rest goes to code (0.4 < 0.8)
    assert w[0, law.partitions.index("web")] == pytest.approx(0.3, abs=0.02)
    assert law.propose(1, {"web": 0.0}).loc[0, "web"] == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6).filter(lambda c: sum(c) >= 1),
    st.integers(0, 2**32 - 1),
)
def test_cap_rows_lands_on_the_capped_simplex(caps, seed):
    c = np.array(caps)
    x = cap_rows(np.random.default_rng(seed).dirichlet(np.ones(len(c)), size=20), c)
    assert np.allclose(x.sum(1), 1) and (x <= c + 1e-9).all() and (x >= 0).all()


def test_cap_rows_water_fills():
    rng = np.random.default_rng(0)
    caps = np.array([0.1, 0.5, 0.2, 1.0])
    x = cap_rows(rng.dirichlet(np.ones(4), size=500), caps)
    assert np.allclose(x.sum(1), 1) and (x <= caps + 1e-9).all() and (x >= 0).all()
    with pytest.raises(AblateError, match="raise some caps"):
        Constraints({"a": 0.2, "b": 0.2}).caps(["a", "b"])
    with pytest.raises(AblateError, match="unknown partition"):
        Constraints.parse("zzz=0.5").caps(PARTS)


# ---------------------------------------------------------------------- one surrogate
def _ctx(space: SearchSpace, also=None) -> SearchContext:
    return SearchContext(None, space, Target.parse("loss"), 40, 0, also=also)  # type: ignore[arg-type]


def test_strategy_and_fit_predict_the_same():
    frame = synthetic(30, 5)
    space = SearchSpace(PARTS, continuous=True)
    plan = STRATEGIES["regression"].factory(_ctx(space))
    mixtures = [Mixture.of(dict(zip(PARTS, r, strict=True))) for r in frame[list(PARTS)].to_numpy()]
    plan.observe(
        [
            Trial(m, float(y), None, i + 1)
            for i, (m, y) in enumerate(zip(mixtures, frame["loss"], strict=True))
        ]
    )  # type: ignore[arg-type]
    assert plan.propose(1)
    table = pd.DataFrame({"mixture": [m.key for m in mixtures], "loss": frame["loss"]})
    law = MixtureLaw.fit(table, "loss")
    assert plan.chosen[-1] == law.surrogate.kind
    x = synthetic(50, 6)[list(PARTS)].to_numpy()
    np.testing.assert_allclose(plan.predict(x), law.predict_fitted(x), rtol=1e-12, atol=1e-12)


def test_strategy_learns_from_real_runs():
    """With ``also``, the surrogate predicts at the real fidelity: a constant gap is learnt."""
    from ablate.laws import Runs

    space = SearchSpace(PARTS, continuous=True)
    real = synthetic(12, 7)
    x_real = real[list(PARTS)].to_numpy()
    runs = Runs(PARTS, x_real, {"loss": 1.5 * real["loss"].to_numpy()}, "real")
    plan = STRATEGIES["regression"].factory(_ctx(space, also=runs))
    proxy = synthetic(30, 8)
    plan.observe(
        [
            Trial(Mixture.of(dict(zip(PARTS, r, strict=True))), float(y), None, i + 1)  # type: ignore[arg-type]
            for i, (r, y) in enumerate(
                zip(proxy[list(PARTS)].to_numpy(), proxy["loss"], strict=True)
            )
        ]
    )
    plan.propose(1)
    x = synthetic(20, 9)[list(PARTS)].to_numpy()
    gap = plan.predict(x) - np.log(true_loss(x))
    assert abs(np.median(gap) - np.log(1.5)) < 0.1


# ---------------------------------------------------------------------- the CLI
def _write(tmp_path, frame: pd.DataFrame, name: str = "runs.csv") -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def test_cli_fit_predict_propose(tmp_path, capsys):
    runs = _write(tmp_path, synthetic(60, 0))
    cands = _write(tmp_path, synthetic(20, 1), "cands.csv")
    code = main(
        ["fit", runs, "--target", "loss", "--features", "exp", "--predict", cands]
        + ["--propose", "2", "--max-weight", "web=0.5", "--json"]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    (t,) = doc["targets"]
    assert t["law"]["surrogate"] == "exp" and doc["runs"] == 60
    assert doc["ablate_version"] == __version__  # which release fitted it
    assert t["check"]["n"] == 20 and t["check"]["spearman"] > 0.99 and t["check"]["pick_rank"] == 1
    assert len(t["predictions"]) == 20
    assert [p["rank"] for p in t["proposals"]] == [1, 2]
    assert all(p["weights"].get("web", 0) <= 0.5 + 1e-9 for p in t["proposals"])
    # the same law, for people
    assert main(["fit", runs, "--target", "loss", "--features", "exp", "--propose", "1"]) == 0
    out = capsys.readouterr().out
    assert "law of loss (lower is better) on 60 runs: exp" in out and "proposed mixtures" in out


@pytest.mark.parametrize(
    "change, args, message",
    [
        (lambda f: f, ["--target", "nope"], "--target 'nope' is not a column"),
        (lambda f: f.assign(code=-f["code"]), [], "is negative"),
        (lambda f: f.assign(loss=f["loss"].where(f.index != 2)), [], "row 3"),
        (lambda f: f.assign(loss2=f["loss"] * 3), [], "column 'loss2'"),
        (lambda f: f.assign(arxiv=0.0, code=0.0, web=0.0, wiki=0.0), [], "no positive weight"),
        (lambda f: f.head(3), [], "at least 4"),
        (lambda f: f, ["--propose", "1", "--max-weight", "zzz=0.2"], "unknown partition"),
        (lambda f: f, ["--max-weight", "web=0.2"], "add --propose N"),
        (lambda f: f, ["--weights", "w_*"], "matches no column"),
        (lambda f: f.drop(columns=list(PARTS)).assign(mixture="a=x"), [], "row 1"),
    ],
)
def test_cli_refuses_bad_tables(tmp_path, capsys, change, args, message):
    path = _write(tmp_path, change(synthetic(10, 0)))
    code = main(["fit", path, *(args if "--target" in args else ["--target", "loss", *args])])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("ablate: error:"), err
    assert message in err, err


def test_cli_joins_tables_like_regmix(tmp_path, capsys):
    """RegMix keeps mixtures and losses in two files joined by ``index``; Parquet reads too."""
    frame = synthetic(40, 0).rename(columns={p: f"train_{p}" for p in PARTS})
    frame.insert(0, "index", np.arange(40))
    mix = _write(tmp_path, frame.drop(columns="loss"), "mix.csv")
    loss = tmp_path / "loss.parquet"
    frame[["index", "loss"]].sample(frac=1, random_state=0).to_parquet(loss)  # any row order
    assert main(["fit", mix, str(loss), "--weights", "train_*", "--target", "loss", "--json"]) == 0
    law = json.loads(capsys.readouterr().out)["targets"][0]["law"]
    assert law["runs"] == 40 and law["partitions"] == [f"train_{p}" for p in sorted(PARTS)]
    frame[["index", "loss"]].head(30).to_parquet(loss)
    assert main(["fit", mix, str(loss), "--weights", "train_*", "--target", "loss"]) == 2
    assert "matched 30 of 40 and 30 rows" in capsys.readouterr().err


def test_cli_refuses_missing_and_foreign_files(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "none.csv"), "--target", "loss"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "runs.json").write_text("{}")
    assert main(["fit", str(tmp_path / "runs.json"), "--target", "loss"]) == 2
    assert ".csv, .tsv or .parquet" in capsys.readouterr().err


# ---------------------------------------------------------------------- pools: both fidelities
@pytest.fixture(scope="module")
def ev(full_pool_dir, corpus, tmp_path_factory):
    # A private copy: validate() trains real models into the pool, which the session's shared
    # pool must not hold (other modules count the models they train there).
    pool = tmp_path_factory.mktemp("laws") / "pool"
    shutil.copytree(full_pool_dir, pool)
    return Evaluator(pool, corpus["eval"], by="domain", progress=False)


def test_fit_from_proxies_and_real_models(ev):
    mixes = ["code", "code=0.7,wiki=0.3", "math,wiki", "code,math,wiki"]
    report = validate(ev, mixtures=mixes, bootstrap=0, progress=False)
    law = MixtureLaw.fit_from(ev, report, target="macro")
    f = law.fidelity
    assert (
        f is not None and f.real == 4 and f.proxies == 7 - 3 + 4
    )  # 7 subsets, 3 of them validated, + 4 validated
    assert list(f.comparison.index) == [
        "real alone",
        "proxies alone",
        "both: indicator",
        "both: offset",
    ]
    assert f.method in ("indicator", "offset")
    assert (
        f.comparison.loc[f"both: {f.method}", "loo_rmse"]
        == f.comparison.loc[["both: indicator", "both: offset"], "loo_rmse"].min()
    )
    pred = law.predict([Mixture.parse(m) for m in mixes])
    real = [
        report.pairs[report.pairs["mixture"] == str(Mixture.parse(m))]["real"].mean() for m in mixes
    ]
    assert np.all(np.abs(np.log(pred) - np.log(real)) < 1.0)  # the real scale, not the proxies'
    assert json.dumps(law.to_json())


def test_search_also_reads_real_runs(ev, tmp_path):
    runs = pd.DataFrame(
        {"mixture": ["code", "math,wiki", "code=0.2,wiki=0.8"], "code": [30.0, 80.0, 50.0]}
    )
    study = search(ev, target="code", strategy="regression", budget=6, also=runs, heldout=0)
    assert study.best is not None and len(study.trials) == 6
    assert any("3 real run(s)" in n for n in study.notes)
    with pytest.raises(AblateError, match="add --strategy regression"):
        search(ev, target="code", strategy="random", budget=2, also=runs)
    with pytest.raises(AblateError, match="no column 'code'"):
        search(
            ev,
            target="code",
            strategy="regression",
            budget=2,
            also=runs.rename(columns={"code": "x"}),
        )
