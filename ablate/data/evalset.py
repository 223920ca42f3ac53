"""Eval documents: read once, tokenized once (cached in the pool), cut into windows.

Each document is scored on its own, in non-overlapping windows of the model's context
(the Paloma convention): every token but the document's first is predicted exactly once,
and no window sees another document. Results are reported per eval domain, with bits per
byte so that numbers compare across tokenizers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.pool import Pool
from ablate.pool.atomic import sha256_file, sha256_json, staged_dir, write_json
from ablate.pool.corpus import read_documents
from ablate.pool.errors import DataError
from ablate.pool.tokens import content_hash, encode_documents

log = logging.getLogger(__name__)

ALL = "all"  # the single domain's name when --eval-by is not given
IGNORE = -100


_CACHE_FILES = ("tokens.npy", "offsets.npy")


def _read_cache(cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Cached (tokens, offsets), or None when a file is damaged: a bad cache would score wrong
    tokens silently, and rebuilding it costs one tokenization."""
    try:
        meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
        ok = all(sha256_file(cache / f) == meta["sha256"][f] for f in _CACHE_FILES)
        if ok:
            return np.load(cache / "tokens.npy"), np.load(cache / "offsets.npy")
    except (OSError, ValueError, KeyError, TypeError):  # unreadable, not JSON, older format
        pass
    log.warning("eval cache %s is damaged or stale; tokenizing the eval set again", cache)
    return None


