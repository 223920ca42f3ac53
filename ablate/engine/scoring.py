"""Score whatever weights a model skeleton holds on one eval set.

A ``Scorer(model, eval_set)`` owns the eval set's windows and batches (built once) and turns
the skeleton's current weights into summed NLL per eval domain or per document. Scoring
another eval set on the same loaded weights is another ``Scorer`` on the same model:
nothing is reloaded. Documents are scored in non-overlapping windows (the Paloma
convention, see :mod:`ablate.data.evalset`); the LM head runs through ``kernels.token_nll`` on
real targets only, so the ``(tokens, vocab)`` logits never exist at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ablate.data.evalset import IGNORE, EvalSet, Windows
from ablate.mixture import Mixture

if TYPE_CHECKING:
    import torch

    from ablate.data.tasks import TaskScore
    from ablate.engine.merge import MergedModel

MACRO = "macro"
_LN2 = math.log(2)


@dataclass(frozen=True)
class DomainScore:
    """Totals for one eval domain; perplexity and bits per byte derive from them."""

    tokens: int
    nll: float
    bytes: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bpb(self) -> float:
        return self.nll / (_LN2 * self.bytes)


@dataclass(frozen=True)
class EvalResult:
    """A mixture's scores per eval domain (and per task: ``ablate.data.tasks.TaskScore``)."""

    mixture: Mixture
    scores: Mapping[str, DomainScore]
    cached: bool = False
    tasks: Mapping[str, TaskScore] = field(default_factory=dict)

    @property
    def ppl(self) -> dict[str, float]:
        return {d: s.ppl for d, s in self.scores.items()}

    @property
    def bpb(self) -> dict[str, float]:
        return {d: s.bpb for d, s in self.scores.items()}

    @property
    def macro_ppl(self) -> float:
        return float(np.mean([s.ppl for s in self.scores.values()]))

    @property
    def macro_bpb(self) -> float:
        return float(np.mean([s.bpb for s in self.scores.values()]))

    def rows(self) -> list[dict]:
        """One record per domain plus a ``macro`` record (the ``--json`` schema)."""
        mix = self.mixture.as_dict()
        out = [
            {
                "mixture": mix,
                "domain": d,
                "tokens": s.tokens,
                "nll": s.nll,
                "ppl": s.ppl,
                "bpb": s.bpb,
            }
            for d, s in self.scores.items()
        ]
        out.append(
            {
                "mixture": mix,
                "domain": MACRO,
                "tokens": sum(s.tokens for s in self.scores.values()),
                "nll": sum(s.nll for s in self.scores.values()),
                "ppl": self.macro_ppl,
                "bpb": self.macro_bpb,
            }
        )
        return out


@dataclass(frozen=True)
class DocScores:
    """Summed NLL (nats, float64) and scored tokens (int64) per eval document, ``(n_docs,)``.

    Validation bootstraps over documents (Na et al., EMNLP 2024, report intervals), so it
    needs the sums per document rather than per domain.
    """

    nll: np.ndarray
    tokens: np.ndarray

    def domain_totals(self, eval_set: EvalSet) -> dict[str, DomainScore]:
        """The per-domain totals, rebuilt from the documents."""
        n = len(eval_set.domains)
        nll = np.bincount(eval_set.doc_domain, weights=self.nll, minlength=n)
        tok = np.bincount(eval_set.doc_domain, weights=self.tokens, minlength=n).astype(np.int64)
        nbytes = eval_set.domain_bytes
        return {
            d: DomainScore(int(tok[i]), float(nll[i]), int(nbytes[i]))
            for i, d in enumerate(eval_set.domains)
        }


@dataclass(frozen=True)
class ScoringBatch:
    """Eval windows cut to their longest (``inputs (B, L)``) and their real targets:
    flat position in ``B*L`` (``at``), token id (``targets``), eval domain (``domain``) and
    eval document (``doc``), each ``(N,)``."""

    inputs: torch.Tensor
    at: torch.Tensor
    targets: torch.Tensor
    domain: torch.Tensor
    doc: torch.Tensor


