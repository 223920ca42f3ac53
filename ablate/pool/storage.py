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
    POOL/members/<partition>/<unit>/        gram.safetensors, gram.json (GramRecord; optional,
                                            written by ``ablate pool gram``)
    POOL/results.sqlite                     results store (written by ``ablate``)

Every record carries ``format_version``; a pool written by a newer ablate is refused with a
message instead of being misread.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from ablate.pool.errors import PoolError
from ablate.pool.recipe import Recipe, TinyModelSpec

FORMAT_VERSION = 1
FISHER_FILE = "fisher.safetensors"  # a member's diagonal Fisher, beside its weights
FISHER_RECORD = "fisher.json"  # its FisherRecord, written last

TokenDtype = Literal["uint16", "uint32"]
# Merges an evaluator can use for every mixture it scores (``--merge``; parameter-free, and
# recorded in the results' keys unless it is the plain average); a pool records the one its
# commands use by default (``PoolManifest.merge``). The methods are ``ablate.engine.merges``.
PoolMerge = Literal["average", "fisher", "fisher_tensor", "fisher_damped", "regmean"]
POOL_MERGES: tuple[str, ...] = get_args(PoolMerge)


def check_merge(merge: str) -> PoolMerge:
    """``merge`` if it names a pool merge; refused in one line otherwise (before any write:
    ``Pool.create``, ``EvaluatorConfig`` and ``MemberLayout`` all ask here)."""
    if merge not in POOL_MERGES:
        known = ", ".join(POOL_MERGES)
        raise PoolError(f"unknown merge {merge!r}: --merge must be one of {known}")
    return merge  # type: ignore[return-value]


# How a pool's merged proxies are read per eval domain (``--proxy-level``; recorded in
# pool.json unless "none"): "none" scores them as they are, "specialisation" lowers each
# domain's log perplexity by how much its best member gains over the seed there
# (``ablate.engine.levels``). Stored scores stay as scored: it is applied on reading.
ProxyLevel = Literal["none", "specialisation"]
PROXY_LEVELS: tuple[str, ...] = get_args(ProxyLevel)


def check_proxy_level(level: str) -> ProxyLevel:
    """``level`` if it names a proxy level; refused in one line otherwise."""
    if level not in PROXY_LEVELS:
        known = ", ".join(PROXY_LEVELS)
        raise PoolError(f"unknown proxy level {level!r}: --proxy-level must be one of {known}")
    return level  # type: ignore[return-value]


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
    merge: PoolMerge = Field(
        "average",
        description="How eval, search and validate merge a mixture's members unless --merge "
        "says otherwise (left out of pool.json while it is the plain average).",
    )
    proxy_level: ProxyLevel = Field(
        "none",
        description="How eval, search and validate read each eval domain's proxy perplexity "
        "unless --proxy-level says otherwise: none (as scored) or specialisation (lowered "
        "where one partition's member gains most over the seed; left out of pool.json while "
        "it is none).",
    )

    @model_serializer(mode="wrap")
    def _omit_plain_average(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Pools made before the field existed read back, and write, exactly as they were.
        data = handler(self)
        if data.get("merge") == "average":
            del data["merge"]
        if data.get("proxy_level") == "none":
            del data["proxy_level"]
        return data


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


class GramRecord(_Record):
    """How a member's input Gram matrices were computed, and for which weights."""

    member: str = Field(description="partition/unit of the member.")
    weights_sha256: str = Field(description="sha256 of the member weights it was computed at.")
    batches: int = Field(gt=0, description="Batches of the pool's batch size that were averaged.")
    tokens: int = Field(gt=0, description="Input tokens the Grams average over.")
    seq_len: int = Field(gt=0)
    gram_sha256: str
    created_at: str
    shares: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Weights whose Gram is another weight's (layers that read the same input, such as "
            "q_proj and v_proj), stored once under that weight's name: weight -> stored name."
        ),
    )


class PreconditionerRecord(_Record):
    """Which seed, data and batches a pool's member preconditioner was estimated from
    (``ablate.pool.preconditioner``)."""

    base_sha256: str
    seed_data_sha256: str = Field(description="sha256 of the tokenized seed data it read.")
    batches: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    sha256: str = Field(description="sha256 of preconditioner.safetensors.")
    created_at: str


@dataclass(frozen=True)
class MemberStatistic:
    """One kind of per-member statistic a merge reads (``ablate.pool.statistics``): its name
    (the ``ablate pool NAME`` command, the file stem and the results-key field), what it is
    called in messages, and its record class (with a ``<name>_sha256`` field). Full-weight
    and LoRA members have each (LoRA: of the adapted weights, at the effective weights)."""

    name: str
    what: str  # in "the <merge> merge needs each member's <what>"
    merge: str
    record_cls: type[_Record]

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def record_file(self) -> str:
        return f"{self.name}.json"

    def sha(self, record: _Record) -> str:
        """The recorded sha256 of the tensors file."""
        return getattr(record, f"{self.name}_sha256")

    def command(self, pool_path: Path, force: bool = False) -> str:
        return f"`ablate pool {self.name} {pool_path}{' --force' if force else ''}`"


FISHER = MemberStatistic(
    name="fisher", what="Fisher information", merge="Fisher", record_cls=FisherRecord
)
GRAM = MemberStatistic(
    name="gram", what="input Gram matrices", merge="RegMean", record_cls=GramRecord
)
# Every statistic a member may have beside its weights (``pool verify`` checks each it finds).
MEMBER_STATISTICS = (FISHER, GRAM)
# The statistic each pool merge reads (None: the weights alone); the merge methods'
# ``statistic`` names say the same (a test holds them together).
MERGE_STATISTIC: dict[str, MemberStatistic | None] = {
    "average": None,
    "fisher": FISHER,
    "fisher_tensor": FISHER,
    "fisher_damped": FISHER,
    "regmean": GRAM,
}


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
