"""The clusterer: embed unlabeled documents and fit, store and apply k-means over them.

Real corpora rarely come with tidy domains: CLIMB (Diao et al., 2025, "CLIMB: CLustering-based
Iterative Data Mixture Bootstrapping") clusters an unlabeled web corpus by embeddings before it
searches mixtures, and Na et al. (EMNLP 2024) cut corpora into 100+ base units. Two embeddings:

* ``tfidf``: latent semantic analysis (Deerwester et al., 1990; scikit-learn's documented
  text-clustering recipe): hashed TF-IDF (``HashingVectorizer``, sublinear term frequency,
  smoothed IDF fitted on the sample), projected by a ``TruncatedSVD`` fitted on the sample to
  ``lsa_components(k, m, features)`` dimensions, rows L2-normalised, clustered by full k-means
  (Lloyd, ``_N_INIT_FULL`` seeded starts). Raw TF-IDF is too sparse and high-dimensional for
  k-means to separate topics that share common words; the SVD merges co-occurring terms first;
* ``seed``: mean-pooled final hidden states of the pool's seed model (batched, on the device
  the pool trains on), L2-normalised, clustered by ``MiniBatchKMeans``.

Both are fitted on a bounded reservoir sample of the corpus (Vitter's algorithm R, seeded),
then every document is assigned to its nearest centroid in a streaming pass, so a corpus
larger than memory clusters in bounded memory. Clusters are named ``c00``, ``c01``, ...
largest first (in the sample), and the fitted clusterer is stored in the pool without
pickle: centroids (and the SVD components, restricted to the hashed features the sample saw)
in ``clusters/centroids.safetensors``, the vectoriser's settings, IDF and the vocabulary of
each cluster's top terms in ``clusters/model.json`` (with a format version), so a later
``pool add --clusters`` assigns new documents to the same partitions. What a pool does with
the clusterer (spooling, tokenizing each cluster as a partition) is ``ablate.pool.cluster``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import load, save

from ablate.pool.atomic import staged_dir, write_json
from ablate.pool.corpus import Document
from ablate.pool.embedding import N_FEATURES, SAMPLE_CHARS, check_rows, embed_seed, hasher, tfidf
from ablate.pool.errors import DataError, PoolError

if TYPE_CHECKING:
    from ablate.pool.pool import Pool

CLUSTER_FORMAT_VERSION = 2  # 2: tfidf clusters live in an LSA space (SVD components stored)
CLUSTER_FOLDER = "clusters"
ClusterOn = Literal["tfidf", "seed"]

SAMPLE_DOCS = 20_000  # reservoir size: fit time and memory stay bounded whatever the corpus
TOP_TERMS = 8  # terms per cluster shown by `pool ls`
ASSIGN_BATCH = 1024  # documents vectorised per step of the streaming pass
_N_INIT = 10  # MiniBatchKMeans starts tried (cheap: on a subsample); the best inertia wins
_N_INIT_FULL = 20  # full k-means starts on the LSA rows: single starts vary (ARI 0.78-0.96 on
# the demo corpus), the best-inertia of 20 is stable
FULL_KMEANS_WORK = 2**25  # sample docs x clusters x dims above which Lloyd's k-means gets slow:
# each iteration of each of 20 starts costs that many multiply-adds (~0.08 s on one CPU thread
# at 2^25, so 20 starts stay within about a minute); MiniBatchKMeans beyond
LSA_MIN, LSA_PER_CLUSTER, LSA_MAX = 24, 4, 256  # see lsa_components


@cache
def _has_sklearn() -> bool:
    return importlib.util.find_spec("sklearn") is not None


def require_sklearn() -> None:
    """Raise a ``DataError`` with the install line when scikit-learn is missing."""
    if not _has_sklearn():
        raise DataError(
            "clustering (--clusters) needs scikit-learn; install it with: pip install 'ablate-sim[cluster]'"
        )


class ClusterModelRecord(BaseModel):
    """``clusters/model.json``: how documents are embedded and which cluster is which."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = CLUSTER_FORMAT_VERSION
    k: int = Field(description="Number of clusters (partitions c00 ... c{k-1}).")
    on: ClusterOn = Field(description="Embedding: hashed TF-IDF or the seed model's hidden states.")
    seed: int = Field(description="--cluster-seed: reservoir sample and k-means initialisation.")
    names: tuple[str, ...] = Field(description="Partition name of each centroid row.")
    n_features: int = Field(description="Hashed TF-IDF width (also used for top terms).")
    n_components: int | None = Field(
        default=None, description="LSA dimensions the tfidf rows are projected to (on = tfidf)."
    )
    sample_docs: int = Field(description="Documents the model was fitted on.")
    corpus_docs: int = Field(description="Documents in the corpus the sample was drawn from.")
    idf: tuple[tuple[int, float], ...] = Field(
        description="IDF of every hashed feature seen in the sample, as (feature, idf)."
    )
    default_idf: float = Field(description="IDF of a feature the sample never saw.")
    vocabulary: dict[str, str] = Field(
        description="Hashed feature -> the sample's most frequent term in it (top terms only)."
    )
    top_terms: tuple[tuple[str, ...], ...] = Field(description="Top terms of each cluster.")
    base_sha256: str | None = Field(
        default=None, description="Seed model the embeddings came from (on = seed)."
    )
    centroids_sha256: str = Field(description="sha256 of centroids.safetensors.")


