"""Per-document scores, so that validation statistics can be bootstrapped over documents.

The evaluator sums token NLL per eval domain; confidence intervals for the proxy-vs-real
correlations of Na et al. (EMNLP 2024) need the same sums per *document*, so that eval
documents can be resampled. Rather than copying the scoring loop, a second evaluator sees
the same documents with every document as its own "domain" and shares the first one's
loaded members and model skeleton: ``score_current`` then returns per-document sums through
exactly the evaluator's windows and fused ``kernels.token_nll`` path.
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


def _doc_name(i: int, n: int) -> str:
    return f"doc{i:0{len(str(n))}d}"  # zero-padded: sorted names keep document order


def document_evaluator(ev: Evaluator) -> Evaluator:
    """An evaluator over ``ev``'s documents, one domain per document, sharing ``ev``'s model.

    Whatever weights ``ev.merged`` holds (a merge, or a real model loaded into it),
    ``document_evaluator(ev).score_current()`` scores them per document.
    """
    from ablate.evalset import EvalSet
    from ablate.evaluator import Evaluator
    from pool.atomic import sha256_json

    es = ev.eval_set
    n = len(es.docs)
    per_doc = EvalSet(
        domains=tuple(_doc_name(i, n) for i in range(n)),
        docs=es.docs,
        doc_domain=np.arange(n, dtype=np.int64),
        doc_bytes=es.doc_bytes,
        fingerprint=sha256_json({"parent": es.fingerprint, "per": "document"}),
    )
    doc_ev = Evaluator(
        ev.pool,
        per_doc,
        device=ev.device_name,
        batch_tokens=ev.batch_tokens,
        store=False,
        progress=False,
    )
    doc_ev.__dict__["merged"] = ev.merged  # share the loaded stack and skeleton (a cached_property)
    return doc_ev


def score_documents(doc_ev: Evaluator) -> DocScores:
    """Score the shared skeleton's current weights per document (``doc_ev`` from ``document_evaluator``)."""
    scores = doc_ev.score_current()
    names = doc_ev.eval_set.domains  # in document order
    return DocScores(
        nll=np.array([scores[d].nll for d in names], dtype=np.float64),
        tokens=np.array([scores[d].tokens for d in names], dtype=np.int64),
    )
