"""Downstream multiple-choice tasks: the file format, its items, and their windows.

Perplexity is what Na et al. (EMNLP 2024) validate, but mixtures are chosen on downstream
accuracy (RegMix, CLIMB and DoReMi report task averages). A task is a JSONL file, one
item per line::

    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0,
     "id": "q1", "fewshot": "The capital of Spain is Madrid.\\n"}

Each choice is the continuation ``" " + choice`` of ``fewshot + context`` (lm-evaluation-
harness's convention; scoring is ``ablate.engine.task_scoring``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.data.evalset import IGNORE, Windows
from ablate.pool.atomic import sha256_json
from ablate.pool.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ablate.pool import Pool

DELIMITER = " "  # lm-evaluation-harness's default target_delimiter between context and choice

FIELDS = ("context", "choices", "gold", "id", "fewshot")
SCORING_VERSION = 1  # part of a task's fingerprint: a changed convention re-scores everything
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


__all__ = [
    "DELIMITER",
    "FIELDS",
    "SCORING_VERSION",
    "Task",
    "TaskItem",
    "load_tasks",
    "task_name",
]
