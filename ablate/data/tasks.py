"""Downstream multiple-choice tasks, scored on merged proxies beside perplexity.

Perplexity is what Na et al. (EMNLP 2024) validate, but mixtures are chosen on downstream
accuracy (RegMix, CLIMB and DoReMi report task averages). A task is a JSONL file, one
item per line::

    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0,
     "id": "q1", "fewshot": "The capital of Spain is Madrid.\\n"}

Scoring follows lm-evaluation-harness's multiple-choice convention (Gao et al., 2021-):
each choice is the continuation ``" " + choice`` of ``fewshot + context``; its summed NLL
over the continuation's tokens is its score (trailing whitespace of the context moves into
the continuation, and the continuation's tokens are those the whole text has beyond the
context's own tokens). ``acc``: the choice with the lowest NLL is the gold one;
``acc_norm``: the lowest NLL per UTF-8 byte of the choice; ``gold_nll``: the gold choice's
NLL. Per-item arrays are kept (``TaskScore``) so that bootstraps and racing policies can
use per-item differences. Sequences run through the same fused path as perplexity
(``ablate.engine.scoring.target_nll`` -> ``kernels.token_nll``), batched longest first.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ablate.data.evalset import IGNORE, Windows
from ablate.engine.scoring import ScoringBatch, cut_batches, target_nll
from ablate.pool.atomic import sha256_json
from ablate.pool.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from ablate.engine.merge import MergedModel
    from ablate.engine.scoring import EvalResult
    from ablate.evaluator import Evaluator
    from ablate.mixture import Mixture
    from ablate.pool import Pool

TaskMetric = Literal["acc", "acc_norm", "gold_nll"]
TASK_METRICS: tuple[TaskMetric, ...] = ("acc", "acc_norm", "gold_nll")
DELIMITER = " "  # lm-evaluation-harness's default target_delimiter between context and choice

TASK_LOSS_SCALE = 100.0  # an accuracy of 1 - x costs 100 x: one point = one perplexity point


def as_task_loss(value: float | np.ndarray, metric: str) -> float | np.ndarray:
    """A task metric (a float, or per-item values ``(n,)``) as what a search minimises: the
    error rate in percent (100 - accuracy in %) for acc and acc_norm, so one accuracy point
    weighs as much as one perplexity point; the gold NLL (nats) as it is for gold_nll."""
    return value if metric == "gold_nll" else TASK_LOSS_SCALE * (1.0 - value)


FIELDS = ("context", "choices", "gold", "id", "fewshot")
SCORING_VERSION = 1  # part of a task's fingerprint: a changed convention re-scores everything
BOOTSTRAP_SAMPLES = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class TaskItem:
    """One multiple-choice question: ``fewshot + context`` continued by each choice."""

    context: str
    choices: tuple[str, ...]
    gold: int
    id: str
    fewshot: str = ""


def _item(raw: object, where: str, line: int) -> TaskItem:
    """One validated item, or a ``DataError`` naming the line and the fix."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: each line must be a JSON object with context, choices and gold")
    extra = sorted(set(raw) - set(FIELDS))
    if extra:
        raise DataError(
            f"{where}: unknown field(s) {', '.join(extra)}; a task line has {', '.join(FIELDS)}"
        )
    for key in ("context", "choices", "gold"):
        if key not in raw:
            raise DataError(
                f"{where}: no {key!r}; every task line needs context (text), choices "
                "(a list of at least 2 texts) and gold (the right choice's index, from 0)"
            )
    context, choices, gold = raw["context"], raw["choices"], raw["gold"]
    fewshot = raw.get("fewshot", "")
    if not isinstance(context, str) or not isinstance(fewshot, str):
        raise DataError(f"{where}: context and fewshot must be strings")
    if not isinstance(choices, list) or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: choices must be a list of non-empty strings")
    if len(choices) < 2:
        raise DataError(
            f"{where}: {len(choices)} choice(s); a multiple-choice item needs at least 2"
        )
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise DataError(f"{where}: gold must be the index of the right choice (an integer from 0)")
    if not 0 <= gold < len(choices):
        raise DataError(
            f"{where}: gold {gold} is out of range for {len(choices)} choices "
            f"(0 to {len(choices) - 1})"
        )
    ident = raw.get("id", line)
    if not isinstance(ident, str | int) or isinstance(ident, bool):
        raise DataError(f"{where}: id must be a string or an integer")
    return TaskItem(context, tuple(choices), gold, str(ident), fewshot)


def task_name(spec: str | os.PathLike) -> tuple[str, Path]:
    """``(name, path)`` of ``--task`` value ``FILE`` (name = file stem) or ``NAME=FILE``."""
    text = os.fspath(spec)
    name, sep, rest = text.partition("=")
    if sep and _NAME.match(name) and not Path(text).exists():
        path = Path(rest)
    else:
        path = Path(text)
        name = path.name.removesuffix(".jsonl")
    if not _NAME.match(name):
        raise DataError(
            f"task name {name!r} (from {text}) may hold only letters, digits, '_', '.' and '-'; "
            "name it with --task NAME=FILE"
        )
    return name, path


