"""Partition unlabeled text by clustering it, and keep the clusterer so later data joins it.

``pool add --clusters K`` fits a clusterer (``ablate.pool.clusterer``) on a reservoir sample of
the corpus, then streams every document to its nearest centroid: texts are spooled per cluster
and tokenized cluster by cluster into partitions ``c00``, ``c01``, ..., so a corpus larger
than memory clusters in bounded memory. The fitted clusterer is stored in the pool
(``clusters/``), so a later ``pool add --clusters`` assigns new documents to the same
partitions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ablate.pool.atomic import remove_stale_temporaries
from ablate.pool.clusterer import (
    CLUSTER_FOLDER,
    SAMPLE_DOCS,
    ClusterModel,
    ClusterOn,
    fit_clusters,
    read_cluster_record,
    require_sklearn,
)
from ablate.pool.corpus import Document, iter_documents
from ablate.pool.errors import DataError, PoolError
from ablate.pool.pool import ADD_LOCK
from ablate.pool.tokens import ContentHasher, TokenizedPartition, append_partition, write_partition

if TYPE_CHECKING:
    from ablate.pool.pool import Pool

SPOOL_BUFFER = 32 << 20  # bytes of spooled text held (all clusters) before appending to files


def cluster_folder(pool: Pool) -> Path:
    return pool.path / CLUSTER_FOLDER


def load_cluster_model(pool: Pool, device: str | None = None) -> ClusterModel | None:
    """The pool's stored clusterer, or None when it has none."""
    folder = cluster_folder(pool)
    if not (folder / "model.json").is_file():
        return None
    model = ClusterModel.load(folder, pool=pool, device=device)
    if model.record.on == "seed" and model.record.base_sha256 != pool.manifest.base_sha256:
        raise PoolError(
            f"{folder}: the cluster model embeds with another seed model; cluster into a new pool"
        )
    return model


def resolve_model(
    pool: Pool,
    docs: Iterable[Document],
    k: int | None,
    *,
    on: ClusterOn | None,
    seed: int | None,
    device: str | None = None,
) -> tuple[ClusterModel, bool]:
    """The clusterer for ``pool add --clusters [K]``: the pool's own, or a new fit.

    Returns ``(model, new)``. ``docs`` is read (once, for the reservoir sample) only when a new
    model is fitted. A bare ``--clusters`` (``k`` None) reuses the stored model; a ``K`` that
    disagrees with it (or another ``--cluster-on``/``--cluster-seed``) is refused, since new
    documents must join the partitions that already exist.
    """
    require_sklearn()
    stored = load_cluster_model(pool, device)
    if stored is not None:
        r = stored.record
        asked = {
            "--clusters": (k, r.k),
            "--cluster-on": (on, r.on),
            "--cluster-seed": (seed, r.seed),
        }
        clash = [f"{flag} {a}" for flag, (a, have) in asked.items() if a is not None and a != have]
        if clash:
            raise DataError(
                f"this pool's documents are already clustered (--clusters {r.k} --cluster-on "
                f"{r.on} --cluster-seed {r.seed}), not {', '.join(clash)}; pass a bare --clusters "
                f"to assign new documents to those clusters, or cluster into a new pool"
            )
        return stored, False
    if k is None:
        raise DataError(
            "this pool has no cluster model yet; say how many clusters to fit: --clusters K"
        )
    model = fit_clusters(
        docs,
        k,
        on=on or "tfidf",
        seed=0 if seed is None else seed,
        pool=pool,
        device=device,
        sample_docs=SAMPLE_DOCS,  # read at call time, so a test can shrink it
    )
    return model, True


class _Spool:
    """Each cluster's documents, spooled to one file per cluster while the corpus streams past.

    Records are length-prefixed UTF-8 (the framing ``content_hash`` hashes), buffered in memory
    up to ``SPOOL_BUFFER`` bytes over all clusters and then appended to the files, so memory is
    bounded and no file stays open (a thousand clusters need no thousand descriptors). Each
    cluster's ``content_hash`` is computed as its documents arrive.
    """

    def __init__(self, folder: Path, k: int) -> None:
        self.folder = folder
        self.hashes = [ContentHasher() for _ in range(k)]
        self.sources: list[set[str]] = [set() for _ in range(k)]
        self._buffers = [bytearray() for _ in range(k)]
        self._held = 0

    def add(self, cluster: int, doc: Document) -> None:
        b = self.hashes[cluster].update(doc.text)
        buf = self._buffers[cluster]
        buf += len(b).to_bytes(8, "little")
        buf += b
        self.sources[cluster].add(doc.source)
        self._held += 8 + len(b)
        if self._held >= SPOOL_BUFFER:
            self.flush()

    def flush(self) -> None:
        for c, buf in enumerate(self._buffers):
            if buf:
                with open(self.folder / f"{c}.bin", "ab") as f:
                    f.write(buf)
                buf.clear()
        self._held = 0

    def texts(self, cluster: int) -> Iterator[str]:
        """The cluster's texts back from its file, in corpus order, one at a time."""
        with open(self.folder / f"{cluster}.bin", "rb") as f:
            while head := f.read(8):
                yield f.read(int.from_bytes(head, "little")).decode("utf-8")


