"""Clustering unlabeled text into partitions, multi-field partitions, and their bad inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from support import WORDS, fake_grow, make_docs, tree_digest, write_jsonl

from ablate.cli import main
from ablate.pool import Pool, cluster, clusterer
from ablate.pool.cluster import load_cluster_model
from ablate.pool.clusterer import ClusterModel, fit_clusters, lsa_components
from ablate.pool.corpus import Document, read_documents

pytest.importorskip("sklearn")


def _unlabeled(path: Path, seed: int, n: int = 8) -> Path:
    """Three topics with disjoint vocabularies, shuffled; the label stays only as a field."""
    rows = [r for dom in WORDS for r in make_docs(dom, n, seed, length=40)]
    rows = sorted(rows, key=lambda r: r["text"])  # interleave the topics
    return write_jsonl(path, rows)


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["-q", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_clustering_is_deterministic_and_finds_the_topics(tmp_path):
    docs = read_documents([_unlabeled(tmp_path / "u.jsonl", 1)])
    a = fit_clusters(iter(docs), 3, seed=7)
    b = fit_clusters(iter(docs), 3, seed=7)
    assert a.record == b.record
    np.testing.assert_array_equal(a.centroids, b.centroids)
    labels = a.assign(docs)
    np.testing.assert_array_equal(labels, b.assign(docs))
    by_topic = {}
    for d, lab in zip(docs, labels.tolist(), strict=True):
        by_topic.setdefault(d.meta["domain"], set()).add(lab)
    assert all(len(s) == 1 for s in by_topic.values())  # disjoint vocabularies: pure clusters
    assert len(set().union(*by_topic.values())) == 3
    assert a.names == ("c00", "c01", "c02")
    words = {w for dom in WORDS.values() for w in dom}
    assert all(set(t) <= words and t for t in a.record.top_terms)


def _shared_words(seed: int) -> list[Document]:
    """Three topics, each document 6 topic words in 40 words drawn from one shared vocabulary.

    The shared words swamp raw TF-IDF distances (hashed TF-IDF + MiniBatchKMeans, format 1,
    got ARI 0.49 and 0.60 on seeds 2 and 4); LSA's SVD keeps the co-occurring topic words.
    """
    rng = random.Random(seed)
    common = [f"w{i}" for i in range(40)]
    docs = []
    for dom, words in WORDS.items():
        for _ in range(12):
            t = [rng.choice(words) for _ in range(6)] + [rng.choice(common) for _ in range(40)]
            rng.shuffle(t)
            docs.append(Document(" ".join(t), {"domain": dom}, "mem", "mem"))
    rng.shuffle(docs)
    return docs


@pytest.mark.parametrize("seed", [2, 4])
def test_lsa_finds_topics_that_share_most_of_their_words(seed):
    docs = _shared_words(seed)
    model = fit_clusters(iter(docs), 3, seed=seed)
    assert model.record.n_components == 24  # clip(4 * 3, 24, 256)
    groups: dict[int, set[str]] = {}
    for d, lab in zip(docs, model.assign(docs).tolist(), strict=True):
        groups.setdefault(lab, set()).add(d.meta["domain"])
    assert sorted(map(sorted, groups.values())) == [["code"], ["math"], ["wiki"]]
    # top terms (centroids mapped back to term space): own topic words, no other topic's
    topic_words = {w for ws in WORDS.values() for w in ws}
    for lab, (dom,) in groups.items():
        shown = set(model.record.top_terms[lab]) & topic_words
        assert len(shown) >= 2 and shown <= set(WORDS[dom]), (dom, model.record.top_terms)


def test_large_samples_fall_back_to_minibatch_kmeans(monkeypatch):
    monkeypatch.setattr(clusterer, "FULL_KMEANS_WORK", 0)  # as if the sample were too big
    docs = _shared_words(2)
    a, b = (fit_clusters(iter(docs), 3, seed=2) for _ in range(2))
    np.testing.assert_array_equal(a.centroids, b.centroids)  # still deterministic
    labels = a.assign(docs).tolist()
    pairs = {(d.meta["domain"], lab) for d, lab in zip(docs, labels, strict=True)}
    assert len(pairs) == 3 and len(set(labels)) == 3  # one cluster per topic


def test_lsa_dimensions_rule():
    assert lsa_components(6, 481, 20_000) == 24  # the demo: floor of 24
    assert lsa_components(40, 20_000, 65_536) == 160  # 4 per cluster
    assert lsa_components(128, 624, 65_536) == 256  # capped
    assert lsa_components(3, 10, 65_536) == 10  # no more than the sample's documents
    assert lsa_components(3, 40, 5) == 5  # no more than the features seen
    assert lsa_components(1, 1, 3) == 1


def test_tiny_samples_keep_their_documents_apart():
    # Two documents, two clusters: a rank-1 SVD would map both to one point (exact SVD here).
    two = [Document(t, {}, "mem", "mem") for t in ("alpha beta gamma", "delta epsilon zeta")]
    assert sorted(fit_clusters(iter(two), 2, seed=0).assign(two).tolist()) == [0, 1]
    one_word = [Document("echo echo", {}, "mem", "mem")] * 3  # a single hashed feature
    model = fit_clusters(iter(one_word), 1, seed=0)
    assert model.record.n_components == 1 and model.assign(one_word).tolist() == [0, 0, 0]


def test_stored_model_keeps_the_svd_beside_the_centroids(tmp_path):
    from safetensors.numpy import load_file

    docs = read_documents([_unlabeled(tmp_path / "u.jsonl", 1)])
    model = fit_clusters(iter(docs), 3, seed=0)
    model.save(tmp_path / "clusters")
    tensors = load_file(tmp_path / "clusters" / "centroids.safetensors")
    d, seen = model.record.n_components, len(model.record.idf)
    assert tensors["centroids"].shape == (3, d) and tensors["components"].shape == (d, seen)
    again = ClusterModel.load(tmp_path / "clusters")
    np.testing.assert_array_equal(again.assign(docs), model.assign(docs))
    record = json.loads((tmp_path / "clusters" / "model.json").read_text())
    assert record["format_version"] == 2 and record["n_components"] == d


def test_summary_reads_model_json_only(tmp_path):
    """`pool ls` shows settings and top terms: it must not read (and hash) the centroids and
    SVD components, up to 64 MiB."""
    from types import SimpleNamespace

    docs = read_documents([_unlabeled(tmp_path / "u.jsonl", 1)])
    model = fit_clusters(iter(docs), 3, seed=0)
    model.save(tmp_path / "clusters")
    (tmp_path / "clusters" / "centroids.safetensors").unlink()
    shown = cluster.summary(SimpleNamespace(path=tmp_path))
    assert shown["k"] == 3 and shown["top_terms"]["c00"] == list(model.record.top_terms[0])


def test_pool_add_clusters_then_readd_assigns_to_the_same_clusters(empty_pool, tmp_path, capsys):
    pool = empty_pool
    first = _unlabeled(tmp_path / "first.jsonl", 1)
    code, out, _ = _cli(capsys, "pool", "add", pool.path, first, "--clusters", 3)
    assert code == 0, out
    parts = pool.partitions
    assert list(parts) == ["c00", "c01", "c02"]
    topic_of = {}
    assert all(part.index.n_docs == 8 for part in parts.values())  # one topic each
    model = load_cluster_model(pool)
    for d in read_documents([first]):
        topic_of.setdefault(d.meta["domain"], model.names[int(model.assign([d])[0])])
    assert sorted(topic_of.values()) == ["c00", "c01", "c02"]
    old = {n: p.index.unit_hashes for n, p in parts.items()}
    fake_grow(pool)  # every unit has a member before new documents arrive
    before = tree_digest(pool.path)

    # the same documents again: nothing changes
    code, out, _ = _cli(capsys, "pool", "add", pool.path, first, "--clusters")
    assert code == 0 and "nothing new" in out
    assert tree_digest(pool.path) == before

    # new documents of the same topics join their topic's cluster as new units
    more = write_jsonl(tmp_path / "more.jsonl", make_docs("math", 3, 9, length=40))
    code, out, _ = _cli(capsys, "pool", "add", pool.path, more, "--clusters")
    assert code == 0, out
    after = pool.partitions
    grown = topic_of["math"]
    assert after[grown].index.n_docs == 11
    assert after[grown].index.unit_hashes[: len(old[grown])] == old[grown]  # old units intact
    assert all(after[n].index == parts[n].index for n in parts if n != grown)
    new_units = range(len(old[grown]), len(after[grown].index.units))
    assert [(u.partition, u.unit) for u in pool.missing()] == [(grown, u) for u in new_units]

    code, out, _ = _cli(capsys, "pool", "ls", pool.path)
    assert code == 0 and "top terms" in out and "clustered: 3 clusters on tfidf" in out
    code, out, _ = _cli(capsys, "pool", "ls", pool.path, "--json")
    assert set(json.loads(out)["clusters"]["top_terms"]) == {"c00", "c01", "c02"}


def _refused(capsys, pool: Pool, *args, match: str) -> None:
    before = tree_digest(pool.path)
    code, out, err = _cli(capsys, "pool", "add", pool.path, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], err
    assert tree_digest(pool.path) == before  # the pool is unchanged


def test_cluster_bad_inputs_are_one_line_and_change_nothing(
    empty_pool, tmp_path, capsys, monkeypatch
):
    pool = empty_pool
    few = _unlabeled(tmp_path / "few.jsonl", 1, n=2)  # 6 documents
    _refused(capsys, pool, few, "--clusters", 10, match="cannot make 10 clusters from 6")
    _refused(capsys, pool, few, "--clusters", match="no cluster model yet")
    _refused(capsys, pool, few, "--cluster-seed", 3, "--name", "x", match="only with --clusters")
    wordless = write_jsonl(
        tmp_path / "wordless.jsonl", [*make_docs("code", 3, 1), {"text": "!! ?? ..."}]
    )
    _refused(capsys, pool, wordless, "--clusters", 2, match="line 4: the document has no words")
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"text": "  "}, {"text": ""}])
    _refused(capsys, pool, blank, "--clusters", 2, match="no documents found")
    with monkeypatch.context() as m:
        m.setattr(clusterer, "_has_sklearn", lambda: False)
        _refused(capsys, pool, few, "--clusters", 2, match="pip install 'ablate-sim[cluster]'")

    assert _cli(capsys, "pool", "add", pool.path, few, "--clusters", 3)[0] == 0
    _refused(capsys, pool, few, "--clusters", 4, match="already clustered (--clusters 3")
    _refused(capsys, pool, few, "--clusters", "--cluster-on", "seed", match="--cluster-on seed")
    model = pool.path / "clusters" / "model.json"
    record = json.loads(model.read_text())
    model.write_text(json.dumps({**record, "format_version": 99}))
    _refused(capsys, pool, few, "--clusters", match="cluster model format 99")
    model.write_text(json.dumps({**record, "format_version": 1}))  # raw TF-IDF centroids
    _refused(
        capsys,
        pool,
        few,
        "--clusters",
        match="cluster model format 1, but this ablate reads format 2",
    )
    model.write_text(json.dumps(record))
    (pool.path / "clusters" / "centroids.safetensors").write_bytes(b"damaged")
    _refused(capsys, pool, few, "--clusters", match="sha256 does not match")


def test_multi_field_partitions_and_their_bad_values(empty_pool, tmp_path, capsys):
    pool = empty_pool
    rows = [
        {**r, "period": p}
        for p in ("1990s", "2000s")
        for r in make_docs("code", 2, 1) + make_docs("wiki", 2, 1)
    ]
    code, out, _ = _cli(
        capsys, "pool", "add", pool.path, write_jsonl(tmp_path / "ok.jsonl", rows),
        "--partition-by", "domain,period",
    )  # fmt: skip
    assert code == 0, out
    assert list(pool.partitions) == ["code__1990s", "code__2000s", "wiki__1990s", "wiki__2000s"]

    def bad(records, match, by="domain,period"):
        path = write_jsonl(tmp_path / "bad.jsonl", records)
        _refused(capsys, pool, path, "--partition-by", by, match=match)

    doc = make_docs("math", 1, 1)[0]
    bad([{**doc, "period": "x"}, doc], "line 2: a document has no field 'period'")
    bad([{**doc, "domain": "a__b", "period": "c"}, {**doc, "domain": "a", "period": "b__c"}],
        "both make partition name 'a__b__c'")  # fmt: skip
    bad([{**doc, "period": "../up"}], "line 1: 'period' value '../up' is not a valid partition")
    bad([{**doc, "period": None}], "line 1: a document has 'period' = null")
    bad([{**doc, "period": "x" * 60}], "make partition name")
    bad([doc], "distinct fields", by="domain,,period")


def test_cluster_on_seed_model_hidden_states(empty_pool, tmp_path, capsys):
    pool = empty_pool
    data = _unlabeled(tmp_path / "u.jsonl", 1, n=4)
    code, out, _ = _cli(
        capsys, "pool", "add", pool.path, data, "--clusters", 3, "--cluster-on", "seed",
        "--cluster-seed", 1, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, out
    model = load_cluster_model(pool)
    assert model.record.on == "seed" and model.record.base_sha256 == pool.manifest.base_sha256
    assert model.centroids.shape[1] == 32  # the tiny seed's hidden size
    docs = read_documents([data])
    again = fit_clusters(iter(docs), 3, on="seed", seed=1, pool=pool)
    np.testing.assert_array_equal(again.assign(docs), model.assign(docs))  # deterministic
    assert sum(p.index.n_docs for p in pool.partitions.values()) == len(docs)
