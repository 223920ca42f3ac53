"""Tests for pool.corpus: every input format, and every user error as one clear DataError."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ablate.pool.corpus import Document, read_documents
from ablate.pool.errors import DataError

RECORDS = [
    {"text": "the cat sat", "domain": "web", "id": 1},
    {"text": "def f(): pass", "domain": "code", "id": 2},
    {"text": "E = mc^2", "domain": "science", "id": 3},
]


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def check_records(docs: list[Document], source: Path) -> None:
    assert [d.text for d in docs] == [r["text"] for r in RECORDS]
    assert [dict(d.meta) for d in docs] == [{"domain": r["domain"], "id": r["id"]} for r in RECORDS]
    assert all(d.source == str(source) for d in docs)


# --- formats ----------------------------------------------------------------------------


def test_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", RECORDS)
    check_records(read_documents([path]), path)


def test_jsonl_skips_blank_lines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [json.dumps(r) for r in RECORDS]
    path.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(lines).encode() + b"\n   \n")
    check_records(read_documents([path]), path)


def test_gzipped_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in RECORDS)
    check_records(read_documents([path]), path)


def test_json_suffix_is_json_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.json", RECORDS)
    check_records(read_documents([path]), path)


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    check_records(read_documents([path]), path)


def test_custom_text_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"body": "hello", "text": "not this"}])
    (doc,) = read_documents([path], text_field="body")
    assert doc.text == "hello"
    assert dict(doc.meta) == {"text": "not this"}


def test_single_path_and_several_paths(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", RECORDS[:1])
    b = write_jsonl(tmp_path / "b.jsonl", RECORDS[1:])
    assert len(read_documents(str(a))) == 1  # a bare path is not split into characters
    docs = read_documents([a, str(b)])
    assert [d.text for d in docs] == [r["text"] for r in RECORDS]
    assert [d.source for d in docs] == [str(a), str(b), str(b)]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), path, row_group_size=2)
    check_records(read_documents([path]), path)


def test_text_folder(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "web" / "deep").mkdir(parents=True)
    (root / "code").mkdir()
    (root / ".git").mkdir()
    (root / "web" / "a.txt").write_text("web a")
    (root / "web" / "deep" / "b.md").write_text("web b")
    (root / "code" / "x.py").write_text("print(1)")
    (root / "code" / "LICENSE").write_text("MIT license")
    (root / "code" / "blob").write_bytes(b"\xff\xfe\x00binary")  # no suffix, not UTF-8
    (root / "code" / "nul").write_bytes(b"abc\x00def")  # no suffix, NUL bytes: binary
    (root / "code" / "img.png").write_bytes(b"\x89PNG")
    (root / "code" / ".hidden.txt").write_text("hidden")
    (root / ".git" / "HEAD").write_text("ref")
    (root / "top.rst").write_text("top level")
    docs = read_documents([root])
    got = {d.meta["path"]: (d.meta["folder"], d.text) for d in docs}
    assert got == {
        "code/LICENSE": ("code", "MIT license"),
        "code/x.py": ("code", "print(1)"),
        "top.rst": ("", "top level"),
        "web/a.txt": ("web", "web a"),
        "web/deep/b.md": ("web", "web b"),
    }
    # deterministic walk: a folder's own files (sorted) before its subfolders (sorted)
    assert [d.meta["path"] for d in docs] == [
        "top.rst",
        "code/LICENSE",
        "code/x.py",
        "web/a.txt",
        "web/deep/b.md",
    ]
    assert docs[1].source == str(root / "code" / "LICENSE")


def test_empty_text_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": ""}, {"text": " \n"}, {"text": "kept"}])
    with caplog.at_level(logging.WARNING, logger="ablate.pool.corpus"):
        docs = read_documents([path])
    assert [d.text for d in docs] == ["kept"]
    assert "skipped 2 document(s) with empty text" in caplog.text


# --- datasets' save_to_disk -------------------------------------------------------------


def test_hf_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(RECORDS)
    ds.save_to_disk(str(tmp_path / "ds"), num_shards=2)
    docs = read_documents([tmp_path / "ds"])
    assert [d.text for d in docs] == [r["text"] for r in RECORDS]
    assert [dict(d.meta) for d in docs] == [{"domain": r["domain"], "id": r["id"]} for r in RECORDS]
    assert len({d.source for d in docs}) == 2 and all(d.source.endswith(".arrow") for d in docs)


def test_hf_dataset_after_select(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(RECORDS).select([2, 0])  # an indices mapping in memory
    ds.save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in read_documents([tmp_path / "ds"])] == ["E = mc^2", "the cat sat"]


def test_hf_dataset_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(RECORDS[:2]),
            "test": datasets.Dataset.from_list(RECORDS[2:]),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    docs = read_documents([tmp_path / "dd"])
    assert [(d.text, d.meta["split"]) for d in docs] == [
        ("the cat sat", "train"),
        ("def f(): pass", "train"),
        ("E = mc^2", "test"),
    ]
    assert docs[0].meta["domain"] == "web"


def test_hf_dataset_missing_text_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"content": "x"}]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"no column 'text' \(columns: 'content'\)"):
        read_documents([tmp_path / "ds"])


def test_hf_dataset_dict_missing_split(tmp_path: Path) -> None:
    root = tmp_path / "dd"
    root.mkdir()
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(DataError, match="split 'train' is listed"):
        read_documents([root])


# --- errors -----------------------------------------------------------------------------


def test_no_paths() -> None:
    with pytest.raises(DataError, match="no corpus paths given"):
        read_documents([])


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or folder; check the path"):
        read_documents([tmp_path / "nope.jsonl"])


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"c\.csv: unknown corpus format '\.csv'; use \.jsonl"):
        read_documents([path])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", RECORDS)
    path.chmod(0)
    with pytest.raises(DataError, match="cannot read file"):
        read_documents([path])


def test_unreadable_file_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", RECORDS)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("ablate.pool.corpus.open", refuse, raising=False)  # works as root too
    with pytest.raises(DataError, match=r"c\.jsonl: cannot read file \(Permission denied\)"):
        read_documents([path])


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=r"c\.jsonl\.gz: cannot read .*corrupt or truncated"):
        read_documents([path])


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    data = gzip.compress(("".join(json.dumps(r) + "\n" for r in RECORDS * 50)).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_documents([path])


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"c\.parquet: cannot read file"):
        read_documents([path])


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + '{"text": "oops",\n')
    with pytest.raises(DataError, match=r"c\.jsonl: line 2: invalid JSON"):
        read_documents([path])


def test_pretty_printed_object_is_not_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(RECORDS[0], indent=2))
    with pytest.raises(DataError, match="line 1: invalid JSON .*one complete JSON object"):
        read_documents([path])


def test_json_line_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [RECORDS[0], ["a", "list"]])
    with pytest.raises(DataError, match="line 2: expected a JSON object, got list"):
        read_documents([path])


def test_invalid_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"line 2: invalid UTF-8 .*re-encode the file as UTF-8"):
        read_documents([path])


def test_invalid_utf8_text_file(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.txt").write_bytes(b"line one\nline two \xff\n")
    with pytest.raises(DataError, match=r"a\.txt: line 2: invalid UTF-8"):
        read_documents([tmp_path])


def test_record_without_text_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [RECORDS[0], {"content": "x", "lang": "en"}])
    with pytest.raises(
        DataError, match=r"line 2: no field 'text' \(fields: 'content', 'lang'\); set text_field"
    ):
        read_documents([path])


def test_parquet_without_text_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"body": "x"}]), path)
    with pytest.raises(DataError, match=r"no column 'text' \(columns: 'body'\)"):
        read_documents([path])


@pytest.mark.parametrize(("value", "kind"), [(3, "int"), (None, "null"), (["a"], "list")])
def test_non_string_text(tmp_path: Path, value: object, kind: str) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [RECORDS[0], {"text": value}])
    with pytest.raises(DataError, match=rf"line 2: field 'text' is {kind}, not a string"):
        read_documents([path])


def test_parquet_null_text(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": None}]), path)
    with pytest.raises(DataError, match="row 2: field 'text' is null"):
        read_documents([path])


def test_empty_corpus(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": ""}])
    with pytest.raises(DataError, match=r"no documents found in .*c\.jsonl \(1 had empty text\)"):
        read_documents([path])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no documents found"):
        read_documents([tmp_path / "empty.jsonl"])
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="no documents found"):
        read_documents([tmp_path / "folder"])


def test_folder_of_data_files_hints(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "shard0.jsonl", RECORDS)
    with pytest.raises(DataError, match="no text files, but 1 data file.*pass those files"):
        read_documents([tmp_path])
