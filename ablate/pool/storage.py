"""On-disk records of a pool: the manifest, a partition's token index, a member's record.

Layout::

    POOL/pool.json                          PoolManifest (written last by ``Pool.create``)
    POOL/base/                              seed model + tokenizer (HF format) for ``tiny``
    POOL/data/<partition>/tokens.bin        flat token ids (uint16 or uint32)
    POOL/data/<partition>/offsets.npy       document boundaries, int64 [n_docs + 1]
    POOL/data/<partition>/index.json        PartitionIndex
    POOL/members/<partition>/<unit>/        model.safetensors | adapter.safetensors, member.json
    POOL/members/<partition>/<unit>/        fisher.safetensors, fisher.json (FisherRecord; optional,
                                            written by ``ablate pool fisher``)
    POOL/results.sqlite                     results store (written by ``ablate``)

Every record carries ``format_version``; a pool written by a newer ablate is refused with a
message instead of being misread.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ablate.pool.errors import PoolError
from ablate.pool.recipe import Recipe, TinyModelSpec

FORMAT_VERSION = 1
FISHER_FILE = "fisher.safetensors"  # a member's diagonal Fisher, beside its weights
FISHER_RECORD = "fisher.json"  # its FisherRecord, written last

TokenDtype = Literal["uint16", "uint32"]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION


class PoolManifest(_Record):
    """What every member of the pool shares: where the seed is and how members train."""

    base: str = Field(description='"tiny" or the absolute path of a local Hugging Face model.')
    base_path: str = Field(description="Seed model folder; relative paths are inside the pool.")
    base_sha256: str = Field(description="Fingerprint of the seed weights (sha256 over its files).")
    vocab_size: int
    context: int = Field(description="Window length used for training and scoring.")
    token_dtype: TokenDtype
    recipe: Recipe
    tiny: TinyModelSpec | None = None
    created_at: str


class PartitionIndex(_Record):
    """A tokenized partition and how it is cut into base units."""

    name: str
    content_hash: str = Field(description="sha256 of the partition's document texts, in order.")
    sources: tuple[str, ...]
    n_docs: int
    n_tokens: int
    n_bytes: int = Field(description="UTF-8 bytes of the texts (for bits per byte).")
    token_dtype: TokenDtype
    tokens_sha256: str
    unit_tokens: int
    units: tuple[tuple[int, int], ...] = Field(
        description="Half-open document ranges, one per unit."
    )
    unit_hashes: tuple[str, ...] = Field(description="sha256 of each unit's token ids.")
    batches: tuple[str, ...] = Field(
        default=(),
        description="content_hash of each batch of documents appended by `pool add --clusters` "
        "(empty: the partition was written in one batch).",
    )


class TrainedRecord(_Record):
    """What every trained model records: its seed model, recipe, run and weights."""

    base_sha256: str
    method: Literal["full", "lora"]
    recipe: Recipe
    seed: int
    tokens_seen: int
    steps: int
    final_loss: float
    loss_curve: tuple[tuple[int, float], ...]
    wall_time_s: float
    device: str
    weights_file: str
    weights_sha256: str
    n_params: int
    created_at: str


class MemberRecord(TrainedRecord):
    """One trained member; its presence on disk marks the member as finished."""

    partition: str
    unit: int
    data_hash: str = Field(description="sha256 of the unit's token ids.")

    @property
    def member_id(self) -> str:
        return member_id(self.partition, self.unit)


class FisherRecord(_Record):
    """How a member's diagonal Fisher was estimated, and for which weights."""

    estimator: Literal["empirical"] = Field(
        default="empirical",
        description="Squared per-sequence gradients of the member's loss on its own tokens.",
    )
    member: str = Field(description="partition/unit of the member.")
    weights_sha256: str = Field(description="sha256 of the member weights it was computed at.")
    batches: int = Field(gt=0, description="Batches of the pool's batch size that were averaged.")
    sequences: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    fisher_sha256: str
    mean: float = Field(description="Mean over all parameters (a diagnostic).")
    created_at: str


def utc_now() -> str:
    """Record timestamps: UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def member_id(partition: str, unit: int) -> str:
    """Stable member name used in tables and keys: ``partition/unit``."""
    return f"{partition}/{unit}"


_R = TypeVar("_R", bound=_Record)


def read_record(path: str | os.PathLike, cls: type[_R]) -> _R:
    """Read and validate a JSON record, refusing newer formats with a clear message."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PoolError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PoolError(
            f"{path} is unreadable or not JSON ({e}); restore it or rebuild that entry"
        ) from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise PoolError(
            f"{path} has format version {version} but this ablate reads up to {FORMAT_VERSION}; "
            "upgrade ablate (pip install -U ablate)"
        )
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PoolError(f"{path} is not a valid {cls.__name__}: {where}: {first['msg']}") from None
