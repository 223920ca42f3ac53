"""The merges kept in ``benchmarks/probe_merges.py`` (measured on the fidelity suite, not
adopted) compute what their docstrings say, so that a rerun measures those merges: the
damping probe at 1 is the shipped ``fisher_damped``, the weight power at 1 too, and the
Adam-consistent merge is worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from support import load_benchmark, write_member_stat

from ablate.engine.layout import MemberLayout
from ablate.engine.merge import MergedModel
from ablate.pool.storage import FISHER
from ablate.pool.weights import load_tensors

NAME = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def probes():
    return load_benchmark("probe_merges")


def _model(pool, merge: str = "fisher_damped") -> MergedModel:
    layout = MemberLayout(pool, merge=merge)
    return MergedModel(
        pool, layout.members, device=torch.device("cpu"), progress=False, layout=layout
    )


def _merged(model: MergedModel, weights: torch.Tensor, method=None) -> dict[str, torch.Tensor]:
    model.merge(weights, method=method)
    return {k: v.detach().clone() for k, v in model.model.named_parameters()}


def _fisher(pool, fisher_of) -> None:
    write_member_stat(pool, FISHER, fisher_of, sequences=1, mean=1.0)


def test_damping_one_and_power_one_are_the_shipped_default_and_others_differ(probes, full_pool):
    def fisher_of(i, name, t):  # uneven within each tensor and between members
        g = torch.Generator().manual_seed(i * 7919 + len(name))
        return torch.rand(t.shape, generator=g) ** (3 + i)

    _fisher(full_pool, fisher_of)
    model = _model(full_pool)
    n = len(model.members)
    w = torch.linspace(1.0, 2.0, n)
    w /= w.sum()
    shipped = _merged(model, w)
    for method in (probes.Damped(1.0), probes.WeightPower(1.0)):
        got = _merged(model, w, method)
        for k in shipped:
            torch.testing.assert_close(got[k], shipped[k], rtol=1e-5, atol=1e-6)
    tensor = _merged(_model(full_pool, "fisher_tensor"), w)
    torch.testing.assert_close(_merged(model, w, probes.Damped(0.0))[NAME], tensor[NAME])
    sharp = w**2 / (w**2).sum()
    torch.testing.assert_close(
        _merged(model, w, probes.WeightPower(2.0))[NAME], _merged(model, sharp)[NAME]
    )
    assert not torch.allclose(_merged(model, w, probes.Damped(3.0))[NAME], shipped[NAME])


def test_the_scaled_step_is_the_default_at_one_and_twice_its_step_at_two(probes, full_pool):
    _fisher(full_pool, lambda i, name, t: torch.rand(t.shape) + i)
    model = _model(full_pool)
    w = torch.linspace(1.0, 3.0, len(model.members))
    w /= w.sum()
    shipped = _merged(model, w)
    seed = {k: v.detach() for k, v in full_pool.load_base_model().named_parameters()}
    torch.testing.assert_close(_merged(model, w, probes.Scaled(1.0))[NAME], shipped[NAME])
    twice = _merged(model, w, probes.Scaled(2.0))
    for k in (NAME, "model.norm.weight"):
        want = seed[k] + 2 * (shipped[k] - seed[k])
        torch.testing.assert_close(twice[k], want, rtol=1e-5, atol=1e-6)


def test_the_adam_consistent_merge_by_hand(probes, full_pool):
    """Member a alone has Fisher 4 on a tensor's first half, both have 1 and 9 on the rest:
    the first half moves sqrt(w_a) of a's way from the seed, the rest w_j sqrt(F_j) d_j /
    sqrt(sum w F); a tensor no member has Fisher on is the plain average; one member is
    that member; equal Fisher is the plain average."""
    a, b = 0, len(full_pool.members) - 1

    def fisher_of(i, name, t):
        if name == "model.norm.weight" or i not in (a, b):
            return torch.zeros_like(t)
        f = torch.full((t.numel(),), 1.0 if i == a else 9.0)
        if i == a:
            f[: t.numel() // 2] = 4.0
        else:
            f[: t.numel() // 2] = 0.0
        return f.view_as(t)

    _fisher(full_pool, fisher_of)
    model = _model(full_pool)
    seed = {k: v.detach() for k, v in full_pool.load_base_model().named_parameters()}
    ta, tb = (load_tensors(full_pool.weights_path(full_pool.members[i])) for i in (a, b))
    w = torch.zeros(len(model.members))
    w[a], w[b] = 0.25, 0.75
    got = _merged(model, w, probes.AdamConsistent())
    da, db = (ta[NAME] - seed[NAME]).flatten(), (tb[NAME] - seed[NAME]).flatten()
    half = da.numel() // 2
    want = torch.empty_like(da)
    want[:half] = math.sqrt(0.25) * da[:half]
    den = math.sqrt(0.25 * 1 + 0.75 * 9)
    want[half:] = (0.25 * 1 * da[half:] + 0.75 * 3 * db[half:]) / den
    torch.testing.assert_close(
        got[NAME].flatten(), seed[NAME].flatten() + want, rtol=1e-4, atol=1e-6
    )
    avg = 0.25 * ta["model.norm.weight"] + 0.75 * tb["model.norm.weight"]
    torch.testing.assert_close(got["model.norm.weight"], avg, rtol=1e-5, atol=1e-6)
    one = torch.zeros(len(model.members))
    one[b] = 1.0
    assert torch.equal(_merged(model, one, probes.AdamConsistent())[NAME], tb[NAME])
    _fisher(full_pool, lambda i, name, t: torch.full_like(t, 2.0))
    even = _merged(_model(full_pool), w, probes.AdamConsistent())
    torch.testing.assert_close(even[NAME], 0.25 * ta[NAME] + 0.75 * tb[NAME], rtol=1e-5, atol=1e-6)


def test_the_disjoint_mean_follows_the_elected_side_where_members_disagree(probes, full_pool):
    """With even Fisher: where every member steps the same way, ``ties:1`` is the shipped
    merge; where they disagree it steps the way the weights elect, at least as far as the
    shipped merge; one member is that member exactly; ``ties:K`` leaves the seed's value
    wherever every member's step falls outside its largest fraction K."""
    _fisher(full_pool, lambda i, name, t: torch.full_like(t, 2.0))
    model = _model(full_pool)
    n = len(model.members)
    w = torch.linspace(1.0, 3.0, n)
    w /= w.sum()
    theta0 = probes._seed(model)
    steps = model.stack - theta0
    model.merge(w)
    shipped = model.flat.clone() - theta0
    model.merge(w, method=probes.Disjoint(1.0))
    got = model.flat.clone() - theta0
    signs = torch.sign(steps)
    agree = (signs == signs[0]).all(0) & (signs[0] != 0)
    contested = ~agree & (shipped != 0)
    assert agree.any() and contested.sum() > 100
    torch.testing.assert_close(got[agree], shipped[agree], rtol=1e-5, atol=1e-7)
    assert torch.equal(torch.sign(got[contested]), torch.sign(shipped[contested]))
    assert (got[contested].abs() >= shipped[contested].abs() - 1e-7).all()
    assert (got[contested].abs() > 1.5 * shipped[contested].abs()).float().mean() > 0.3
    model.merge(w, method=probes.Disjoint(1.0, dissent=1.0))
    torch.testing.assert_close(model.flat - theta0, shipped, rtol=1e-5, atol=1e-7)
    model.merge(w, method=probes.Disjoint(1.0, dissent=0.5))
    half = (model.flat - theta0)[contested]
    assert (half.abs() <= got[contested].abs() + 1e-7).all()
    assert (half.abs() >= shipped[contested].abs() - 1e-7).all()
    assert not torch.allclose(half, got[contested])
    one = torch.zeros(n)
    one[1] = 1.0
    model.merge(one, method=probes.Disjoint(1.0))
    assert torch.equal(model.flat, model.stack[1])
    model.merge(w, method=probes.Disjoint(0.1))
    trimmed = model.flat - theta0
    top = torch.zeros_like(agree)
    for row in steps.abs():
        top |= row >= row.kthvalue(row.numel() - round(0.1 * row.numel()) + 1).values
    assert torch.equal(trimmed[~top], torch.zeros_like(trimmed[~top]))
    assert (trimmed[top] != 0).float().mean() > 0.9


