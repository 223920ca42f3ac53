"""Embed documents for clustering: hashed TF-IDF, or the seed model's hidden states.

``ablate.pool.clusterer`` fits k-means on these rows. Hashed TF-IDF (scikit-learn's
``HashingVectorizer``: no vocabulary to fit or store) uses raw counts here, with sublinear
term frequency, IDF and L2 normalisation applied by ``tfidf``, so the fitted state is a
plain IDF vector that ``ablate.pool.clusterer`` stores as JSON. Seed embeddings are the mean-pooled
final hidden states of the pool's seed model, batched on the training device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ablate.pool.corpus import Document
from ablate.pool.errors import DataError
from ablate.pool.train import pick_device

if TYPE_CHECKING:
    import scipy.sparse

    from ablate.pool.pool import Pool

N_FEATURES = 2**16  # hashed TF-IDF width: 64K buckets keep centroids at 256 KiB each (fp32)
EMBED_BATCH = 16  # documents per forward pass of the seed model


def hasher(n_features: int = N_FEATURES):
    from sklearn.feature_extraction.text import HashingVectorizer

    # Raw counts: IDF, sublinear tf and normalisation are ours, so their state is plain JSON.
    return HashingVectorizer(
        n_features=n_features, alternate_sign=False, norm=None, dtype=np.float32
    )


def tfidf(counts: scipy.sparse.csr_matrix, idf: np.ndarray) -> scipy.sparse.csr_matrix:
    """Sublinear tf x idf, rows L2-normalised (in place on a copy of ``counts``)."""
    from sklearn.preprocessing import normalize

    x = counts.tocsr(copy=True)
    np.log(x.data, out=x.data)
    x.data += 1.0
    x = x.multiply(idf[None, :]).tocsr()
    return normalize(x, norm="l2", copy=False)


def check_rows(x, docs: Sequence[Document]) -> None:
    """A document without a single word cannot be placed: say which one."""
    empty = np.flatnonzero(np.diff(x.indptr) == 0) if hasattr(x, "indptr") else []
    if len(empty):
        d = docs[int(empty[0])]
        shown = d.text.strip()[:40]
        raise DataError(
            f"{d.location}: the document has no words to cluster on ({shown!r}); "
            f"remove such documents or partition them another way"
        )


# ---------------------------------------------------------------------- seed embeddings
SAMPLE_CHARS = 20_000  # characters of a document a clusterer reads (a long tail adds little)


def embed_seed(pool: Pool, docs: Sequence[Document], device: str | None) -> np.ndarray:
    """Mean-pooled final hidden states of the seed model ``(len(docs), hidden)``, L2-normalised."""
    import torch

    model, dev = _seed_model(pool, str(pick_device(device)))
    tok = pool.tokenizer
    limit = pool.manifest.context
    out = np.empty((len(docs), model.config.hidden_size), dtype=np.float32)
    # Only the first ``limit`` tokens are embedded: tokenize the same character prefix that
    # fitting saw (sampled texts are cut to SAMPLE_CHARS), never a whole book.
    ids = tok([d.text[:SAMPLE_CHARS] for d in docs], add_special_tokens=False)["input_ids"]
    for i, row in enumerate(ids):
        if not row:
            no_tokens_error(docs[i])
    body = getattr(model, model.base_model_prefix, model)
    with torch.no_grad():
        for a in range(0, len(ids), EMBED_BATCH):
            rows = [r[:limit] for r in ids[a : a + EMBED_BATCH]]
            width = max(len(r) for r in rows)
            x = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T), right-padded
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for j, r in enumerate(rows):
                x[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            h = body(
                input_ids=x.to(dev), attention_mask=mask.to(dev)
            ).last_hidden_state  # (B, T, H)
            m = mask.to(dev, h.dtype).unsqueeze(-1)  # (B, T, 1)
            mean = (h * m).sum(1) / m.sum(1)  # (B, H)
            out[a : a + len(rows)] = (
                torch.nn.functional.normalize(mean.float(), dim=1).cpu().numpy()
            )
    return out


def no_tokens_error(doc: Document) -> None:
    raise DataError(
        f"{doc.location}: the document has no tokens to cluster on ({doc.text.strip()[:40]!r}); "
        f"remove such documents or partition them another way"
    )


_SEED_MODELS: dict[tuple[str, str], tuple] = {}


def _seed_model(pool: Pool, device: str):
    """The pool's seed model on ``device``, loaded once per process."""
    import torch

    key = (str(pool.path.resolve()), device)
    if key not in _SEED_MODELS:
        model = pool.load_base_model().to(torch.device(device)).eval()
        _SEED_MODELS.clear()  # one seed model at a time: they can be large
        _SEED_MODELS[key] = (model, torch.device(device))
    return _SEED_MODELS[key]