def cut_batches(w: Windows, device: torch.device, batch_tokens: int) -> list[ScoringBatch]:
    """``w`` cut into ``ScoringBatch`` es on ``device``, each cut to its longest window.

    ``w.domain`` and ``w.doc`` become the batches' ``domain`` and ``doc`` (a task passes
    its item and flat choice index there).
    """
    import torch

    # Plain tensors even when first needed under inference mode: the gradient search
    # runs them through autograd.
    with torch.inference_mode(False):
        inputs = torch.from_numpy(w.inputs).to(device)
        targets = torch.from_numpy(w.targets).to(device)
        domain = torch.from_numpy(w.domain).to(device)
        doc = torch.from_numpy(w.doc).to(device)
        out = []
        for start, stop, length in w.batches(batch_tokens):
            y = targets[start:stop, :length].flatten()  # (B*L,)
            at = (y != IGNORE).nonzero()[:, 0]  # (N,)
            row = at // length  # (N,) window of each target within the batch
            out.append(
                ScoringBatch(
                    inputs[start:stop, :length],
                    at,
                    y[at],
                    domain[start:stop][row],
                    doc[start:stop][row],
                )
            )
    return out


def target_nll(model: torch.nn.Module, batch: ScoringBatch) -> torch.Tensor:
    """NLL ``(N,)`` fp32 of every real target in ``batch``.

    Runs the model body, then ``kernels.token_nll`` on the final hidden states of real
    targets only (never on padding).
    """
    import ablate.kernels as kernels
    from ablate.pool.architectures import lm_head

    hidden = model.base_model(input_ids=batch.inputs, use_cache=False).last_hidden_state
    head = lm_head(model)  # weight, bias, logit scale (Cohere, Granite), soft-cap (Gemma 2)
    return kernels.token_nll(
        hidden.flatten(0, 1).index_select(0, batch.at),  # (N, H)
        head.weight,
        batch.targets,
        bias=head.bias,
        logit_scale=head.logit_scale,
        softcap=head.softcap,
    )


class Scorer:
    """Summed NLL of ``model``'s current weights on ``eval_set``, per domain or document.

    Args:
        model: The merged model whose skeleton is scored (its weights change between calls).
        eval_set: The documents to score.
        batch_tokens: Tokens per forward pass; bounds activation memory.
    """

    def __init__(self, model: MergedModel, eval_set: EvalSet, *, batch_tokens: int = 8192):
        self.model = model
        self.eval_set = eval_set
        self.batch_tokens = batch_tokens

    @property
    def domains(self) -> tuple[str, ...]:
        return self.eval_set.domains

    @cached_property
    def batches(self) -> list[ScoringBatch]:
        """The eval windows cut into batches once; every score reuses them as they are.

        Windows are right-padded and the model is causal, so cutting a batch to its longest
        window changes no score and skips the padding's compute; the real targets' positions
        are found once here, not per mixture.
        """
        tokenizer = self.model.pool.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        w = self.eval_set.windows(self.model.pool.manifest.context, pad)
        return cut_batches(w, self.model.device, self.batch_tokens)

    @cached_property
    def domain_tokens(self) -> list[int]:
        """Scored targets per domain: the same for every mixture."""
        counts = np.zeros(len(self.domains), dtype=np.int64)
        for b in self.batches:
            counts += np.bincount(b.domain.cpu().numpy(), minlength=len(self.domains))
        return counts.tolist()

    def score(self) -> dict[str, DomainScore]:
        """The skeleton's current weights, per eval domain."""
        totals = self._sums("domain", len(self.domains))
        nbytes = self.eval_set.domain_bytes
        return {
            d: DomainScore(self.domain_tokens[i], totals[i], int(nbytes[i]))
            for i, d in enumerate(self.domains)
        }

    @cached_property
    def doc_tokens(self) -> np.ndarray:
        """Scored targets per document ``(n_docs,)``: the same for every mixture."""
        n = len(self.eval_set.docs)
        counts = np.zeros(n, dtype=np.int64)
        for b in self.batches:
            counts += np.bincount(b.doc.cpu().numpy(), minlength=n)
        return counts

    def score_documents(self) -> DocScores:
        """The skeleton's current weights, per eval document (in the eval set's order)."""
        nll = np.asarray(self._sums("doc", len(self.eval_set.docs)), dtype=np.float64)
        return DocScores(nll=nll, tokens=self.doc_tokens.copy())

    def _sums(self, by: str, n: int) -> list[float]:
        import torch

        nll = torch.zeros(n, dtype=torch.float64, device=self.model.device)
        with torch.inference_mode():
            for b in self.batches:
                nll.index_add_(0, getattr(b, by), target_nll(self.model.model, b).double())
        return nll.tolist()  # one device sync per score


__all__ = [
    "MACRO",
    "DocScores",
    "DomainScore",
    "EvalResult",
    "Scorer",
    "ScoringBatch",
    "cut_batches",
    "target_nll",
]
