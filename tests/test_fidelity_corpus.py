"""The fidelity suite names the text each cell trained on: a digest that two machines compare
(its corpora follow the installed releases) and a manifest that says what went into it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_fidelity")


def _cell(folder: Path, parts: list[tuple[str, str]], seed: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "parts.jsonl").write_text(
        "".join(json.dumps({"text": t, "domain": d}) + "\n" for d, t in parts)
    )
    (folder / "seed.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in seed))
    return folder


def test_the_digest_is_the_same_for_the_same_text_and_moves_with_any_change(bench, tmp_path):
    parts = [("code", "def f(): pass " * 30), ("prose", "A long sentence. " * 30)]
    a = _cell(tmp_path / "a", parts, ["seed text " * 40])
    b = _cell(tmp_path / "b", parts, ["seed text " * 40])
    digest = bench.corpus_digest(a)
    assert len(digest) == 12 and digest == bench.corpus_digest(b)
    # one character of the seed data, or a document moved to another partition
    assert bench.corpus_digest(_cell(tmp_path / "c", parts, ["seed text " * 40 + "!"])) != digest
    moved = [("prose", parts[0][1]), parts[1]]
    assert bench.corpus_digest(_cell(tmp_path / "d", moved, ["seed text " * 40])) != digest
    # the same bytes split differently between the two files are another corpus too
    swapped = tmp_path / "e"
    swapped.mkdir()
    (swapped / "parts.jsonl").write_text("")
    (swapped / "seed.jsonl").write_bytes((a / "parts.jsonl").read_bytes())
    assert bench.corpus_digest(swapped) != bench.corpus_digest(_seed_only(tmp_path / "f", a))


def _seed_only(folder: Path, like: Path) -> Path:
    folder.mkdir()
    (folder / "parts.jsonl").write_bytes((like / "parts.jsonl").read_bytes())
    (folder / "seed.jsonl").write_text("")
    return folder


def test_the_manifest_counts_each_partition_and_lists_the_releases_it_was_read_from(
    bench, tmp_path
):
    cell = _cell(
        tmp_path / "cell",
        [("code", "x" * 500), ("code", "y" * 300), ("prose", "z" * 700)],
        ["s" * 100],
    )
    built = bench.corpus_manifest(cell)
    assert built["digest"] == bench.corpus_digest(cell)
    assert built["partitions"] == {
        "code": {"docs": 2, "chars": 800},
        "prose": {"docs": 1, "chars": 700},
    }
    assert any(d.lower().startswith("torch==") for d in built["distributions"])


def test_the_table_prints_each_rows_digest(bench, capsys):
    rows = [
        {"corpus": "polyglot", "setting": "300K/30K", "variant": "precond", "corpus_digest": "abc"},
        {"corpus": "mlcode", "setting": "300K/30K", "variant": "plain"},  # a row from before
    ]
    bench.print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| corpus | digest | seed/unit | variant |")
    assert lines[2].startswith("| polyglot | abc | 300K/30K | precond |")
    assert lines[3].startswith("| mlcode | - | 300K/30K | plain |")


def test_a_source_whose_files_are_missing_here_stops_the_build_and_says_which(bench, monkeypatch):
    def text() -> list[str]:
        return ["some text " * 40]

    # as on a machine without /usr/share/perl
    monkeypatch.setitem(bench.CORPORA, "fake", ({"code": text, "perl_pm": list}, [text]))
    with pytest.raises(SystemExit, match="partition 'perl_pm' of corpus 'fake' found no text"):
        bench.build_corpus("fake", need_chars=1000, seed_chars=1000, seed=0)
    # a seed source too (polyglot's x86_64 headers on another architecture)
    monkeypatch.setitem(bench.CORPORA, "fake", ({"code": text}, [text, list]))
    with pytest.raises(SystemExit, match="seed source 2 of corpus 'fake' found no text"):
        bench.build_corpus("fake", need_chars=1000, seed_chars=1000, seed=0)
    monkeypatch.setitem(bench.CORPORA, "fake", ({"code": text, "prose": text}, [text]))
    parts, seed = bench.build_corpus("fake", need_chars=1000, seed_chars=1000, seed=0)
    assert set(parts) == {"code", "prose"} and parts["code"] and seed


def test_a_source_shorter_than_the_cell_asks_for_is_built_short_with_a_warning(
    bench, monkeypatch, capsys
):
    def long() -> list[str]:
        return [f"doc {i} " * 100 for i in range(20)]  # 20 documents of ~600 characters

    def short() -> list[str]:
        return ["tiny doc " * 30]  # 270 characters

    monkeypatch.setitem(bench.CORPORA, "fake", ({"code": long, "prose": short}, [long]))
    parts, seed = bench.build_corpus("fake", need_chars=2000, seed_chars=1000, seed=0)
    err = capsys.readouterr().err
    assert "partition 'prose' of corpus 'fake' has 270 of the 2,000 characters" in err
    assert "'code'" not in err and "seed data" not in err  # long enough: no word
    assert parts["prose"] == short()
    monkeypatch.setitem(bench.CORPORA, "fake", ({"code": long}, [short]))
    bench.build_corpus("fake", need_chars=2000, seed_chars=1000, seed=0)
    assert "the seed data of corpus 'fake' has 270 of the 1,000" in capsys.readouterr().err


def test_first_tokens_keeps_the_shortest_prefix_that_holds_the_tokens(bench):
    """A cell's unit (and ``probe_merges.py``'s short members' data) is the shortest run of
    whole documents from the start that holds the tokens, counted as units count them
    (each document's tokens plus two specials)."""

    def tok(text, add_special_tokens):
        assert add_special_tokens is False
        return {"input_ids": text.split()}

    docs = ["a b", "c d e", "f"]  # 4, 5 and 3 tokens with the specials
    assert bench.first_tokens(docs, tok, 1) == (["a b"], 4)
    assert bench.first_tokens(docs, tok, 4) == (["a b"], 4)
    assert bench.first_tokens(docs, tok, 5) == (["a b", "c d e"], 9)
    assert bench.first_tokens(docs, tok, 100) == (docs, 12)
