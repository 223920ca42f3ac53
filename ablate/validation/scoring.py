"""Per-document scores, so that validation statistics can be bootstrapped over documents.

The evaluator sums token NLL per eval domain; confidence intervals for the proxy-vs-real
correlations of Na et al. (EMNLP 2024) need the same sums per *document*, so that eval
documents can be resampled. This module reuses the evaluator's windows and fused
``kernels.token_nll`` path and only changes where the sums go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ablate.evalset import EvalSet
    from ablate.evaluator import DomainScore, Evaluator


@dataclass(frozen=True)
class DocScores:
    """Summed NLL (nats, float64) and scored tokens (int64) per eval document, ``(n_docs,)``."""

    nll: np.ndarray
    tokens: np.ndarray

    def domain_totals(self, eval_set: EvalSet) -> dict[str, DomainScore]:
        """The evaluator's per-domain totals, rebuilt from the documents."""
        from ablate.evaluator import DomainScore

        n = len(eval_set.domains)
        nll = np.bincount(eval_set.doc_domain, weights=self.nll, minlength=n)
        tok = np.bincount(eval_set.doc_domain, weights=self.tokens, minlength=n).astype(np.int64)
        nbytes = eval_set.domain_bytes
        return {
            d: DomainScore(int(tok[i]), float(nll[i]), int(nbytes[i]))
            for i, d in enumerate(eval_set.domains)
        }


def window_documents(eval_set: EvalSet, context: int) -> np.ndarray:
    """Document index of every scoring window ``(W,)``, cut exactly as ``EvalSet.windows``."""
    # EvalSet.windows starts a window at 0, context, 2*context, ... < len(doc) - 1.
    counts = [len(range(0, len(doc) - 1, context)) for doc in eval_set.docs]
    return np.repeat(np.arange(len(counts)), counts)


def score_documents(ev: Evaluator) -> DocScores:
    """Score whatever weights ``ev``'s skeleton holds now, per eval document."""
    import torch

    import kernels

    model = ev.merged.model
    body = model.base_model
    head = model.get_output_embeddings()
    cfg = model.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)
    inputs, targets, _ = ev._windows  # noqa: SLF001  (the evaluator's cached windows)
    doc_of = window_documents(ev.eval_set, ev.pool.manifest.context)
    if len(doc_of) != inputs.shape[0]:
        raise RuntimeError(
            f"window/document mapping is out of step ({len(doc_of)} vs {inputs.shape[0]} windows)"
        )
    window_nll = torch.zeros(inputs.shape[0], dtype=torch.float64, device=inputs.device)  # (W,)
    per_batch = max(1, ev.batch_tokens // inputs.shape[1])
    with torch.inference_mode():
        for s in range(0, inputs.shape[0], per_batch):
            x, y = inputs[s : s + per_batch], targets[s : s + per_batch]  # (B, C)
            hidden = body(input_ids=x).last_hidden_state  # (B, C, H)
            tok = kernels.token_nll(
                hidden.flatten(0, 1),
                head.weight,
                y.flatten(),
                bias=head.bias,
                logit_scale=scale,
                softcap=softcap,
            )  # (B*C,) fp32, 0 at ignored targets
            window_nll[s : s + per_batch] = tok.view(x.shape).sum(1).double()
    window_tokens = (targets != -100).sum(1).cpu().numpy()  # (W,)
    n_docs = len(ev.eval_set.docs)
    return DocScores(
        nll=np.bincount(doc_of, weights=window_nll.cpu().numpy(), minlength=n_docs),
        tokens=np.bincount(doc_of, weights=window_tokens, minlength=n_docs).astype(np.int64),
    )