@dataclass(frozen=True)
class Task:
    """A loaded multiple-choice task: items, and a fingerprint of what it scores.

    The fingerprint covers the items, the scoring convention and the pool's seed (whose
    tokenizer cuts the text), so the results store re-scores exactly when one changes.
    """

    name: str
    path: Path
    items: tuple[TaskItem, ...]
    fingerprint: str

    @classmethod
    def load(cls, pool: Pool, spec: str | os.PathLike, *, name: str | None = None) -> Task:
        """Read and check a task file (``spec`` = ``FILE`` or ``NAME=FILE``)."""
        default, path = task_name(spec)
        name = name or default
        if not path.is_file():
            raise DataError(f"task file {path} does not exist; check the --task path")
        items: list[TaskItem] = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"task {path} line {n}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg})") from None
                items.append(_item(raw, where, n))
        if not items:
            raise DataError(f"task file {path} holds no items; write one JSON object per line")
        seen: set[str] = set()
        for it in items:
            if it.id in seen:
                raise DataError(f"task {path}: id {it.id!r} is used twice; ids must be unique")
            seen.add(it.id)
        fp = sha256_json(
            {
                "items": [[it.fewshot, it.context, list(it.choices), it.gold] for it in items],
                "seed": pool.manifest.base_sha256,
                "scoring": SCORING_VERSION,
            }
        )
        return cls(name, path, tuple(items), fp)

    @property
    def n(self) -> int:
        return len(self.items)

    def subset(self, items: Sequence[int] | np.ndarray) -> Task:
        """The task restricted to ``items`` (indices, in that order), so that a race can
        score some items only; its own fingerprint keeps it apart in caches."""
        idx = [int(i) for i in items]
        fp = sha256_json({"task": self.fingerprint, "items": idx})
        return Task(self.name, self.path, tuple(self.items[i] for i in idx), fp)

    @cached_property
    def offsets(self) -> np.ndarray:
        """``(n + 1,)``: item i's choices are ``[offsets[i], offsets[i + 1])`` of the flat list."""
        return np.concatenate([[0], np.cumsum([len(it.choices) for it in self.items])]).astype(
            np.int64
        )

    @cached_property
    def gold(self) -> np.ndarray:
        """``(n,)`` index of the right choice within each item."""
        return np.asarray([it.gold for it in self.items], dtype=np.int64)

    @cached_property
    def choice_bytes(self) -> np.ndarray:
        """``(C,)`` UTF-8 bytes of each choice (acc_norm's length, lm-evaluation-harness)."""
        return np.asarray(
            [len(c.encode("utf-8")) for it in self.items for c in it.choices], dtype=np.float64
        )

    def windows(self, tokenizer: PreTrainedTokenizerBase, context: int, pad_id: int) -> Windows:
        """One window per (item, choice): ``[bos] context continuation``, targets on the
        continuation only; ``domain`` = item, ``doc`` = flat choice index; longest first.

        The context is cut from the left when the sequence exceeds ``context`` tokens (as
        lm-evaluation-harness does); a continuation that alone exceeds it is an error.
        """
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        # An empty context with no BOS leaves nothing to predict the first choice token from:
        # start it from EOS, as lm-evaluation-harness's prefix token does.
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        rows: list[tuple[list[int], int, int, int]] = []  # (sequence, cont tokens, item, choice)
        flat = 0
        for i, it in enumerate(self.items):
            ctx = it.fewshot + it.context
            stripped = ctx.rstrip()
            moved = ctx[len(stripped) :]  # trailing whitespace goes with the continuation
            ctx_ids = _encode(tokenizer, stripped)
            lead = bos or ([] if ctx_ids else eos)
            if not lead and not ctx_ids:
                raise DataError(
                    f"task {self.name} item {it.id}: the context is empty and the tokenizer "
                    "has no BOS or EOS token to start from; give the item a context"
                )
            for c in it.choices:
                cont = moved + DELIMITER + c
                whole = _encode(tokenizer, stripped + cont)
                if len(whole) > len(ctx_ids) and whole[: len(ctx_ids)] == ctx_ids:
                    cont_ids = whole[len(ctx_ids) :]
                else:  # the tokenizer merged across the boundary: score the parts apart
                    cont_ids = _encode(tokenizer, cont)
                    whole = ctx_ids + cont_ids
                if len(cont_ids) > context:
                    raise DataError(
                        f"task {self.name} item {it.id}: a choice is {len(cont_ids)} tokens, "
                        f"longer than the model's context ({context}); shorten it"
                    )
                seq = (lead + whole)[-(context + 1) :]
                rows.append((seq, len(cont_ids), i, flat))
                flat += 1
        inputs = np.full((len(rows), context), pad_id, dtype=np.int64)
        targets = np.full((len(rows), context), IGNORE, dtype=np.int64)
        lengths = np.zeros(len(rows), dtype=np.int64)
        for r, (seq, k, _, _) in enumerate(rows):
            x, y = seq[:-1], seq[1:]
            inputs[r, : len(x)] = x
            targets[r, len(y) - k : len(y)] = y[len(y) - k :]
            lengths[r] = len(x)
        order = np.argsort(-lengths, kind="stable")
        item = np.asarray([r[2] for r in rows], dtype=np.int64)
        choice = np.asarray([r[3] for r in rows], dtype=np.int64)
        return Windows(inputs[order], targets[order], item[order], lengths[order], choice[order])


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------- scores
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


