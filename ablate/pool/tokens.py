"""Tokenize once: a partition's documents become one flat token file plus document offsets.

Each document is stored as ``[bos] ids [eos]`` (where the tokenizer has those tokens), so
training can pack the flat file as a stream and scoring can read documents one by one. The
token file is memory-mapped on read: a partition larger than RAM costs nothing to open.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from ablate.pool.atomic import staged_dir, write_json
from ablate.pool.errors import PoolError
from ablate.pool.partition import cut_units
from ablate.pool.storage import PartitionIndex, TokenDtype, read_record

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_BATCH_DOCS = 256  # batch size for the fast tokenizer: amortises Rust call overhead
_COPY_CHUNK = 1 << 22  # 4 MiB: copying a partition's old tokens stays I/O-bound, memory flat


def token_dtype_for(vocab_size: int) -> TokenDtype:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


class ContentHasher:
    """``content_hash`` one text at a time, for documents streamed from disk.

    ``content_hash`` is this hasher run over a sequence, so a hash computed while a corpus
    streams past (``pool add --clusters`` on a corpus larger than memory) always equals the
    hash of the same texts held in a list.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.n_texts = 0
        self.n_bytes = 0  # UTF-8 bytes of the texts (a partition's ``n_bytes``)

    def update(self, text: str) -> bytes:
        """Hash one more text; returns its UTF-8 bytes (so a caller need not encode it again)."""
        b = text.encode("utf-8")
        self._h.update(len(b).to_bytes(8, "little"))  # length-prefixed: boundaries are hashed
        self._h.update(b)
        self.n_texts += 1
        self.n_bytes += len(b)
        return b

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def content_hash(texts: Iterable[str]) -> str:
    """sha256 over the texts in order, length-prefixed so boundaries are part of the hash."""
    h = ContentHasher()
    for t in texts:
        h.update(t)
    return h.hexdigest()


def encode_documents(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], progress: object = None
) -> list[np.ndarray]:
    """Token ids of each text as ``[bos] ids [eos]``, int64."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out: list[np.ndarray] = []
    for i in range(0, len(texts), _BATCH_DOCS):
        batch = list(texts[i : i + _BATCH_DOCS])
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        out.extend(np.asarray(bos + x + eos, dtype=np.int64) for x in ids)
        if progress is not None:
            progress.update(len(batch))
    return out


@dataclass
class _Encoded:
    """What ``_encode_into`` wrote: per-document token counts and the texts' hash and size."""

    lengths: np.ndarray  # (n_docs,) int64
    text: ContentHasher


def _encode_into(
    f: BinaryIO,
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    token_dtype: TokenDtype,
    sha: hashlib._Hash,
    progress: object = None,
) -> _Encoded:
    """Tokenize ``texts`` batch by batch straight into the open file ``f``.

    Memory is one batch of documents plus 8 bytes per document, whatever the partition's
    size: texts may be a generator over a spool file. ``sha`` is updated with the bytes
    written (``tokens_sha256``), which are exactly those of the concatenated token array.
    """
    text = ContentHasher()
    lengths = array("q")  # int64 per document, compact (a list of ints costs ~36 bytes each)
    batch: list[str] = []

    def flush() -> None:
        docs = encode_documents(tokenizer, batch, progress)
        flat = np.ascontiguousarray(np.concatenate(docs).astype(token_dtype))  # (tokens,)
        f.write(memoryview(flat))
        sha.update(memoryview(flat))
        lengths.extend(len(d) for d in docs)
        batch.clear()

    for t in texts:
        text.update(t)
        batch.append(t)
        if len(batch) == _BATCH_DOCS:
            flush()
    if batch:
        flush()
    return _Encoded(
        np.frombuffer(lengths, dtype=np.int64) if lengths else np.zeros(0, np.int64), text
    )


def _unit_hashes(
    path: Path, token_dtype: TokenDtype, offsets: np.ndarray, units: Sequence[tuple[int, int]]
) -> tuple[str, ...]:
    """sha256 of each unit's token range, read back from the written (memory-mapped) file."""
    if not units:
        return ()
    flat = np.memmap(path, dtype=token_dtype, mode="r")
    try:
        return tuple(
            hashlib.sha256(
                memoryview(np.ascontiguousarray(flat[offsets[a] : offsets[b]]))
            ).hexdigest()
            for a, b in units
        )
    finally:
        del flat


def _check_hash(name: str, encoded: _Encoded, text_hash: str | None) -> str:
    """The texts' hash; a caller's precomputed one must match what was tokenized."""
    got = encoded.text.hexdigest()
    if text_hash is not None and text_hash != got:
        raise PoolError(
            f"partition {name!r}: the documents changed between reading and tokenizing them; "
            f"run the add again"
        )
    return got