def test_a_soup_of_identical_twins_is_the_shipped_merge(probes, full_pool_dir, tmp_path):
    """``soup:VARIANT`` reads the twin pool beside the cell's own (as ``bench_fidelity.py``
    lays cells out), averages twin members and their precisions: twins grown alike give the
    shipped merge; a twin pool that is not built is named with the command that builds it."""
    import argparse
    import shutil

    cell = tmp_path / "cell"
    for name in ("precond", "twin"):
        shutil.copytree(full_pool_dir, cell / name)
    ns = argparse.Namespace(fisher_batches=16, method="full")
    model = _model(probes.bench.merge_pool(cell, "precond", "fisher_damped", ns))
    w = torch.linspace(1.0, 3.0, len(model.members))
    w /= w.sum()
    shipped = _merged(model, w)
    soup = _merged(model, w, probes.Soup("twin"))
    for k in shipped:
        torch.testing.assert_close(soup[k], shipped[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit, match="--variants elsewhere"):
        model.merge(w, method=probes.Soup("elsewhere"))


def test_exposure_reads_each_member_at_its_weights_share_of_the_unit(probes):
    """``exposure:K``: member j enters the merge as ``theta_0 + s_j(w_j) / w_j``, read off
    the grid of short members linearly (from 0 below its first fraction); steps that grow
    in proportion to the tokens make every member itself (the default merge), and equal
    precisions make the plain sum of the steps after each partition's share."""
    fractions = (0.25, 0.5, 1.0)
    g = torch.Generator().manual_seed(5)
    theta0 = torch.randn(7, generator=g)
    steps = torch.randn(3, 2, 7, generator=g)  # (fractions, members, parameters)
    w = torch.tensor([0.375, 0.625])
    rows = probes.exposure_rows(fractions, steps, theta0, w)
    a, b, _ = steps[:, 0]
    torch.testing.assert_close(rows[0], theta0 + (a + 0.5 * (b - a)) / 0.375)
    b1, c1 = steps[1:, 1]
    torch.testing.assert_close(rows[1], theta0 + (b1 + 0.25 * (c1 - b1)) / 0.625)
    small = probes.exposure_rows(fractions, steps, theta0, torch.tensor([0.1, 0.0]))
    torch.testing.assert_close(small[0], theta0 + 4 * a)  # below 1/4: 0.1 / 0.25 of its step
    torch.testing.assert_close(small[1], theta0)  # no weight, no step

    full = torch.randn(2, 7, generator=g)
    linear = torch.tensor(fractions)[:, None, None] * full  # s_j(f) = f * s_j(1)
    torch.testing.assert_close(probes.exposure_rows(fractions, linear, theta0, w), theta0 + full)
    flat = torch.ones(2, 7)
    merged = probes.precision_mean(rows, flat, w)
    by_hand = theta0 + (a + 0.5 * (b - a)) + (b1 + 0.25 * (c1 - b1))
    torch.testing.assert_close(merged, by_hand)


def test_probe_names_are_checked(probes):
    assert isinstance(probes.probe("power:0.7"), probes.WeightPower)
    assert isinstance(probes.probe("adam"), probes.AdamConsistent)
    assert probes.probe("damping:2").damping == 2.0
    assert probes.probe("scale:1.5").scale == 1.5
    assert probes.probe("ties:0.2").density == 0.2
    assert probes.probe("dissent:0.5").dissent == 0.5
    assert probes.probe("soup:precond_ms2").variant == "precond_ms2"
    assert probes.probe("exposure:8").finest == 8 and not probes.probe("exposure:8").plain
    assert probes.probe("sum:4").plain
    for bad in (
        "power",
        "damping:x",
        "adam:1",
        "scale",
        "median",
        "ties:0",
        "ties:1.5",
        "dissent:2",
        "exposure:3",
        "exposure:1",
        "sum",
    ):
        with pytest.raises(Exception, match="unknown probe"):
            probes.probe(bad)
