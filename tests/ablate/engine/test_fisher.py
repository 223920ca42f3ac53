"""The Fisher merges (``--merge fisher|fisher_tensor|fisher_damped``): exact in the cases
that can be worked out by hand, in memory and streamed, and wired through the evaluator,
validation and the CLI without touching the plain average's behaviour or keys."""

from __future__ import annotations

import pytest
import torch
from support import merge_lora_members, run_cli, write_member_stat

from ablate import Evaluator, Mixture
from ablate.engine.merge import MergedModel
from ablate.engine.merges import MERGES, POOL_MERGES
from ablate.objective import Target
from ablate.pool import Pool
from ablate.pool.errors import AblateError, PoolError
from ablate.pool.fisher import ensure_fisher
from ablate.pool.storage import FISHER
from ablate.pool.weights import load_tensors
from ablate.strategies.gradient import mixture_gradient

CPU = torch.device("cpu")
BUDGETS = (None, 1)  # the stack in memory, then streamed chunk by chunk


def _write_fisher(pool: Pool, fisher_of) -> None:
    """Give every member a hand-made statistic: ``fisher_of(row, name, weight) -> tensor``."""
    write_member_stat(pool, FISHER, fisher_of, sequences=1, mean=1.0)


def _models(pool: Pool, merge: str):
    from ablate.engine.layout import MemberLayout

    layout = MemberLayout(pool, merge=merge)
    for budget in BUDGETS:
        yield MergedModel(
            pool,
            layout.members,
            device=CPU,
            progress=False,
            stack_budget_bytes=budget,
            layout=layout,
        )


def test_pool_merges_are_registered():
    assert set(POOL_MERGES) <= set(MERGES) and POOL_MERGES[0] == "average"
    assert MERGES["average"].linear and not MERGES["fisher"].linear
    assert MERGES["fisher"].statistic == "fisher" and MERGES["average"].statistic is None
    assert MERGES["regmean"].statistic == "gram" and not MERGES["regmean"].linear