def write_partition(
    folder: Path,
    *,
    name: str,
    texts: Iterable[str],
    sources: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    token_dtype: TokenDtype,
    unit_tokens: int,
    progress: object = None,
    text_hash: str | None = None,
) -> PartitionIndex:
    """Tokenize ``texts`` into ``folder`` (staged, then renamed: never half-written).

    ``texts`` is read once, in batches, so a generator over a file works and memory does not
    grow with the partition. ``text_hash``, when the caller has already computed
    ``content_hash(texts)``, is checked against the texts actually tokenized.
    """
    with staged_dir(folder) as tmp:
        sha = hashlib.sha256()
        with open(tmp / "tokens.bin", "wb") as f:
            encoded = _encode_into(f, texts, tokenizer, token_dtype, sha, progress)
        lengths = encoded.lengths
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)  # (n_docs + 1,)
        np.cumsum(lengths, out=offsets[1:])
        units = cut_units(lengths.tolist(), unit_tokens)
        np.save(tmp / "offsets.npy", offsets)
        index = PartitionIndex(
            name=name,
            content_hash=_check_hash(name, encoded, text_hash),
            sources=tuple(sorted(set(sources))),
            n_docs=len(lengths),
            n_tokens=int(offsets[-1]),
            n_bytes=encoded.text.n_bytes,
            token_dtype=token_dtype,
            tokens_sha256=sha.hexdigest(),
            unit_tokens=unit_tokens,
            units=tuple((int(a), int(b)) for a, b in units),
            unit_hashes=_unit_hashes(tmp / "tokens.bin", token_dtype, offsets, units),
        )
        # No `batches` key in a partition written in one go: older ablates read it unchanged.
        write_json(tmp / "index.json", index.model_dump(mode="json", exclude={"batches"}))
    return index


def append_partition(
    part: TokenizedPartition,
    *,
    texts: Iterable[str],
    sources: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    progress: object = None,
    text_hash: str | None = None,
) -> PartitionIndex:
    """Append documents to a partition as new base units; its existing units stay as they are.

    New documents join a cluster that already has members (``pool add --clusters``): the old
    units keep their ranges and hashes, so their members stay valid and ``pool grow`` trains
    only the new units. The folder is rewritten staged (old tokens copied in chunks, then the
    new tokens streamed after them), never in place; ``texts`` is read once, as in
    ``write_partition``.
    """
    old = part.index
    old_offsets = part.offsets  # (n_old + 1,)
    with staged_dir(part.folder) as tmp:
        sha = hashlib.sha256()
        with open(tmp / "tokens.bin", "wb") as f:
            with open(part.folder / "tokens.bin", "rb") as src:
                while chunk := src.read(_COPY_CHUNK):
                    f.write(chunk)
                    sha.update(chunk)
            # The copy is hashed anyway: a damaged tokens.bin must not be re-blessed with a
            # fresh tokens_sha256 (then `pool verify` could no longer see the damage).
            if sha.copy().hexdigest() != old.tokens_sha256:
                raise PoolError(
                    f"{part.folder / 'tokens.bin'}: sha256 does not match index.json (the file "
                    f"is damaged); restore it, or remove {part.folder} and add its documents again"
                )
            encoded = _encode_into(f, texts, tokenizer, old.token_dtype, sha, progress)
        lengths = encoded.lengths
        offsets = np.concatenate([old_offsets, old_offsets[-1] + np.cumsum(lengths)])  # (n + 1,)
        new_units = [
            (a + old.n_docs, b + old.n_docs)
            for a, b in cut_units(lengths.tolist(), old.unit_tokens)
        ]
        text_hash = _check_hash(old.name, encoded, text_hash)
        batches = (old.batches or (old.content_hash,)) + (text_hash,)
        np.save(tmp / "offsets.npy", offsets)
        index = old.model_copy(
            update={
                "content_hash": hashlib.sha256("+".join(batches).encode()).hexdigest(),
                "sources": tuple(sorted(set(old.sources) | set(sources))),
                "n_docs": old.n_docs + len(lengths),
                "n_tokens": int(offsets[-1]),
                "n_bytes": old.n_bytes + encoded.text.n_bytes,
                "tokens_sha256": sha.hexdigest(),
                "units": old.units + tuple((int(a), int(b)) for a, b in new_units),
                "unit_hashes": old.unit_hashes
                + _unit_hashes(tmp / "tokens.bin", old.token_dtype, offsets, new_units),
                "batches": batches,
            }
        )
        write_json(tmp / "index.json", index.model_dump(mode="json"))
    return index


@dataclass(frozen=True)
class TokenizedPartition:
    """Read side of a tokenized partition: memory-mapped tokens and document offsets."""

    folder: Path
    index: PartitionIndex

    @classmethod
    def open(cls, folder: Path) -> TokenizedPartition:
        return cls(folder, read_record(folder / "index.json", PartitionIndex))

    @property
    def tokens(self) -> np.ndarray:
        return np.memmap(self.folder / "tokens.bin", dtype=self.index.token_dtype, mode="r")

    @property
    def offsets(self) -> np.ndarray:
        return np.load(self.folder / "offsets.npy")

    def unit_stream(self, unit: int) -> np.ndarray:
        """The unit's documents as one token stream (a view into the memmap)."""
        a, b = self.index.units[unit]
        offsets = self.offsets
        return self.tokens[offsets[a] : offsets[b]]

    def documents(self) -> list[np.ndarray]:
        tokens, offsets = self.tokens, self.offsets
        return [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