# ---------------------------------------------------------------------- scoring
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
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        w = self.task.windows(tok, self.model.pool.manifest.context, pad)
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


# ---------------------------------------------------------------------- evaluator glue
def load_tasks(pool: Pool, specs: Sequence[str | os.PathLike | Task]) -> dict[str, Task]:
    """``{name: Task}`` for ``--task`` values (``FILE`` or ``NAME=FILE``) or loaded tasks."""
    out: dict[str, Task] = {}
    for s in specs:
        t = s if isinstance(s, Task) else Task.load(pool, s)
        if t.name in out:
            raise DataError(
                f"two tasks are named {t.name!r} ({out[t.name].path}, {t.path}); "
                "name one with --task NAME=FILE"
            )
        out[t.name] = t
    return out


def _stored(ev: Evaluator, task: Task, key: str, mixture: Mixture) -> TaskScore | None:
    """``task``'s stored score of ``mixture`` (merging the members ``key`` names), if any."""
    hit = None if ev.store is None else ev.store.get_task(key, task.fingerprint, mixture.key)
    return (
        None
        if hit is None or len(hit) != task.offsets[-1]
        else TaskScore.of(task, hit, cached=True)
    )


def score_tasks_here(
    ev: Evaluator, mixture: Mixture, key: str, found: dict[str, TaskScore]
) -> dict[str, TaskScore]:
    """Fill ``found`` with every task of ``ev`` it lacks: from the store when scored before,
    else scored on the weights the merged model holds now (``mixture``'s, merging the
    members ``key`` names) and stored."""
    for t in ev.tasks.values():
        if t.name in found:
            continue
        s = _stored(ev, t, key, mixture)
        if s is None:
            s = ev.task_scorer(t).score()
            if ev.store is not None:
                ev.store.put_task(key, t.fingerprint, mixture.key, mixture.as_dict(), s.choice_nll)
        found[t.name] = s
    return found


def with_task_scores(ev: Evaluator, results: Sequence[EvalResult]) -> list[EvalResult]:
    """``results`` (``EvalResult`` s of ``ev``) with their ``tasks`` filled: kept where a
    result carries them already, else from the results store when scored before, else
    merged and scored here once per mixture, and stored."""
    import dataclasses

    import torch

    tasks: dict[str, Task] = ev.tasks
    if not tasks:
        return list(results)
    found: dict[str, dict[str, TaskScore]] = {}
    for r in results:
        m = r.mixture
        if m.key in found:
            continue
        have = found[m.key] = {n: s for n, s in r.tasks.items() if n in tasks}  # a race's kept
        if len(have) == len(tasks):
            continue
        key = ev.pool_key(m)
        for t in tasks.values():
            if t.name not in have and (s := _stored(ev, t, key, m)) is not None:
                have[t.name] = s
        if len(have) < len(tasks):
            ev.merged.merge(torch.from_numpy(ev.member_weights(m)).float())
            score_tasks_here(ev, m, key, have)
    return [
        dataclasses.replace(r, tasks={n: found[r.mixture.key][n] for n in tasks}) for r in results
    ]


def task_frame(results: Sequence[EvalResult]) -> pd.DataFrame:
    """One row per mixture x task: ``mixture``, ``size``, ``task``, ``n``, ``acc`` (with
    ``acc_lo``/``acc_hi``, 95% bootstrap over items), ``acc_norm``, ``gold_nll``, ``cached``,
    ``weights`` (reports and notebooks read it)."""
    import pandas as pd

    rows = []
    for r in results:
        for name, s in getattr(r, "tasks", {}).items():
            lo, hi = s.intervals()["acc"]
            rows.append(
                {
                    "mixture": str(r.mixture),
                    "size": len(r.mixture.names),
                    "task": name,
                    "n": s.n,
                    "acc": s.acc,
                    "acc_lo": lo,
                    "acc_hi": hi,
                    "acc_norm": s.acc_norm,
                    "gold_nll": s.gold_nll,
                    "cached": s.cached,
                    "weights": r.mixture.as_dict(),
                }
            )
    return pd.DataFrame.from_records(rows)


def task_rows(results: Sequence[EvalResult]) -> list[dict]:
    """The ``"task"`` objects of ``--json``: one per mixture x task."""
    return [s.row(r.mixture.as_dict()) for r in results for s in getattr(r, "tasks", {}).values()]


__all__ = [
    "DELIMITER",
    "TASK_METRICS",
    "Task",
    "TaskItem",
    "TaskMetric",
    "TaskScore",
    "TaskScorer",
    "load_tasks",
    "task_name",
    "task_frame",
    "task_rows",
    "with_task_scores",
]
