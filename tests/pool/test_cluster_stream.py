"""`pool add --clusters` streams the corpus: spooled, hashed and tokenized cluster by cluster.

The streamed partitions must be byte-identical to tokenizing each cluster's documents held in
a list, and every refusal (even one found late, in the assignment pass) leaves the pool as it
was, with no spool left behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import WORDS, make_docs, tree_digest, write_jsonl

from ablate.cli import main
from ablate.pool import cluster, clusterer
from ablate.pool import tokens as pool_tokens
from ablate.pool.cluster import load_cluster_model
from ablate.pool.corpus import read_documents
from ablate.pool.tokens import content_hash, write_partition

pytest.importorskip("sklearn")


def _corpus(path: Path, n: int, seed: int) -> Path:
    rows = [r for dom in WORDS for r in make_docs(dom, n, seed, length=30)]
    return write_jsonl(path, sorted(rows, key=lambda r: r["text"]))  # topics interleaved


def _add(capsys, *args) -> tuple[int, str]:
    code = main(["-q", "pool", "add", *map(str, args)])
    return code, capsys.readouterr().err


def _hidden(folder: Path) -> list[str]:
    """Entries of ``data/`` other than partitions and the add lock: spools, stages."""
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".add.lock"
    )


def test_streamed_partitions_equal_tokenizing_each_cluster_in_one_go(
    empty_pool, tmp_path, capsys, monkeypatch
):
    p = empty_pool
    # Tiny batches and buffers: many assignment batches, spool flushes and tokenizer batches.
    monkeypatch.setattr(clusterer, "ASSIGN_BATCH", 4)
    monkeypatch.setattr(cluster, "SPOOL_BUFFER", 200)
    monkeypatch.setattr(pool_tokens, "_BATCH_DOCS", 3)
    first = _corpus(tmp_path / "first.jsonl", 7, 1)
    p.data_folder.mkdir()
    (p.data_folder / ".spool.crashed.tmp").mkdir()  # a crashed add's spool: swept
    assert _add(capsys, p.path, first, "--clusters", 3)[0] == 0
    assert _hidden(p.data_folder) == []

    model = load_cluster_model(p)
    docs = read_documents([first])
    members = {n: [d.text for d, c in zip(docs, model.assign(docs), strict=True)
                   if model.names[c] == n] for n in model.names}  # fmt: skip
    monkeypatch.undo()  # the reference: default batches, every text held in a list
    for name, part in p.partitions.items():
        assert part.index.content_hash == content_hash(members[name])
        ref = tmp_path / "ref" / name
        write_partition(
            ref, name=name, texts=members[name], sources=[str(first)], tokenizer=p.tokenizer,
            token_dtype=p.manifest.token_dtype, unit_tokens=p.manifest.recipe.unit_tokens,
        )  # fmt: skip
        assert tree_digest(part.folder) == tree_digest(ref)

    # New documents join the clusters: old tokens kept, new ones streamed after them.
    more = write_jsonl(tmp_path / "more.jsonl", make_docs("math", 5, 9, length=30))
    grown = model.names[int(model.assign(read_documents([more]))[0])]
    old = p.partitions[grown]
    old_tokens = np.array(old.tokens)
    monkeypatch.setattr(pool_tokens, "_COPY_CHUNK", 64)  # the old tokens copied in pieces
    assert _add(capsys, p.path, more, "--clusters")[0] == 0
    new = p.partitions[grown]
    texts = [d["text"] for d in make_docs("math", 5, 9, length=30)]
    added = np.concatenate(pool_tokens.encode_documents(p.tokenizer, texts))
    np.testing.assert_array_equal(np.asarray(new.tokens), np.concatenate([old_tokens, added]))
    assert new.index.batches == (old.index.content_hash, content_hash(texts))
    assert new.index.n_bytes == old.index.n_bytes + sum(len(t.encode()) for t in texts)
    assert new.index.unit_hashes[: len(old.index.unit_hashes)] == old.index.unit_hashes
    assert _hidden(p.data_folder) == []


def test_refusal_found_while_assigning_leaves_the_pool_unchanged(
    empty_pool, tmp_path, capsys, monkeypatch
):
    p = empty_pool
    rows = [r for dom in WORDS for r in make_docs(dom, 6, 2, length=30)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows, {"text": "!! ?? ..."}])  # line 19
    # A two-document sample cannot hold line 19 (seeded): only the streaming pass meets it.
    monkeypatch.setattr(cluster, "SAMPLE_DOCS", 1)
    before = tree_digest(p.path)
    code, err = _add(capsys, p.path, bad, "--clusters", 2)
    assert code == 2 and err.strip() == (
        f"ablate: error: {bad}: line 19: the document has no words to cluster on ('!! ?? ...'); "
        f"remove such documents or partition them another way"
    )
    assert tree_digest(p.path) == before and not p.data_folder.exists()  # no spool, no lock

    good = write_jsonl(tmp_path / "good.jsonl", rows)
    assert _add(capsys, p.path, good, "--clusters", 2)[0] == 0
    before = tree_digest(p.path)
    code, err = _add(capsys, p.path, bad, "--clusters")  # the stored model meets it late too
    assert code == 2 and "line 19: the document has no words" in err
    assert tree_digest(p.path) == before and _hidden(p.data_folder) == []


class _ByteTokenizer:
    """Token ids are the text's bytes: enough for write/append_partition, no model needed."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t.encode()) for t in texts]}


def test_append_refuses_a_damaged_partition_instead_of_rehashing_it(tmp_path):
    from ablate.pool.errors import PoolError
    from ablate.pool.tokens import TokenizedPartition, append_partition

    tok = _ByteTokenizer()
    folder = tmp_path / "c00"
    write_partition(folder, name="c00", texts=["alpha beta", "gamma"], sources=["a"],
                    tokenizer=tok, token_dtype="uint16", unit_tokens=4)  # fmt: skip
    tokens = folder / "tokens.bin"
    damaged = bytearray(tokens.read_bytes())
    damaged[3] ^= 0xFF  # bit rot: `pool verify` would report it, an append must not hide it
    tokens.write_bytes(bytes(damaged))
    before = tree_digest(tmp_path)
    with pytest.raises(PoolError, match="tokens.bin: sha256 does not match index.json"):
        append_partition(TokenizedPartition.open(folder), texts=["delta"], sources=["b"],
                         tokenizer=tok)  # fmt: skip
    assert tree_digest(tmp_path) == before  # no stage left, the damaged file untouched