@dataclass
class ClusterModel:
    """A fitted clusterer: embed documents, assign each to its nearest centroid."""

    record: ClusterModelRecord
    centroids: np.ndarray  # (k, D) float32, in the space of L2-normalised rows
    components: np.ndarray | None = None  # (D, S) float32 SVD components over the S seen
    # hashed features (the IDF pairs' order), on = tfidf
    pool: Pool | None = None  # the pool whose seed model embeds documents (on = seed)
    device: str | None = None
    _idf: np.ndarray | None = field(default=None, repr=False)  # (F,) expanded once, on first use
    _project: np.ndarray | None = field(default=None, repr=False)  # (F, D) expanded once

    # ------------------------------------------------------------------ embedding
    def embed(self, docs: Sequence[Document]) -> np.ndarray:
        """Rows ``(len(docs), D)`` in the centroids' space; a document with nothing to embed
        is a ``DataError`` naming it."""
        if self.record.on == "seed":
            return embed_seed(self._seed_pool(), docs, self.device)
        if self._idf is None:
            self._idf = idf_vector(self.record)
            self._project = projection(self.record, self.components)
        counts = hasher(self.record.n_features).transform([d.text for d in docs])
        check_rows(counts, docs)
        return lsa_rows(tfidf(counts, self._idf), self._project)

    def _seed_pool(self) -> Pool:
        if self.pool is None:
            raise PoolError("a seed-model clusterer needs its pool to embed documents")
        return self.pool

    def assign(self, docs: Sequence[Document]) -> np.ndarray:
        """Cluster index of each document ``(len(docs),)`` int64: the nearest centroid."""
        labels = [lab for _, lab in self.assign_batches(docs)]
        return np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)

    def assign_batches(
        self, docs: Iterable[Document]
    ) -> Iterator[tuple[list[Document], np.ndarray]]:
        """A document stream in batches of ``ASSIGN_BATCH``, each with its cluster indices."""
        batch: list[Document] = []
        for d in docs:
            batch.append(d)
            if len(batch) == ASSIGN_BATCH:
                yield batch, self._nearest(self.embed(batch))
                batch = []
        if batch:
            yield batch, self._nearest(self.embed(batch))

    def _nearest(self, x) -> np.ndarray:
        # argmin |x - c|^2 = argmax (x . c - |c|^2 / 2): one product, sparse or dense x.
        c = self.centroids
        scores = np.asarray(x @ c.T) - 0.5 * (c * c).sum(1)  # (B, k)
        return scores.argmax(1)

    # ------------------------------------------------------------------ storage
    def save(self, folder: Path) -> None:
        """Write ``model.json`` and ``centroids.safetensors`` into ``folder`` atomically."""
        tensors = {"centroids": np.ascontiguousarray(self.centroids, dtype=np.float32)}
        if self.components is not None:
            tensors["components"] = np.ascontiguousarray(self.components, dtype=np.float32)
        data = save(tensors)
        record = self.record.model_copy(
            update={"centroids_sha256": hashlib.sha256(data).hexdigest()}
        )
        with staged_dir(folder) as tmp:
            (tmp / "centroids.safetensors").write_bytes(data)
            write_json(tmp / "model.json", record.model_dump(mode="json"))
        self.record = record

    @classmethod
    def load(cls, folder: Path, *, pool: Pool | None = None, device: str | None = None):
        """Read a stored clusterer; refuse another format version or a damaged file clearly."""
        record = read_cluster_record(folder)
        weights = folder / "centroids.safetensors"
        try:
            data = weights.read_bytes()
        except OSError as err:
            raise PoolError(f"{weights}: cannot read ({err.strerror}); restore it") from None
        if hashlib.sha256(data).hexdigest() != record.centroids_sha256:
            raise PoolError(
                f"{weights}: sha256 does not match model.json (the file is damaged); restore it"
            )
        tensors = load(data)
        centroids = tensors.get("centroids")
        components = tensors.get("components")
        lsa = record.on == "tfidf"
        if (
            centroids is None
            or centroids.shape[0] != record.k
            or (components is not None) != lsa
            or (
                lsa
                and (
                    components.shape != (record.n_components, len(record.idf))
                    or centroids.shape[1] != record.n_components
                )
            )
        ):
            raise PoolError(
                f"{weights}: centroids do not match model.json ({record.k} clusters); restore it "
                f"or cluster into a new pool"
            )
        return cls(
            record,
            centroids.astype(np.float32),
            None if components is None else components.astype(np.float32),
            pool=pool,
            device=device,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return self.record.names


def read_cluster_record(folder: Path) -> ClusterModelRecord:
    """``folder/model.json`` alone (no centroids read or hashed: ``pool ls`` needs no more);
    another format version or a damaged file is refused clearly."""
    path = folder / "model.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PoolError(
            f"{path}: cannot read the pool's cluster model ({err}); restore it from a backup "
            f"or start a new pool"
        ) from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != CLUSTER_FORMAT_VERSION:
        raise PoolError(
            f"{path}: cluster model format {version!r}, but this ablate reads format "
            f"{CLUSTER_FORMAT_VERSION}; use the ablate version that wrote it, or cluster "
            f"into a new pool"
        )
    try:
        record = ClusterModelRecord.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise PoolError(
            f"{path}: invalid cluster model ({'.'.join(map(str, first['loc']))}: "
            f"{first['msg']}); restore it or cluster into a new pool"
        ) from None
    return record


