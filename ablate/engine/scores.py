"""What scoring returns: totals per eval domain, per document, and per task choice.

Plain values, no model: the results store rebuilds them from its rows, racing and
validation derive their statistics from them. Perplexity and bits per byte derive from
summed NLL and counts; task metrics (lm-evaluation-harness's ``acc``, ``acc_norm`` and the
gold choice's NLL) derive from every choice's summed NLL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ablate.mixture import Mixture
from ablate.objective import MACRO, TASK_METRICS, TaskMetric

if TYPE_CHECKING:
    from ablate.data.evalset import EvalSet
    from ablate.data.tasks import Task

_LN2 = math.log(2)
BOOTSTRAP_SAMPLES = 1000  # resamples of a task's bootstrap interval over items


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
    """A mixture's scores per eval domain (and per task: ``TaskScore``)."""

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


@dataclass(frozen=True, eq=False)
class TaskScore:
    """One task's per-item scores for one mixture; metrics derive from ``choice_nll``.

    Args:
        name: The task's name.
        choice_nll: ``(C,)`` float64 summed NLL (nats) of every choice's continuation.
        offsets: ``(n + 1,)`` item boundaries in ``choice_nll``.
        gold: ``(n,)`` right choice per item.
        choice_bytes: ``(C,)`` UTF-8 bytes per choice.
        cached: Whether the scores came from the results store.
    """

    name: str
    choice_nll: np.ndarray
    offsets: np.ndarray
    gold: np.ndarray
    choice_bytes: np.ndarray
    cached: bool = False
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, task: Task, choice_nll: np.ndarray, *, cached: bool = False) -> TaskScore:
        return cls(task.name, choice_nll, task.offsets, task.gold, task.choice_bytes, cached)

    @property
    def n(self) -> int:
        return len(self.gold)

    def _padded(self, values: np.ndarray) -> np.ndarray:
        """``(n, max choices)`` with +inf where an item has fewer choices."""
        sizes = np.diff(self.offsets)
        out = np.full((self.n, int(sizes.max())), np.inf)
        col = np.arange(len(values)) - np.repeat(self.offsets[:-1], sizes)
        out[np.repeat(np.arange(self.n), sizes), col] = values
        return out

    @property
    def correct(self) -> np.ndarray:
        """``(n,)`` bool: the lowest-NLL choice is the gold one (first one on ties)."""
        return self._padded(self.choice_nll).argmin(1) == self.gold

    @property
    def correct_norm(self) -> np.ndarray:
        """``(n,)`` bool: the lowest NLL per byte of the choice is the gold one."""
        return self._padded(self.choice_nll / self.choice_bytes).argmin(1) == self.gold

    @property
    def gold_nlls(self) -> np.ndarray:
        """``(n,)`` summed NLL of each item's gold continuation."""
        return self.choice_nll[self.offsets[:-1] + self.gold]

    def per_item(self, metric: TaskMetric) -> np.ndarray:
        """``(n,)`` float64 per-item values of ``metric`` (their mean is the metric)."""
        if metric == "acc":
            return self.correct.astype(np.float64)
        if metric == "acc_norm":
            return self.correct_norm.astype(np.float64)
        if metric == "gold_nll":
            return self.gold_nlls
        raise ValueError(f"unknown task metric {metric!r}; known: {', '.join(TASK_METRICS)}")

    @property
    def acc(self) -> float:
        return float(self.correct.mean())

    @property
    def acc_norm(self) -> float:
        return float(self.correct_norm.mean())

    @property
    def gold_nll(self) -> float:
        return float(self.gold_nlls.mean())

    def metric(self, metric: TaskMetric) -> float:
        return float(self.per_item(metric).mean())

    def intervals(
        self, *, samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95, seed: int = 0
    ) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals over items, per metric (same resamples for all)."""
        key = (samples, level, seed)
        if key not in self._derived:
            rng = np.random.default_rng(seed)
            idx = rng.integers(0, self.n, size=(samples, self.n))  # (B, n)
            alpha = (1 - level) / 2
            out = {}
            for m in TASK_METRICS:
                means = self.per_item(m)[idx].mean(1)  # (B,)
                lo, hi = np.quantile(means, [alpha, 1 - alpha])
                out[m] = (float(lo), float(hi))
            self._derived[key] = out
        return self._derived[key]

    def row(self, mixture: Mapping[str, float] | None = None) -> dict:
        """The ``"task"`` object of ``--json`` rows."""
        ci = self.intervals()
        out = {
            "task": self.name,
            "n": self.n,
            "acc": self.acc,
            "acc_norm": self.acc_norm,
            "gold_nll": self.gold_nll,
            **{f"{m}_ci": list(ci[m]) for m in TASK_METRICS},
        }
        return out if mixture is None else {"mixture": dict(mixture), **out}


__all__ = [
    "BOOTSTRAP_SAMPLES",
    "MACRO",
    "DocScores",
    "DomainScore",
    "EvalResult",
    "TaskScore",
]