@dataclass(frozen=True)
class Windows:
    """Scoring batches' raw material: inputs/targets ``(W, C)``, domain and document per
    window ``(W,)``.

    Windows are sorted longest first and right-padded, so a batch of neighbours can be cut
    to its longest member: short documents cost their own length, not the full context.
    """

    inputs: np.ndarray
    targets: np.ndarray
    domain: np.ndarray
    lengths: np.ndarray  # (W,) real input tokens per window, non-increasing
    doc: np.ndarray  # (W,) index of the window's document in the eval set

    def units(self, rows: np.ndarray) -> Windows:
        """Windows ``rows`` (ascending, so still longest first), each its own unit: ``doc``
        is the window's position in ``rows`` (racing sums NLL per window, not per document)."""
        return Windows(
            self.inputs[rows],
            self.targets[rows],
            self.domain[rows],
            self.lengths[rows],
            np.arange(len(rows)),
        )

    def batches(self, batch_tokens: int) -> list[tuple[int, int, int]]:
        """``(start, stop, length)`` row ranges holding at most ``batch_tokens`` real-width tokens."""
        out, start, n = [], 0, len(self.lengths)
        while start < n:
            length = int(self.lengths[start])
            stop = min(n, start + max(1, batch_tokens // length))
            out.append((start, stop, length))
            start = stop
        return out


@dataclass(frozen=True)
class EvalSet:
    """Tokenized eval documents grouped into domains."""

    domains: tuple[str, ...]
    docs: tuple[np.ndarray, ...]  # token ids per document, [bos] ids [eos]
    doc_domain: np.ndarray  # (n_docs,) index into domains
    doc_bytes: np.ndarray  # (n_docs,) UTF-8 bytes of each text
    fingerprint: str

    @classmethod
    def load(
        cls,
        pool: Pool,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        by: str | None = None,
        text_field: str = "text",
    ) -> EvalSet:
        """Read eval data; tokenization is cached under ``POOL/eval_cache`` by content."""
        docs = read_documents(paths, text_field=text_field)
        labels = []
        for d in docs:
            if by is None:
                labels.append(ALL)
            elif by not in d.meta:
                fields = ", ".join(sorted(d.meta)) or "none"
                raise DataError(
                    f"eval document from {d.source} has no field {by!r} (fields: {fields})"
                )
            else:
                labels.append(str(d.meta[by]))
        texts = [d.text for d in docs]
        domains = tuple(sorted(set(labels)))
        fp = sha256_json(
            {"texts": content_hash(texts), "labels": labels, "seed": pool.manifest.base_sha256}
        )
        doc_domain = np.asarray([domains.index(x) for x in labels], dtype=np.int64)
        doc_bytes = np.asarray([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
        cache = pool.path / "eval_cache" / fp[:24]
        cached = _read_cache(cache) if (cache / "meta.json").is_file() else None
        if cached is not None:
            tokens, offsets = cached
        else:
            encoded = encode_documents(pool.tokenizer, texts)
            offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
            np.cumsum([len(e) for e in encoded], out=offsets[1:])
            tokens = np.concatenate(encoded)
            with staged_dir(cache) as tmp:  # replaces a damaged cache folder in one rename
                np.save(tmp / "tokens.npy", tokens)
                np.save(tmp / "offsets.npy", offsets)
                sha = {f: sha256_file(tmp / f) for f in _CACHE_FILES}
                meta = {
                    "fingerprint": fp,
                    "domains": list(domains),
                    "docs": len(texts),
                    "sha256": sha,
                }
                write_json(tmp / "meta.json", meta)
        split = tuple(tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1))
        return cls(domains, split, doc_domain, doc_bytes, fp)

    def subset(self, doc_indices: Sequence[int], tag: str) -> EvalSet:
        """The documents at ``doc_indices`` (e.g. a search/held-out split) as their own set."""
        idx = np.asarray(doc_indices, dtype=np.int64)
        if idx.size == 0:
            raise DataError(f"the {tag} split of the eval data is empty; add eval documents")
        used = sorted(set(self.doc_domain[idx].tolist()))
        remap = {old: new for new, old in enumerate(used)}
        return EvalSet(
            domains=tuple(self.domains[i] for i in used),
            docs=tuple(self.docs[i] for i in idx),
            doc_domain=np.asarray([remap[int(d)] for d in self.doc_domain[idx]], dtype=np.int64),
            doc_bytes=self.doc_bytes[idx],
            fingerprint=sha256_json({"parent": self.fingerprint, "docs": idx.tolist(), "tag": tag}),
        )

    def split(self, heldout: float, seed: int = 0) -> tuple[EvalSet, EvalSet]:
        """Split documents (stratified by domain) into a search set and a held-out set."""
        search, held = self.split_indices(heldout, seed)
        return self.subset(search, "search"), self.subset(held, "held-out")

    def split_indices(self, heldout: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """The document indices (sorted) of ``split``'s search and held-out sets."""
        if not 0 < heldout < 1:
            raise DataError(f"held-out fraction must be between 0 and 1, got {heldout}")
        rng = np.random.default_rng(seed)
        search, held = [], []
        for d in range(len(self.domains)):
            idx = rng.permutation(np.flatnonzero(self.doc_domain == d))
            k = int(round(len(idx) * heldout))
            k = min(max(k, 1), len(idx) - 1) if len(idx) > 1 else 0
            held.extend(idx[:k].tolist())
            search.extend(idx[k:].tolist())
        return sorted(search), sorted(held)

    @property
    def domain_bytes(self) -> np.ndarray:
        return np.bincount(
            self.doc_domain, weights=self.doc_bytes, minlength=len(self.domains)
        ).astype(np.int64)

    def windows(self, context: int, pad_id: int) -> Windows:
        """Cut every document into non-overlapping windows of ``context`` tokens."""
        inputs, targets, dom, lengths, docs = [], [], [], [], []
        for i, (doc, d) in enumerate(zip(self.docs, self.doc_domain, strict=True)):
            doc = np.asarray(doc, dtype=np.int64)
            for start in range(0, len(doc) - 1, context):
                x = doc[start : start + context]
                y = doc[start + 1 : start + context + 1]
                row_x = np.full(context, pad_id, dtype=np.int64)
                row_y = np.full(context, IGNORE, dtype=np.int64)
                row_x[: len(x)] = x
                row_y[: len(y)] = y  # the last window has one target fewer than inputs
                inputs.append(row_x)
                targets.append(row_y)
                dom.append(int(d))
                lengths.append(len(x))
                docs.append(i)
        if not inputs:
            raise DataError("the eval documents hold no tokens to score")
        order = np.argsort(-np.asarray(lengths), kind="stable")
        return Windows(
            np.stack(inputs)[order],
            np.stack(targets)[order],
            np.asarray(dom, dtype=np.int64)[order],
            np.asarray(lengths, dtype=np.int64)[order],
            np.asarray(docs, dtype=np.int64)[order],
        )