# ---------------------------------------------------------------------- embedding
def idf_vector(record: ClusterModelRecord) -> np.ndarray:
    """The IDF of every hashed feature ``(n_features,)``, expanded from the stored pairs."""
    idf = np.full(record.n_features, record.default_idf, dtype=np.float32)
    if record.idf:
        cols, vals = zip(*record.idf, strict=True)
        idf[list(cols)] = vals
    return idf


def projection(record: ClusterModelRecord, components: np.ndarray | None) -> np.ndarray | None:
    """The SVD components expanded to every hashed feature ``(n_features, D)`` float32.

    Features the sample never saw have zero components (SVD of an all-zero column), so only
    the seen ones are stored; expanding once makes each batch's projection one sparse GEMM.
    """
    if components is None:
        return None
    full = np.zeros((record.n_features, components.shape[0]), dtype=np.float32)
    full[[f for f, _ in record.idf]] = components.T
    return full


def lsa_rows(x, project: np.ndarray | None):
    """TF-IDF rows ``(B, F)`` projected to the LSA space ``(B, D)`` and L2-normalised."""
    if project is None:
        return x
    from sklearn.preprocessing import normalize

    return normalize(np.asarray(x @ project, dtype=np.float32))


def lsa_components(k: int, m: int, features: int) -> int:
    """LSA dimensions for ``k`` clusters of ``m`` sample documents using ``features`` hashed
    features: ``clip(4k, 24, 256)``, but at most ``min(m, features)``, the rank of the sample
    (then the projection loses nothing: see ``_svd_components``).

    Too few dimensions merge topics, too many bring back the sparse noise LSA removes
    (demo corpus, k=6: ARI 0.90-0.96 at 20-30 dims, 0.55-0.7 at 100); 4 per cluster keeps
    k topics apart, 24 is the floor where small k was stable, 256 bounds the stored
    components (256 x 2^16 fp32 = 64 MiB at most) and the fit's time.
    """
    d = min(max(LSA_PER_CLUSTER * k, LSA_MIN), LSA_MAX)
    return max(1, min(d, m, features))


