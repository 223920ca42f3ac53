"""Tokenize once: a partition's documents become one flat token file plus document offsets.

Each document is stored as ``[bos] ids [eos]`` (where the tokenizer has those tokens), so
training can pack the flat file as a stream and scoring can read documents one by one. The
token file is memory-mapped on read: a partition larger than RAM costs nothing to open.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pool.atomic import staged_dir, write_json
from pool.partition import cut_units
from pool.storage import PartitionIndex, TokenDtype, read_record

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_BATCH_DOCS = 256  # batch size for the fast tokenizer: amortises Rust call overhead


def token_dtype_for(vocab_size: int) -> TokenDtype:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


def content_hash(texts: Sequence[str]) -> str:
    """sha256 over the texts in order, length-prefixed so boundaries are part of the hash."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
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


def write_partition(
    folder: Path,
    *,
    name: str,
    texts: Sequence[str],
    sources: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    token_dtype: TokenDtype,
    unit_tokens: int,
    progress: object = None,
    text_hash: str | None = None,
) -> PartitionIndex:
    """Tokenize ``texts`` into ``folder`` (staged, then renamed: never half-written).

    ``text_hash`` is ``content_hash(texts)`` when the caller has already computed it.
    """
    docs = encode_documents(tokenizer, texts, progress)
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # C-contiguous, native byte order: ``tofile`` writes exactly the bytes of ``memoryview(flat)``,
    # so hashing the array in memory equals hashing tokens.bin (no re-read, no copies).
    flat = np.ascontiguousarray(
        np.concatenate(docs).astype(token_dtype) if docs else np.zeros(0, token_dtype)
    )
    units = cut_units(lengths.tolist(), unit_tokens)
    unit_hashes = tuple(
        hashlib.sha256(memoryview(flat[offsets[a] : offsets[b]])).hexdigest() for a, b in units
    )
    with staged_dir(folder) as tmp:
        flat.tofile(tmp / "tokens.bin")
        np.save(tmp / "offsets.npy", offsets)
        index = PartitionIndex(
            name=name,
            content_hash=text_hash if text_hash is not None else content_hash(texts),
            sources=tuple(sorted(set(sources))),
            n_docs=len(docs),
            n_tokens=int(offsets[-1]),
            n_bytes=sum(len(t.encode("utf-8")) for t in texts),
            token_dtype=token_dtype,
            tokens_sha256=hashlib.sha256(memoryview(flat)).hexdigest(),
            unit_tokens=unit_tokens,
            units=tuple((int(a), int(b)) for a, b in units),
            unit_hashes=unit_hashes,
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
