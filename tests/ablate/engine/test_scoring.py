"""Scorer and TaskScorer: our windows and fused NLL equal a plain Hugging Face forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import domain_evaluator

from ablate import Evaluator, Mixture
from ablate.pool.weights import load_tensors


@pytest.fixture(scope="module")
def ev(full_pool_dir, corpus):
    return Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)


def test_single_member_matches_hf_labels_loss(ev):
    """Our windows + token_nll equal a plain HF forward with labels= on the member's model."""
    from transformers import AutoModelForCausalLM

    pool = ev.pool
    part = next(p for p, x in pool.partitions.items() if len(x.index.units) == 1)
    res = ev.evaluate(Mixture.uniform([part]))
    (rec,) = [m for m in pool.members if m.partition == part]
    model = AutoModelForCausalLM.from_pretrained(
        pool.base_folder, local_files_only=True, dtype=torch.float32
    )
    model.load_state_dict(load_tensors(pool.weights_path(rec)), strict=False)
    model.eval()
    ctx = pool.manifest.context
    totals = {d: [0.0, 0] for d in ev.domains}
    for doc, d in zip(ev.eval_set.docs, ev.eval_set.doc_domain):
        doc = torch.as_tensor(np.asarray(doc, dtype=np.int64))
        for s in range(0, len(doc) - 1, ctx):
            # HF shifts labels by one, so ctx + 1 tokens give exactly our window's ctx targets.
            x = doc[s : s + ctx + 1][None]
            with torch.no_grad():
                loss = model(input_ids=x, labels=x).loss.item()
            n = x.shape[1] - 1
            totals[ev.domains[d]][0] += loss * n
            totals[ev.domains[d]][1] += n
    for d, (nll, n) in totals.items():
        assert res.scores[d].tokens == n
        assert res.ppl[d] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_documents_add_up_to_the_domain_scores(ev):
    """``score_documents`` and ``score`` read the same weights: per-document sums rebuild
    every domain's totals (what racing and validation rely on)."""
    ev.merged.load(Mixture.parse("code,math"))
    scorer = ev.scorer()
    domains = scorer.score()
    docs = scorer.score_documents()
    assert docs.nll.shape == docs.tokens.shape == (len(ev.eval_set.docs),)
    for d, s in docs.domain_totals(ev.eval_set).items():
        assert s.tokens == domains[d].tokens and s.bytes == domains[d].bytes
        assert s.nll == pytest.approx(domains[d].nll, rel=1e-6)


def test_batches_cut_padding_without_changing_scores(full_pool_dir, corpus):
    """Longest-first windows cut to each batch's longest: same NLL as one window per batch."""
    mix = Mixture.uniform(["code", "wiki"])
    scores = {}
    for budget in (1, 200, 1 << 20):
        ev = domain_evaluator(full_pool_dir, corpus, batch_tokens=budget)
        win = ev.eval_set.windows(ev.pool.manifest.context, 0)
        assert (np.diff(win.lengths) <= 0).all()
        assert ((win.targets != -100).sum(1) >= win.lengths - 1).all()
        batches = win.batches(budget)
        assert [b[0] for b in batches[1:]] == [b[1] for b in batches[:-1]]
        assert batches[0][0] == 0 and batches[-1][1] == len(win.lengths)
        for start, stop, length in batches:
            assert win.lengths[start:stop].max() == length
            assert (win.inputs[start:stop, length:] == 0).all() or length == win.inputs.shape[1]
            assert stop - start == 1 or (stop - start) * length <= budget
        scores[budget] = ev.evaluate(mix).scores
    for budget in (200, 1 << 20):
        for d, s in scores[budget].items():
            assert s.tokens == scores[1][d].tokens
            assert s.nll == pytest.approx(scores[1][d].nll, rel=1e-5)