# ---------------------------------------------------------------------- fitting
def reservoir_sample(docs: Iterable[Document], size: int, seed: int) -> tuple[list[Document], int]:
    """Algorithm R (Vitter, 1985): a uniform sample of ``size`` documents in one pass.

    Returns the sample in corpus order and the number of documents seen. Sampled texts are cut
    to ``SAMPLE_CHARS`` characters, so memory is bounded by ``size * SAMPLE_CHARS``.
    """
    rng = random.Random(seed)
    picked: list[tuple[int, Document]] = []
    n = 0
    for n, doc in enumerate(docs, 1):  # noqa: B007 - n counts the corpus
        if len(doc.text) > SAMPLE_CHARS:
            doc = Document(doc.text[:SAMPLE_CHARS], doc.meta, doc.source, doc.where)
        if len(picked) < size:
            picked.append((n - 1, doc))
        else:
            j = rng.randrange(n)
            if j < size:
                picked[j] = (n - 1, doc)
    picked.sort(key=lambda p: p[0])
    return [d for _, d in picked], n


def fit_clusters(
    docs: Iterable[Document],
    k: int,
    *,
    on: ClusterOn = "tfidf",
    seed: int = 0,
    pool: Pool | None = None,
    device: str | None = None,
    sample_docs: int = SAMPLE_DOCS,
) -> ClusterModel:
    """Fit ``k`` clusters on a reservoir sample of ``docs`` (a stream: read once).

    Raises:
        DataError: ``k < 1``, fewer documents than clusters, a document with no words, or
            scikit-learn missing.
    """
    require_sklearn()
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"--clusters must be a whole number >= 1, got {k!r}")
    if on == "seed" and pool is None:
        raise DataError("--cluster-on seed embeds with the pool's seed model; give the pool")
    sample, n = reservoir_sample(docs, max(sample_docs, k), seed)
    if n < k:
        raise DataError(
            f"cannot make {k} clusters from {n} document(s) (each cluster needs at least one); "
            f"use --clusters {n} or fewer, or add more documents"
        )
    counts = hasher(N_FEATURES).transform([d.text for d in sample])
    check_rows(counts, sample)
    df = np.bincount(counts.indices, minlength=N_FEATURES)  # (F,) documents per feature
    m = len(sample)
    idf_all = (np.log((1.0 + m) / (1.0 + df)) + 1.0).astype(np.float32)  # smoothed, as sklearn
    seen = np.flatnonzero(df)
    lsa = on == "tfidf"
    dims = lsa_components(k, m, len(seen)) if lsa else None
    record = ClusterModelRecord(
        k=k,
        on=on,
        seed=seed,
        names=(),
        n_features=N_FEATURES,
        n_components=dims,
        sample_docs=m,
        corpus_docs=n,
        idf=tuple((int(i), float(idf_all[i])) for i in seen),
        default_idf=float(math.log(1.0 + m) + 1.0),
        vocabulary={},
        top_terms=(),
        base_sha256=pool.manifest.base_sha256 if on == "seed" else None,
        centroids_sha256="",
    )
    rows = tfidf(counts, idf_all)  # (m, F) sparse
    components = None
    if lsa:
        components = _svd_components(rows[:, seen], dims, seed)  # (D, S)
        x = lsa_rows(rows, projection(record, components))  # (m, D) dense, unit rows
    else:
        x = embed_seed(pool, sample, device)  # (m, H)
    if lsa and m * k * x.shape[1] <= FULL_KMEANS_WORK:
        km = KMeans(n_clusters=k, random_state=seed, n_init=_N_INIT_FULL).fit(x)
    else:
        km = MiniBatchKMeans(
            n_clusters=k,
            random_state=seed,
            n_init=_N_INIT,
            batch_size=min(2048, m),
            max_iter=100,
        ).fit(x)
    labels = km.labels_
    # Stable names: c00 is the largest cluster of the sample (ties: the earliest document).
    sizes = np.bincount(labels, minlength=k)
    first = np.full(k, m)
    np.minimum.at(first, labels, np.arange(m))  # each cluster's earliest sample document
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c], c))
    width = max(2, len(str(k - 1)))
    names = tuple(f"c{i:0{width}d}" for i in range(k))
    centroids = km.cluster_centers_[order].astype(np.float32)  # (k, D)
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    if lsa:
        weight = centroids @ projection(record, components).T  # (k, F): centroid in term space
    else:
        weight = _summed_tfidf(rows, rank[labels], k)
    vocabulary, top = _top_terms(sample, weight)
    record = record.model_copy(update={"names": names, "vocabulary": vocabulary, "top_terms": top})
    return ClusterModel(record, centroids, components, pool=pool, device=device)


