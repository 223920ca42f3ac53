"""The RegMean merge (``--merge regmean``): the least-squares fit it promises, checked against
a direct solve; the cases worked out by hand; in memory, streamed and for LoRA pools; wired
through the evaluator and the CLI with one-line errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from support import merge_lora_members, run_cli, write_member_stat

from ablate import Evaluator, Mixture
from ablate.engine.layout import MemberLayout
from ablate.engine.merge import MergedModel
from ablate.engine.merges import MERGES
from ablate.pool import Pool
from ablate.pool.errors import AblateError
from ablate.pool.gram import ensure_gram
from ablate.pool.storage import GRAM
from ablate.pool.weights import load_tensors

CPU = torch.device("cpu")
Q = "model.layers.0.self_attn.q_proj.weight"
EMBED = "model.embed_tokens.weight"


def _write_grams(pool: Pool, gram_of) -> None:
    """Give every member a hand-made statistic: ``gram_of(row, name, weight) -> tensor``."""
    write_member_stat(pool, GRAM, gram_of, tokens=1)


def _models(pool: Pool):
    layout = MemberLayout(pool, merge="regmean")
    for budget in (None, 1):  # the stack in memory, then streamed tensor by tensor
        yield MergedModel(
            pool,
            layout.members,
            device=CPU,
            progress=False,
            stack_budget_bytes=budget,
            layout=layout,
        )


def test_a_linear_layer_is_the_weighted_least_squares_fit_to_each_members_outputs(full_pool):
    """With Grams from random inputs X_i, the merged q_proj minimises
    sum_i w_i ||X_i W^T - X_i W_i^T||^2 (shrink 1: an ordinary weighted least squares, solved
    here by numpy); with the default shrink, the off-diagonal of each Gram is scaled by 0.9."""
    n = len(full_pool.members)
    rng = np.random.default_rng(0)
    width = load_tensors(full_pool.weights_path(full_pool.members[0]))[Q].shape[1]
    xs = [rng.normal(size=(300, width)) * rng.uniform(0.2, 3.0, size=width) for _ in range(n)]
    grams = [torch.from_numpy(x.T @ x / len(x)) for x in xs]
    _write_grams(full_pool, lambda i, name, t: grams[i] if name == Q else None)
    members = [load_tensors(full_pool.weights_path(m)) for m in full_pool.members]
    w = np.array([0.5, 0.3, 0.2][:n] + [0.0] * max(0, n - 3))
    w /= w.sum()
    rows = np.sqrt(np.repeat(w, 300) / 300)[:, None]
    x_all = np.concatenate(xs) * rows
    y_all = np.concatenate([x @ m[Q].double().numpy().T for x, m in zip(xs, members)]) * rows
    fit = np.linalg.lstsq(x_all, y_all, rcond=None)[0].T  # (out, in)
    for m in _models(full_pool):
        m.regression_merge_(torch.tensor(w, dtype=torch.float32), 1.0)
        got = dict(m.model.named_parameters())
        np.testing.assert_allclose(got[Q].detach().double().numpy(), fit, rtol=2e-4, atol=2e-5)
        avg = sum(float(w[i]) * members[i]["lm_head.weight"] for i in range(n))
        torch.testing.assert_close(got["lm_head.weight"], avg)  # no Gram: the average
        m.merge(torch.tensor(w, dtype=torch.float32))  # the registered method: shrink 0.9
        g = [0.9 * gi + 0.1 * torch.diag(torch.diagonal(gi)) for gi in grams]
        lhs = sum(float(w[i]) * g[i] for i in range(n))
        rhs = sum(float(w[i]) * g[i] @ members[i][Q].double().T for i in range(n))
        want = torch.linalg.solve(lhs, rhs).T
        torch.testing.assert_close(got[Q].detach().double(), want, rtol=2e-4, atol=2e-5)


def test_diagonal_grams_by_hand_embedding_rows_by_counts_and_the_fallbacks(full_pool):
    """Diagonal Grams g_a, g_b make each input column a (w g)-weighted average of the two
    members' columns; a zero Gram column keeps the plain average; an embedding row is the
    count-weighted average of the members that saw its token, the average where none did."""
    a, b = 0, len(full_pool.members) - 1
    ta, tb = (load_tensors(full_pool.weights_path(full_pool.members[i])) for i in (a, b))
    width, vocab = ta[Q].shape[1], ta[EMBED].shape[0]
    ga = torch.ones(width)
    gb = torch.linspace(0.5, 4.0, width)
    ga[0] = gb[0] = 0.0  # an input nobody excites
    ca, cb = torch.zeros(vocab), torch.zeros(vocab)
    ca[5], cb[5], ca[6], cb[7] = 1.0, 3.0, 2.0, 2.0  # token 8: neither

    def gram_of(i, name, t):
        if name == Q:
            return torch.diag(ga if i == a else gb)
        if name == EMBED:
            return ca if i == a else cb
        return None

    _write_grams(full_pool, gram_of)
    w = torch.zeros(len(full_pool.members))
    w[a], w[b] = 0.25, 0.75
    for m in _models(full_pool):
        m.merge(w)
        got = dict(m.model.named_parameters())
        den = 0.25 * ga + 0.75 * gb
        want = (0.25 * ga * ta[Q] + 0.75 * gb * tb[Q]) / den.clamp_min(1e-30)
        want[:, 0] = 0.25 * ta[Q][:, 0] + 0.75 * tb[Q][:, 0]
        torch.testing.assert_close(got[Q], want, rtol=1e-4, atol=1e-5)
        e = got[EMBED]
        torch.testing.assert_close(e[5], (0.25 * ta[EMBED][5] + 3 * 0.75 * tb[EMBED][5]) / 2.5)
        torch.testing.assert_close(e[6], ta[EMBED][6])
        torch.testing.assert_close(e[7], tb[EMBED][7])
        torch.testing.assert_close(e[8], 0.25 * ta[EMBED][8] + 0.75 * tb[EMBED][8])


def test_computed_grams_streamed_equals_in_memory_and_one_member_is_itself(full_pool):
    ensure_gram(full_pool, batches=1, progress=False)
    n = len(full_pool.members)
    w = torch.tensor([1.0 + i for i in range(n)])
    w /= w.sum()
    flats = []
    for m in _models(full_pool):
        m.merge(w)
        flats.append(m.flat.clone())
        m.merge(w, method=MERGES["average"]())
        assert not torch.allclose(flats[-1], m.flat)
        for row in range(n):
            one = torch.zeros(n)
            one[row] = 1.0
            m.merge(one)
            assert torch.equal(m.flat, m.member_row(row))
    torch.testing.assert_close(flats[0], flats[1], rtol=1e-5, atol=1e-6)


def test_lora_pools_merge_the_adapted_layers_from_the_members_updates(lora_pool_dir, tmp_path):
    """For LoRA, each adapted weight is W_0 + (sum_i w_i G_i)^-1 sum_i w_i G_i (s B_i A_i)^T
    (the same fit on the members' effective weights, since the fit of a common W_0 is W_0);
    every other parameter stays the seed's."""
    shutil.copytree(lora_pool_dir, tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    ensure_gram(pool, batches=1, progress=False)
    m, w, got, full = merge_lora_members(pool, "regmean")
    n = len(w)
    seed = dict(pool.load_base_model().named_parameters())
    from ablate.pool.gram import load_gram

    grams = [load_gram(pool, r) for r in m.members]
    assert grams[0]
    for name in grams[0]:
        g = [
            0.9 * gr[name].double() + 0.1 * torch.diag(torch.diagonal(gr[name].double()))
            for gr in grams
        ]
        lhs = sum(float(w[i]) * g[i] for i in range(n))
        rhs = sum(float(w[i]) * g[i] @ full[i][name].double().T for i in range(n))
        want = torch.linalg.solve(lhs, rhs).T
        torch.testing.assert_close(got[name].double(), want, rtol=1e-3, atol=1e-5)
    untouched = [k for k in seed if k not in grams[0]]
    assert untouched and all(torch.equal(got[k], seed[k].detach()) for k in untouched)
    # q_proj and v_proj read one input: one stored Gram, one stack in the merge.
    stacks = {site.name: g for site, g in m._regmean_sites(0.9)}
    q = "model.layers.0.self_attn.q_proj.weight"
    assert stacks[q] is stacks[q.replace("q_proj", "v_proj")]
    m.merge(w, method=MERGES["average"]())
    assert not torch.allclose(
        m.model.get_parameter(next(iter(grams[0]))), got[next(iter(grams[0]))]
    )


def test_evaluator_cli_and_the_one_line_errors(full_pool, lora_pool_dir, corpus, tmp_path):
    path = full_pool.path
    args = ("--eval-data", corpus["eval"], "--eval-by", "domain", "--mixture", "code,wiki")
    r = run_cli("eval", path, *args, "--merge", "regmean")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("ablate: error:")
    assert f"ablate pool gram {path}" in lines[0]
    assert run_cli("pool", "gram", path, "--batches", "1").returncode == 0
    out = {}
    for merge in ("average", "regmean"):
        r = run_cli("eval", path, *args, "--merge", merge, "--json")
        assert r.returncode == 0, r.stderr
        out[merge] = r.stdout
    assert out["average"] != out["regmean"]
    ev = Evaluator(full_pool, corpus["eval"], by="domain", progress=False, merge="regmean")
    mixes = [Mixture.uniform(["code", "wiki"])]
    assert ev.layout.walk_order(mixes) == ([], mixes)  # merged one by one, not walked

    shutil.copytree(lora_pool_dir, tmp_path / "lora")
    lora = Pool.open(tmp_path / "lora")
    ensure_gram(lora, batches=1, progress=False)
    ev = Evaluator(lora, corpus["eval"], by="domain", store=False, progress=False, merge="regmean")
    assert ev.evaluate(mixes[0]).scores["code"].nll > 0
    with pytest.raises(AblateError, match="--adapter"):
        ev.export(mixes[0], tmp_path / "out", adapter=True)
    assert not (tmp_path / "out").exists()
