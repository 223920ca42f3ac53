"""What a study minimises: a target over eval domains and task terms, and the task loss.

A target is one eval domain's perplexity, a weighted mean of several, the macro average,
or a mix with multiple-choice task terms (``task:NAME[:METRIC]``). Search strategies,
racing and validation read it; one definition keeps their losses the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ablate.pool.errors import AblateError

MACRO = "macro"  # the equal-weight mean over eval domains (a target and a table row)
TASK_PREFIX = "task:"  # a target term on a multiple-choice task (ablate.data.tasks)
TaskMetric = Literal["acc", "acc_norm", "gold_nll"]
TASK_METRICS: tuple[TaskMetric, ...] = ("acc", "acc_norm", "gold_nll")
TASK_LOSS_SCALE = 100.0  # an accuracy of 1 - x costs 100 x: one point = one perplexity point


def as_task_loss(value: float | np.ndarray, metric: str) -> float | np.ndarray:
    """A task metric (a float, or per-item values ``(n,)``) as what a search minimises: the
    error rate in percent (100 - accuracy in %) for acc and acc_norm, so one accuracy point
    weighs as much as one perplexity point; the gold NLL (nats) as it is for gold_nll."""
    return value if metric == "gold_nll" else TASK_LOSS_SCALE * (1.0 - value)


def task_term(name: str) -> tuple[str, str] | None:
    """``(task, metric)`` of a ``task:NAME[:METRIC]`` term, None for an eval domain."""
    if not name.startswith(TASK_PREFIX):
        return None
    task, _, metric = name.removeprefix(TASK_PREFIX).partition(":")
    metric = metric or "acc"
    if not task or metric not in TASK_METRICS:
        raise AblateError(
            f"--target term {name!r}: write task:NAME or task:NAME:METRIC with METRIC one of "
            f"{', '.join(TASK_METRICS)}"
        )
    return task, metric


def task_loss(score: object, metric: str) -> float:
    """A task term's loss for a search (``as_task_loss`` of the task's mean metric)."""
    return as_task_loss(score.metric(metric), metric)


@dataclass(frozen=True)
class Target:
    """What a search minimises: a weighted mean of eval-domain perplexities and task losses.

    ``weights`` is None for the macro average (every domain, equal weights). A term named
    ``task:NAME[:METRIC]`` reads a multiple-choice task instead of a domain (``task_loss``).
    """

    spec: str
    weights: tuple[tuple[str, float], ...] | None = None

    @classmethod
    def parse(cls, spec: str) -> Target:
        """``macro``, ``DOMAIN[,DOMAIN...]`` (equal weights) or ``weighted:D=W,...``."""
        if not isinstance(spec, str) or not spec.strip():
            raise AblateError(
                "empty --target; use macro, a domain name, code,wiki or weighted:code=2,wiki=1"
            )
        spec = spec.strip()
        if spec == MACRO:
            return cls(MACRO)
        if spec.startswith(TASK_PREFIX):
            task_term(spec)
            return cls(spec, ((spec, 1.0),))
        if spec.startswith("weighted:"):
            raw: dict[str, float] = {}
            for part in spec.removeprefix("weighted:").split(","):
                name, sep, value = part.partition("=")
                name = name.strip()
                if not sep or not name:
                    raise AblateError(f"--target {spec!r}: write weighted:DOMAIN=W,DOMAIN=W")
                try:
                    w = float(value)
                except ValueError:
                    raise AblateError(
                        f"--target: weight {value.strip()!r} of {name!r} is not a number"
                    ) from None
                if not math.isfinite(w) or w < 0:
                    raise AblateError(
                        f"--target: weight of {name!r} must be a finite number >= 0, got {value}"
                    )
                if name in raw:
                    raise AblateError(f"--target: domain {name!r} is given twice")
                task_term(name)
                raw[name] = w
        else:
            names = [n.strip() for n in spec.split(",")]
            if any(not n for n in names) or len(set(names)) != len(names):
                raise AblateError(
                    f"--target {spec!r}: list distinct domains separated by single commas"
                )
            raw = dict.fromkeys(names, 1.0)
        total = sum(raw.values())
        if total <= 0:
            raise AblateError(f"--target {spec!r}: at least one domain needs a positive weight")
        return cls(spec, tuple(sorted((d, w / total) for d, w in raw.items() if w > 0)))

    def domains(self, available: Sequence[str]) -> tuple[str, ...]:
        """The domains this target reads, checked against the eval set's domains."""
        if self.weights is None:
            return tuple(available)
        missing = [d for d, _ in self.weights if d not in available and task_term(d) is None]
        if missing:
            raise AblateError(
                f"--target names eval domain(s) {', '.join(missing)} that the eval data lacks; "
                f"it has: {', '.join(available)} (set --eval-by to the field that names domains)"
            )
        return tuple(d for d, _ in self.weights if task_term(d) is None)

    def tasks(self, available: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
        """``(task, metric)`` of the target's task terms, checked against ``available``."""
        terms = [t for d, _ in self.weights or () if (t := task_term(d)) is not None]
        missing = sorted({t for t, _ in terms if t not in available})
        if missing:
            have = ", ".join(available) or "none"
            raise AblateError(
                f"--target names task(s) {', '.join(missing)} that were not given; "
                f"add --task FILE (tasks given: {have})"
            )
        return tuple(terms)

    def score(self, ppl: Mapping[str, float], tasks: Mapping[str, object] | None = None) -> float:
        """Weighted mean of the target's domain perplexities present in ``ppl`` and task
        losses (``task_loss``) of the tasks present in ``tasks`` (``TaskScore`` s).

        Terms a (held-out) split lacks are left out and the rest renormalised; NaN when
        none is present.
        """
        tasks = tasks or {}
        if self.weights is None:
            pairs = [(ppl[d], 1.0) for d in ppl]
        else:
            pairs = []
            for d, w in self.weights:
                term = task_term(d)
                if term is None and d in ppl:
                    pairs.append((ppl[d], w))
                elif term is not None and term[0] in tasks:
                    pairs.append((task_loss(tasks[term[0]], term[1]), w))
        total = sum(w for _, w in pairs)
        if not pairs or total <= 0:
            return math.nan
        return float(sum(w * v for v, w in pairs) / total)

    def coefficients(self, domains: Sequence[str]) -> dict[str, float]:
        """``{domain: weight}`` over ``domains`` (normalised), for gradient-based strategies."""
        if self.weights is None:
            return {d: 1.0 / len(domains) for d in domains}
        w = {d: v for d, v in self.weights if d in domains}
        total = sum(w.values())
        return {d: v / total for d, v in w.items()}

    def __str__(self) -> str:
        return self.spec


__all__ = [
    "MACRO",
    "TASK_LOSS_SCALE",
    "TASK_METRICS",
    "TASK_PREFIX",
    "Target",
    "TaskMetric",
    "as_task_loss",
    "task_loss",
    "task_term",
]