def _drop_unused_data_folder(folder: Path) -> None:
    """Remove a ``data/`` folder this call created, if it holds nothing but the add lock.

    A refused first ``pool add --clusters`` then leaves the pool exactly as it was.
    """
    with contextlib.suppress(OSError):
        if {p.name for p in folder.iterdir()} <= {ADD_LOCK}:
            (folder / ADD_LOCK).unlink(missing_ok=True)
            folder.rmdir()


def add_clustered(
    pool: Pool,
    paths: Sequence[str | os.PathLike],
    *,
    clusters: int | None,
    on: ClusterOn | None = None,
    seed: int | None = None,
    text_field: str = "text",
    device: str | None = None,
    progress: bool = True,
) -> list[str]:
    """``pool add --clusters [K]``: cluster documents into partitions ``c00``... of ``pool``.

    The first call fits the clusterer (``K`` clusters) and stores it in the pool; later calls
    (``clusters=None``) assign new documents to the same clusters, appending them to the
    existing partitions as new base units, so growing trains members only for the new units.
    Re-adding documents already added is a no-op.

    The corpus is streamed, never held: pass 1 (only when fitting) draws the reservoir sample;
    pass 2 assigns documents in batches and spools each cluster's texts to a temporary file in
    ``data/`` (same disk; ``.spool.*.tmp``, removed on every exit, swept after a crash) while
    hashing them; then each cluster is tokenized from its spool in batches. Memory stays
    bounded whatever the corpus size. Every check (wordless documents, too few documents,
    clashing settings) happens before the pool is written: a refusal leaves it as it was.

    Returns:
        The partitions that were created or received new documents.
    """
    require_sklearn()
    # Pass 1, lazily: the generator is read only if a new model is fitted.
    sample_pass = iter_documents(paths, text_field=text_field, warn_empty=False)
    model, new_model = resolve_model(pool, sample_pass, clusters, on=on, seed=seed, device=device)
    data = pool.data_folder
    fresh = not data.exists()
    try:
        with pool.add_lock():
            if new_model and (cluster_folder(pool) / "model.json").is_file():
                raise DataError(
                    "another `pool add --clusters` fitted this pool's cluster model meanwhile; "
                    "run again with a bare --clusters to join its clusters"
                )
            remove_stale_temporaries(data)  # leftovers of a crashed add (we hold the lock)
            spool_dir = Path(tempfile.mkdtemp(prefix=".spool.", suffix=".tmp", dir=data))
            try:
                spool = _Spool(spool_dir, model.record.k)
                total = model.record.corpus_docs if new_model else None
                with tqdm(total=total, desc="assign", unit="doc", disable=not progress) as bar:
                    for docs, labels in model.assign_batches(
                        iter_documents(paths, text_field=text_field)
                    ):
                        for doc, lab in zip(docs, labels.tolist(), strict=True):
                            spool.add(lab, doc)
                        bar.update(len(docs))
                spool.flush()
                plan = _plan(pool, model, spool)
                if not plan and not new_model:
                    return []
                if new_model:
                    model.save(cluster_folder(pool))
                total = sum(spool.hashes[c].n_texts for c in plan)
                with tqdm(total=total, desc="tokenize", unit="doc", disable=not progress) as bar:
                    for c, append in plan.items():
                        name = model.names[c]
                        if append:
                            append_partition(
                                TokenizedPartition.open(data / name),
                                texts=spool.texts(c),
                                sources=spool.sources[c],
                                tokenizer=pool.tokenizer,
                                progress=bar,
                                text_hash=spool.hashes[c].hexdigest(),
                            )
                        else:
                            write_partition(
                                data / name,
                                name=name,
                                texts=spool.texts(c),
                                sources=spool.sources[c],
                                tokenizer=pool.tokenizer,
                                token_dtype=pool.manifest.token_dtype,
                                unit_tokens=pool.manifest.recipe.unit_tokens,
                                progress=bar,
                                text_hash=spool.hashes[c].hexdigest(),
                            )
            finally:
                shutil.rmtree(spool_dir, ignore_errors=True)
    finally:
        if fresh:
            _drop_unused_data_folder(data)
    return [model.names[c] for c in plan]


def _plan(pool: Pool, model: ClusterModel, spool: _Spool) -> dict[int, bool]:
    """Cluster -> whether it is appended to (False: a new partition); re-adds left out."""
    parts = pool.partitions
    plan: dict[int, bool] = {}
    for c in sorted(range(model.record.k), key=lambda c: model.names[c]):
        if not spool.hashes[c].n_texts:
            continue
        name = model.names[c]
        idx = parts[name].index if name in parts else None
        if idx is not None and spool.hashes[c].hexdigest() in (idx.content_hash, *idx.batches):
            continue
        plan[c] = idx is not None
    return plan


def summary(pool: Pool) -> dict | None:
    """``pool ls``'s view of the clusterer: settings and each cluster's top terms."""
    folder = cluster_folder(pool)
    if not (folder / "model.json").is_file():
        return None
    r = read_cluster_record(folder)
    return {
        "k": r.k,
        "on": r.on,
        "seed": r.seed,
        "sample_docs": r.sample_docs,
        "top_terms": dict(zip(r.names, (list(t) for t in r.top_terms), strict=True)),
    }


__all__ = [
    "ClusterOn",
    "add_clustered",
    "cluster_folder",
    "load_cluster_model",
    "resolve_model",
    "summary",
]