def _svd_components(x, dims: int, seed: int) -> np.ndarray:
    """The top ``dims`` right singular vectors of the sample's TF-IDF ``x`` (m, S): (dims, S).

    ``TruncatedSVD`` (randomized, seeded) when it reduces; when ``dims`` reaches the sample's
    rank bound ``min(m, S)`` (tiny samples), an exact SVD: a basis of the rows' whole span, so
    distances are kept (a rank-1 cut of two documents would map both to the same point).
    """
    from sklearn.decomposition import TruncatedSVD

    if dims >= min(x.shape):
        _, _, vt = np.linalg.svd(x.toarray(), full_matrices=False)  # vt (min(m, S), S)
        return np.ascontiguousarray(vt[:dims], dtype=np.float32)
    return TruncatedSVD(dims, random_state=seed).fit(x).components_.astype(np.float32)


def _summed_tfidf(rows, labels: np.ndarray, k: int) -> np.ndarray:
    """Each cluster's summed TF-IDF row ``(k, F)`` (seed clusters have no term space)."""
    import scipy.sparse as sp

    onehot = sp.csr_matrix(
        (np.ones(len(labels), dtype=np.float32), (labels, np.arange(len(labels)))),
        shape=(k, len(labels)),
    )
    return np.asarray((onehot @ rows).todense())


def _top_terms(
    sample: Sequence[Document], weight: np.ndarray
) -> tuple[dict[str, str], tuple[tuple[str, ...], ...]]:
    """Each cluster's highest-weighted features ``weight`` (k, F), named by their most frequent
    sample term."""
    tops = [
        [int(f) for f in np.argsort(-row, kind="stable")[:TOP_TERMS] if row[f] > 0]
        for row in weight
    ]
    wanted = {f for t in tops for f in t}
    hv = hasher(N_FEATURES)
    analyze = hv.build_analyzer()
    freq: Counter[str] = Counter()
    for d in sample:
        freq.update(analyze(d.text))
    terms = sorted(freq, key=lambda t: (-freq[t], t))
    cols = hv.transform(terms).indices if terms else np.zeros(0, dtype=np.int32)  # one per term
    vocab: dict[str, str] = {}
    for term, col in zip(terms, cols, strict=True):
        if int(col) in wanted and str(col) not in vocab:  # most frequent term of the bucket
            vocab[str(int(col))] = term
    return vocab, tuple(tuple(vocab[str(f)] for f in t) for t in tops)


__all__ = [
    "ASSIGN_BATCH",
    "CLUSTER_FORMAT_VERSION",
    "ClusterModel",
    "ClusterModelRecord",
    "ClusterOn",
    "SAMPLE_DOCS",
    "fit_clusters",
    "lsa_components",
    "read_cluster_record",
    "require_sklearn",
    "reservoir_sample",
]
