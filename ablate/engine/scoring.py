"""Score whatever weights a model skeleton holds: an eval set (``Scorer``) or a task (``TaskScorer``).

A ``Scorer(model, eval_set)`` owns the eval set's windows and batches (built once) and turns
the skeleton's current weights into summed NLL per eval domain or per document. Scoring
another eval set on the same loaded weights is another ``Scorer`` on the same model:
nothing is reloaded. Documents are scored in non-overlapping windows (the Paloma
convention, see :mod:`ablate.data.evalset`); the LM head runs through ``kernels.token_nll`` on
real targets only, so the ``(tokens, vocab)`` logits never exist at once. A ``TaskScorer``
runs a task's (item, choice) windows through the same path (lm-evaluation-harness's
multiple-choice convention, ``ablate.data.tasks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ablate.data.evalset import IGNORE, EvalSet, Windows
from ablate.data.tasks import Task
from ablate.engine.scores import MACRO, DocScores, DomainScore, EvalResult, TaskScore
from ablate.pool.architectures import lm_head

if TYPE_CHECKING:
    import torch

    from ablate.engine.merge import MergedModel


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


def pad_id(tokenizer) -> int:
    """The id padded windows carry (0 for a tokenizer without a pad token: padded positions
    are never scored, so any id does)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


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
    import ablate.kernels as kernels  # imports torch: only once something is scored

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
        pad = pad_id(self.model.pool.tokenizer)
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


class TaskScorer:
    """Per-choice NLL of a model skeleton's current weights on one task.

    Args:
        model: The merged model (its weights change between calls).
        task: The task to score.
        batch_tokens: Tokens per forward pass; bounds activation memory.
    """

    def __init__(self, model: MergedModel, task: Task, *, batch_tokens: int = 8192):
        self.model = model
        self.task = task
        self.batch_tokens = batch_tokens

    @cached_property
    def batches(self) -> list[ScoringBatch]:
        """The task's windows cut into batches once (``doc`` holds the flat choice index)."""
        tok = self.model.pool.tokenizer
        w = self.task.windows(tok, self.model.pool.manifest.context, pad_id(tok))
        return cut_batches(w, self.model.device, self.batch_tokens)

    def score(self) -> TaskScore:
        """The skeleton's current weights: every choice's summed NLL."""
        import torch

        c = int(self.task.offsets[-1])
        nll = torch.zeros(c, dtype=torch.float64, device=self.model.device)
        with torch.inference_mode():
            for b in self.batches:
                nll.index_add_(0, b.doc, target_nll(self.model.model, b).double())
        return TaskScore.of(self.task, nll.cpu().numpy())


__all__ = [
    "MACRO",
    "DocScores",
    "DomainScore",
    "EvalResult",
    "Scorer",
    "ScoringBatch",
    "TaskScore",
    "TaskScorer",
    "cut_batches",
    "pad_id",
    "target_nll",
]