def test_two_members_by_hand_and_the_fallback_where_no_member_has_curvature(full_pool):
    """F_a = 1, F_b = 3 everywhere: theta = (w_a theta_a + 3 w_b theta_b) / (w_a + 3 w_b);
    in model.norm.weight both are 0, so there it is the plain average."""
    a, b = 0, len(full_pool.members) - 1
    fisher = {a: 1.0, b: 3.0}

    def fisher_of(i, name, t):
        if name == "model.norm.weight" or i not in fisher:
            return torch.zeros_like(t)
        return torch.full_like(t, fisher[i])

    _write_fisher(full_pool, fisher_of)
    ta, tb = (load_tensors(full_pool.weights_path(full_pool.members[i])) for i in (a, b))
    w = torch.zeros(len(full_pool.members))
    w[a], w[b] = 0.25, 0.75
    for m in _models(full_pool, "fisher"):
        m.merge(w)
        got = dict(m.model.named_parameters())
        for name in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
            want = (0.25 * ta[name] + 3 * 0.75 * tb[name]) / (0.25 + 3 * 0.75)
            torch.testing.assert_close(got[name], want, atol=1e-6, rtol=1e-5)
        avg = 0.25 * ta["model.norm.weight"] + 0.75 * tb["model.norm.weight"]
        torch.testing.assert_close(got["model.norm.weight"], avg, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(
            got["lm_head.weight"], 0.25 * ta["lm_head.weight"] + 0.75 * tb["lm_head.weight"]
        )


def test_damped_fisher_by_hand_in_memory_and_streamed(full_pool):
    """fisher_damped: each member's Fisher over its tensor's mean, plus 1. Member a's Fisher
    is 1 on the first half of a tensor and 3 on the rest (mean 2: precision 1.5 and 2.5),
    member b's a constant (precision 2), so theta = (w_a d_a theta_a + 2 w_b theta_b) /
    (w_a d_a + 2 w_b); fisher_tensor on the same Fisher (0.5 and 1.5 against 1) differs."""
    a, b = 0, len(full_pool.members) - 1

    def fisher_of(i, name, t):
        if i != a:
            return torch.full_like(t, 7.0)
        f = torch.full((t.numel(),), 3.0)
        f[: t.numel() // 2] = 1.0
        return f.view_as(t)

    _write_fisher(full_pool, fisher_of)
    ta, tb = (load_tensors(full_pool.weights_path(full_pool.members[i])) for i in (a, b))
    w = torch.zeros(len(full_pool.members))
    w[a], w[b] = 0.25, 0.75
    name = "model.layers.0.self_attn.q_proj.weight"
    half = torch.arange(ta[name].numel()).view_as(ta[name]) < ta[name].numel() // 2
    for merge, low, high, other in (
        ("fisher_damped", 1.5, 2.5, 2.0),
        ("fisher_tensor", 0.5, 1.5, 1.0),
    ):
        d_a = torch.where(half, low, high)
        want = (0.25 * d_a * ta[name] + 0.75 * other * tb[name]) / (0.25 * d_a + 0.75 * other)
        for m in _models(full_pool, merge):
            m.merge(w)
            got = dict(m.model.named_parameters())[name]
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
            assert not torch.allclose(got, 0.25 * ta[name] + 0.75 * tb[name])


def test_equal_fisher_is_the_average_and_one_member_is_that_member(full_pool):
    """Equal (random, per parameter) Fisher for every member gives the plain average; for
    fisher_tensor and fisher_damped, a different constant per member and tensor does too
    (scaled to mean 1)."""
    g = torch.Generator().manual_seed(0)
    shared = {}

    def equal(i, name, t):
        if name not in shared:
            shared[name] = torch.rand(t.shape, generator=g)
        return shared[name]

    n = len(full_pool.members)
    w = torch.tensor([0.1 + i for i in range(n)])
    w /= w.sum()
    for merge, fisher_of in (
        ("fisher", equal),
        ("fisher_tensor", lambda i, name, t: torch.full_like(t, float(1 + i + len(name)))),
        ("fisher_damped", lambda i, name, t: torch.full_like(t, float(1 + i + len(name)))),
    ):
        _write_fisher(full_pool, fisher_of)
        for m in _models(full_pool, merge):
            m.merge(w, method=MERGES["average"]())
            avg = m.flat.clone()
            m.merge(w)
            torch.testing.assert_close(m.flat, avg, atol=1e-6, rtol=1e-5)
            for row in range(n):
                one = torch.zeros(n)
                one[row] = 1.0
                m.merge(one)
                assert torch.equal(m.flat, m.member_row(row))  # exactly, not within rounding


@pytest.mark.parametrize("merge", ["fisher", "fisher_damped"])
def test_lora_pools_weigh_each_members_update_by_its_fisher(lora_pool_dir, tmp_path, merge):
    """For LoRA, each adapted weight is W0 + sum_i w_i F_i (s B_i A_i) / sum_i w_i F_i with F_i
    the member's Fisher of that weight (fisher_damped: scaled to mean 1 per member and
    weight, plus 1), worked out here from the members' effective weights; every other
    parameter stays the seed's; a one-member mixture is that member."""
    import shutil

    from ablate.pool.fisher import load_fisher

    shutil.copytree(lora_pool_dir, tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    ensure_fisher(pool, batches=1, progress=False)
    m, w, got, full = merge_lora_members(pool, merge)
    n = len(w)
    seed = {k: p.detach() for k, p in pool.load_base_model().named_parameters()}
    fishers = [load_fisher(pool, r) for r in m.members]
    assert fishers[0]
    for name in fishers[0]:
        f = [fi[name].double() for fi in fishers]
        if merge == "fisher_damped":
            f = [fi / fi.mean() + 1.0 for fi in f]
        den = sum(float(w[i]) * f[i] for i in range(n))
        num = sum(float(w[i]) * f[i] * (full[i][name] - seed[name]).double() for i in range(n))
        want = seed[name].double() + num / den
        torch.testing.assert_close(got[name].double(), want, rtol=1e-4, atol=1e-6)
        avg = seed[name] + sum(float(w[i]) * (full[i][name] - seed[name]) for i in range(n))
        assert not torch.allclose(got[name], avg, atol=1e-7)
    untouched = [k for k in seed if k not in fishers[0]]
    assert untouched and all(torch.equal(got[k], seed[k]) for k in untouched)
    one = torch.zeros(n)
    one[1] = 1.0
    m.merge(one)
    for name in fishers[0]:
        torch.testing.assert_close(m.model.get_parameter(name), full[1][name], rtol=1e-5, atol=1e-6)


def test_evaluator_merge_keys_walks_and_results(full_pool, corpus):
    """--merge fisher scores other models than the average under other keys; the average's
    results and keys are those of a pool without Fisher; uniform subsets are merged one by
    one (the running-sum walk computes averages only); the gradient search refuses."""
    ev_avg = Evaluator(full_pool, corpus["eval"], by="domain", progress=False)
    mixes = [Mixture.uniform(["code", "wiki"]), Mixture.of({"code": 0.2, "math": 0.8})]
    before = {m.key: ev_avg.pool_key(m) for m in mixes}
    plain = ev_avg.evaluate_many(mixes)
    with pytest.raises(PoolError, match="ablate pool fisher"):
        Evaluator(full_pool, corpus["eval"], by="domain", progress=False, merge="fisher")
    ensure_fisher(full_pool, batches=1, progress=False)
    ev = Evaluator(full_pool, corpus["eval"], by="domain", progress=False, merge="fisher")
    assert ev.layout.walk_order(mixes) == ([], mixes)
    fisher = ev.evaluate_many(mixes)
    assert all(ev.pool_key(m) != before[m.key] for m in mixes)
    assert {
        m.key: Evaluator(full_pool, corpus["eval"], by="domain").pool_key(m) for m in mixes
    } == before
    assert not (fisher["ppl"].to_numpy() == plain["ppl"].to_numpy()).all()
    again = Evaluator(full_pool, corpus["eval"], by="domain", progress=False).evaluate_many(mixes)
    assert (again["ppl"].to_numpy() == plain["ppl"].to_numpy()).all()  # stored, untouched
    ev.merged.load(mixes[0])
    direct = ev.score_current()
    assert direct["code"].nll == pytest.approx(ev.evaluate(mixes[0]).scores["code"].nll, rel=1e-6)
    with pytest.raises(AblateError, match="plain average"):
        mixture_gradient(ev, mixes[0], Target.parse("macro"))
    with pytest.raises(AblateError, match="--merge"):
        Evaluator(full_pool, corpus["eval"], merge="median")


def test_cli_merge_option_and_its_one_line_errors(full_pool, lora_pool_dir, corpus):
    path = full_pool.path
    args = ("--eval-data", corpus["eval"], "--eval-by", "domain", "--mixture", "code,wiki")
    r = run_cli("eval", path, *args, "--merge", "fisher")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("ablate: error:")
    assert f"ablate pool fisher {path}" in lines[0]
    r = run_cli("eval", lora_pool_dir, *args, "--merge", "fisher")
    lines = r.stderr.strip().splitlines()
    assert (
        r.returncode == 2 and len(lines) == 1 and f"ablate pool fisher {lora_pool_dir}" in lines[0]
    )
    assert run_cli("pool", "fisher", path, "--batches", "1").returncode == 0
    out = {}
    for merge in ("average", "fisher"):
        r = run_cli("eval", path, *args, "--merge", merge, "--json")
        assert r.returncode == 0, r.stderr
        out[merge] = r.stdout
    assert out["average"] != out["fisher"]


def test_validate_scores_the_evaluators_merge_and_records_it(full_pool, corpus, tmp_path):
    """Validation's proxies are the evaluator's merge: a one-unit mixture's Fisher proxy is
    its member, which is its real model; --extrapolate does not combine with it (refused
    before training)."""
    from ablate.mixture import MixtureError
    from ablate.validation import validate

    ensure_fisher(full_pool, batches=1, progress=False)
    ev = Evaluator(
        full_pool, corpus["eval"], by="domain", store=False, progress=False, merge="fisher"
    )
    with pytest.raises(MixtureError, match="not the fisher merge"):
        validate(ev, mixtures=["code,wiki"], extrapolate=1.5)
    assert not (full_pool.path / "validation").exists()
    single = next(n for n, p in full_pool.partitions.items() if len(p.index.units) == 1)
    mixes = [Mixture.uniform([single]), Mixture.parse("code=1,math=3")]
    report = validate(ev, mixtures=mixes, bootstrap=0)
    assert report.merge == "fisher" and report.json()["merge"] == "fisher"
    rows = report.pairs[report.pairs["mixture"] == single]
    assert rows["real"].to_numpy() == pytest.approx(rows["proxy"].to_numpy(), rel=1e-5)
    plain = validate(
        Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False),
        mixtures=mixes,
        bootstrap=0,
    )
    assert plain.trained == 0 and plain.merge == "average"  # the same real models
    assert (plain.pairs["real"] == report.pairs["real"]).all()
    assert not (plain.pairs["proxy"] == report.pairs["proxy"]).all()
    assert "merged by fisher" in report.write(tmp_path / "v").markdown.read_text()


def test_export_writes_the_evaluators_merge_and_says_so(full_pool, corpus, tmp_path):
    import json

    from ablate.export import MERGE_RECORD

    ensure_fisher(full_pool, batches=1, progress=False)
    mix = Mixture.of({"code": 0.3, "wiki": 0.7})
    ev = Evaluator(
        full_pool, corpus["eval"], by="domain", store=False, progress=False, merge="fisher"
    )
    out = ev.export(mix, tmp_path / "fisher")
    assert json.loads((out / MERGE_RECORD).read_text())["merge"] == "fisher"
    plain = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    assert "merge" not in json.loads(
        (plain.export(mix, tmp_path / "avg") / MERGE_RECORD).read_text()
    )
    got = load_tensors(out / "model.safetensors")
    ev.merged.load(mix)
    for name, p in ev.merged.model.named_parameters():
        if name in got:
            torch.testing.assert_close(got[name], p.detach(), atol=0, rtol=0)


def test_the_verdict_suggests_the_fisher_merge_after_the_average_only():
    from ablate.validation.report import FIX_AVERAGE, macro_verdict

    low = macro_verdict(0.4, 0.9, 0.05, 2, fix=FIX_AVERAGE)
    assert "NOT trustworthy" in low and "ablate pool fisher" in low and "\n" not in low
    assert "--merge fisher_damped" in low and "--member-seed-share" not in low
    assert "ablate pool gram" in low and "--merge regmean" in low
    assert "--member-preconditioner seed" in low
    assert "ablate pool fisher" not in macro_verdict(0.4, 0.9, 0.05, 2)  # after a Fisher merge


@pytest.mark.ray
def test_ray_actors_merge_by_the_evaluators_merge(ray_session, full_pool, corpus):
    ensure_fisher(full_pool, batches=1, progress=False)
    mixes = [Mixture.uniform(["code", "wiki"]), Mixture.of({"code": 0.2, "math": 0.8})]
    kw = {"by": "domain", "store": False, "progress": False, "merge": "fisher"}
    local = Evaluator(full_pool, corpus["eval"], **kw).evaluate_many(mixes)
    with Evaluator(full_pool, corpus["eval"], executor="ray", workers=1, **kw) as ev:
        remote = ev.evaluate_many(mixes)
    assert remote["ppl"].to_numpy() == pytest.approx(local["ppl"].to_numpy(), rel=1e-5)
