"""Real models' scores, kept beside their record: scored once, read by every later validation.

Scoring a real model is the second cost of validation after training it (a forward pass
over the eval set and every task), and validating the same pool again (another merge,
other targets, more repeats, tomorrow's notebook) asks for exactly the same numbers. They
are stored in ``POOL/validation/<key>/scores/``, one file per eval set or task
fingerprint, each tied to the sha256 of the weights it was scored from (scores of other
weights are never read).

Once its scores are stored, a real model's weights are needed only to score it on an eval
set or task it has not met: ``validate(..., keep_weights=False)`` (``ablate validate
--no-keep-weights``) deletes them after scoring. At 135M parameters that is 540 MB per
model, 34 GB for a 16-mixture, four-seed validation.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.engine.scores import DocScores, TaskScore
from ablate.pool.atomic import write_bytes
from ablate.pool.errors import PoolError
from ablate.validation.models import ValidationRecord, folder_of, load_into

if TYPE_CHECKING:
    from ablate.data.evalset import EvalSet
    from ablate.evaluator import Evaluator
    from ablate.pool import Pool

SCORES_DIR = "scores"
_NAME_CHARS = 24  # of a fingerprint: 96 bits, like the models' own keys


def _file(pool: Pool, rec: ValidationRecord, kind: str, fingerprint: str) -> Path:
    return folder_of(pool, rec.key) / SCORES_DIR / f"{kind}-{fingerprint[:_NAME_CHARS]}.npz"


def _read(path: Path, rec: ValidationRecord, *keys: str) -> dict[str, np.ndarray] | None:
    """The arrays ``keys`` stored at ``path`` if they were scored from ``rec``'s weights; a
    missing, damaged, incomplete or stale file reads as None (the model is scored again, if
    it still can be)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["weights_sha256"]) != rec.weights_sha256:
                return None
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _write(path: Path, rec: ValidationRecord, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, weights_sha256=np.asarray(rec.weights_sha256), **arrays)
    write_bytes(path, buf.getvalue())  # atomic: a reader sees the old file or the new one


def weights_file(pool: Pool, rec: ValidationRecord) -> Path:
    return folder_of(pool, rec.key) / rec.weights_file


def stored_documents(pool: Pool, rec: ValidationRecord, eval_set: EvalSet) -> DocScores | None:
    """``rec``'s stored per-document scores on ``eval_set`` (None: not scored on it)."""
    hit = _read(_file(pool, rec, "evalset", eval_set.fingerprint), rec, "nll", "tokens")
    if hit is None or len(hit["nll"]) != len(eval_set.docs):
        return None
    return DocScores(nll=hit["nll"], tokens=hit["tokens"])


def store_documents(pool: Pool, rec: ValidationRecord, eval_set: EvalSet, docs: DocScores) -> None:
    """Store ``docs``, ``rec``'s per-document scores on ``eval_set``."""
    _write(_file(pool, rec, "evalset", eval_set.fingerprint), rec, nll=docs.nll, tokens=docs.tokens)


def real_scores(
    ev: Evaluator, rec: ValidationRecord, *, tasks: bool = True
) -> tuple[DocScores, dict[str, TaskScore]]:
    """``rec``'s per-document scores on ``ev``'s eval set and (``tasks``) its task scores,
    from the model's stored scores where they exist; the rest is scored (the model loaded
    into ``ev``'s skeleton, which then holds it) and stored."""
    pool = ev.pool
    docs = stored_documents(pool, rec, ev.eval_set)
    wanted = ev.tasks if tasks else {}
    found: dict[str, TaskScore] = {}
    for name, task in wanted.items():
        got = _read(_file(pool, rec, "task", task.fingerprint), rec, "choice_nll")
        if got is not None and len(got["choice_nll"]) == task.offsets[-1]:
            found[name] = TaskScore.of(task, got["choice_nll"], cached=True)
    if docs is not None and len(found) == len(wanted):
        return docs, found
    if not weights_file(pool, rec).is_file() and (folder_of(pool, rec.key) / SCORES_DIR).is_dir():
        raise PoolError(
            f"validation model {folder_of(pool, rec.key)} kept only its scores (its weights "
            "were dropped by keep_weights=False / --no-keep-weights), and this run needs it "
            "scored on an eval set or task it was not scored on: validate on the eval data "
            "and tasks it was scored on, or delete that folder to train it again"
        )
    load_into(ev, rec)
    if docs is None:
        docs = ev.scorer().score_documents()
        store_documents(pool, rec, ev.eval_set, docs)
    for name, task in wanted.items():
        if name not in found:
            found[name] = ev.task_scorer(task).score()
            nll = found[name].choice_nll
            _write(_file(pool, rec, "task", task.fingerprint), rec, choice_nll=nll)
    return docs, {n: found[n] for n in wanted}


def drop_weights(pool: Pool, rec: ValidationRecord) -> int:
    """Delete a scored real model's weights (its record and scores stay); bytes freed."""
    f = weights_file(pool, rec)
    if not (folder_of(pool, rec.key) / SCORES_DIR).is_dir() or not f.is_file():
        return 0  # never drop weights that nothing has scored
    size = f.stat().st_size
    f.unlink()
    return size
