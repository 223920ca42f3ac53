"""Read a training corpus into documents, whatever shape it arrives in.

Data ablation (Na et al., EMNLP 2024, "Scalable Data Ablation Approximations for Language
Models through Modular Training and Merging") trains one model per data partition, so the
first step is a flat list of documents that carry enough metadata to be partitioned. This
module accepts the shapes corpora usually come in: JSON Lines (optionally gzipped), Parquet,
a folder of text files, and a Hugging Face ``datasets`` folder written by ``save_to_disk``
(read straight from its Arrow files, so ``datasets`` is not a runtime dependency).

Every problem a user can fix raises :class:`ablate.pool.errors.DataError` with a one-line message
that names the file, the line or row where relevant, the problem and the fix.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.pool.errors import DataError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".py"})
_JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_DATA_SUFFIXES = (*_JSONL_SUFFIXES, ".parquet", ".arrow", ".csv")  # hinted at, never read as text
_FORMATS_HINT = (
    "use .jsonl, .jsonl.gz, .json (JSON Lines), .parquet, a folder of text files "
    "or a folder written by datasets' save_to_disk"
)
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Document:
    """One training document.

    Attributes:
        text: The document's text; never empty when it comes from :func:`read_documents`.
        meta: The record's other fields (used by ``partition_documents(by=...)``). For folder
            input: ``{"folder": first-level subfolder or "" at the top, "path": relative
            path}``; for a DatasetDict split also ``{"split": name}``. A plain dict so that
            documents pickle (worker processes, Ray).
        source: The file the document came from, so later errors can point at it.
        where: Where in ``source`` (``"line 12"``, ``"row 3"``; empty for a whole file), so
            an error about one record names it.
    """

    text: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    where: str = ""

    @property
    def location(self) -> str:
        """``source: where`` (or just ``source``), the prefix of an error about this document."""
        return f"{self.source}: {self.where}" if self.where else self.source


@dataclass
class _Tally:
    """Documents skipped for empty text, counted so one warning per path replaces many."""

    empty: int = 0


def read_documents(
    paths: Sequence[str | os.PathLike], *, text_field: str = "text"
) -> list[Document]:
    """Read every document from the given files and folders, in order.

    Args:
        paths: Files (``.jsonl``, ``.json``, ``.jsonl.gz``, ``.parquet``) or folders (text
            files, or a ``save_to_disk`` Dataset/DatasetDict). A single path is accepted too.
        text_field: The field or column that holds the text in JSON, Parquet and Arrow
            records; the record's other fields become ``meta``.

    Returns:
        The documents, path by path in the order given. Documents whose text is empty or only
        whitespace are skipped and counted in a logged warning: they carry nothing to train on.

    Raises:
        DataError: A path is missing, unreadable or of unknown format, a record is malformed,
            or no document at all was found.
    """
    return list(iter_documents(paths, text_field=text_field))


def iter_documents(
    paths: Sequence[str | os.PathLike], *, text_field: str = "text", warn_empty: bool = True
) -> Iterator[Document]:
    """Stream the documents of ``paths`` one at a time (what ``read_documents`` collects).

    For passes over corpora larger than memory (clustering reads a corpus twice: a bounded
    sample to fit, then every document to assign). Empty texts are skipped and counted in a
    logged warning as in ``read_documents`` (``warn_empty=False``: silently, for a second pass
    over the same files); a corpus with no document at all raises the same ``DataError``.
    """
    if isinstance(paths, (str, os.PathLike)):  # a bare str is a Sequence of characters
        paths = [paths]
    if not paths:
        raise DataError("no corpus paths given; pass at least one file or folder")
    found = 0
    skipped = 0
    for raw_path in paths:
        tally = _Tally()
        before = found
        path = Path(raw_path)
        for doc in _read_path(path, text_field, tally):
            found += 1
            yield doc
        if tally.empty and warn_empty:
            logger.warning(
                "%s: skipped %d document(s) with empty text (%d kept)",
                path,
                tally.empty,
                found - before,
            )
        skipped += tally.empty
    if not found:
        shown = ", ".join(str(p) for p in paths)
        extra = f" ({skipped} had empty text)" if skipped else ""
        raise DataError(
            f"no documents found in {shown}{extra}; check the paths and that "
            f"{text_field!r} holds the text"
        )


def _read_path(path: Path, text_field: str, tally: _Tally) -> Iterator[Document]:
    """Dispatch one path to the reader for its format."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return _read_dataset_dict(path, text_field, tally)
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            return _read_hf_dataset(path, text_field, tally, {})
        return _read_text_folder(path, tally)
    name = path.name.lower()
    if name.endswith(_JSONL_SUFFIXES):
        return _read_jsonl(path, text_field, tally)
    if name.endswith(".parquet"):
        return _read_parquet(path, text_field, tally)
    # name the compound suffix of compressed files (".csv.gz"), since that is what is unknown
    suffix = "".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix
    suffix = suffix or "(no suffix)"
    raise DataError(f"{path}: unknown corpus format {suffix!r}; {_FORMATS_HINT}")


def _unreadable(path: Path, err: BaseException) -> DataError:
    reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return DataError(f"{path}: cannot read file ({reason}); check it is intact and readable")


def _make_doc(
    record: Any,
    text_field: str,
    source: str,
    where: str,
    extra_meta: Mapping[str, Any],
    tally: _Tally,
) -> Document | None:
    """Check one record and turn it into a Document (None if its text is empty)."""
    if not isinstance(record, dict):
        raise DataError(
            f"{source}: {where}: expected a JSON object, got {type(record).__name__}; "
            f'write one object per line, e.g. {{{json.dumps(text_field)}: "..."}}'
        )
    if text_field not in record:
        fields = ", ".join(repr(k) for k in record) or "none"
        raise DataError(
            f"{source}: {where}: no field {text_field!r} (fields: {fields}); "
            f"set text_field to the field that holds the text"
        )
    text = record[text_field]
    if not isinstance(text, str):
        got = "null" if text is None else type(text).__name__
        raise DataError(
            f"{source}: {where}: field {text_field!r} is {got}, not a string; "
            f"fix the record or set text_field to the field that holds the text"
        )
    if not text.strip():
        tally.empty += 1
        return None
    meta = {k: v for k, v in record.items() if k != text_field}
    meta.update(extra_meta)
    return Document(text=text, meta=meta, source=source, where=where)


# --- JSON Lines -------------------------------------------------------------------------


def _read_jsonl(path: Path, text_field: str, tally: _Tally) -> Iterator[Document]:
    """Stream a JSON Lines file line by line (a ``.json`` holding one array also works)."""
    source = str(path)
    gz = path.name.lower().endswith(".gz")
    try:
        fh = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise _unreadable(path, err) from err
    try:
        if not gz and path.suffix.lower() == ".json" and _starts_with(fh, b"["):
            yield from _read_json_array(fh, path, text_field, tally)
            return
        lineno = 0
        try:
            for lineno, raw in enumerate(fh, 1):  # noqa: B007 - lineno names the failing line
                if lineno == 1 and raw.startswith(_UTF8_BOM):
                    raw = raw[len(_UTF8_BOM) :]
                line = _decode(raw, source, f"line {lineno}")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{source}: line {lineno}: invalid JSON ({err.msg} at column "
                        f"{err.colno}); each line must hold one complete JSON object"
                    ) from None
                doc = _make_doc(record, text_field, source, f"line {lineno}", {}, tally)
                if doc is not None:
                    yield doc
        except (OSError, EOFError, zlib.error) as err:  # truncated or corrupt gzip
            raise DataError(
                f"{source}: cannot read past line {lineno} ({err}); the file is corrupt or "
                f"truncated, re-create it"
            ) from err
    finally:
        fh.close()


def _starts_with(fh: Any, prefix: bytes) -> bool:
    """Peek at the first non-blank bytes without losing them."""
    head = fh.read(4096)
    fh.seek(0)
    return head.removeprefix(_UTF8_BOM).lstrip().startswith(prefix)


def _read_json_array(fh: Any, path: Path, text_field: str, tally: _Tally) -> Iterator[Document]:
    source = str(path)
    data = fh.read().removeprefix(_UTF8_BOM)
    try:
        records = json.loads(_decode(data, source, "file"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{source}: line {err.lineno}: invalid JSON ({err.msg} at column {err.colno}); "
            f"fix it, or write one JSON object per line (JSON Lines)"
        ) from None
    for i, record in enumerate(records, 1):
        doc = _make_doc(record, text_field, source, f"record {i}", {}, tally)
        if doc is not None:
            yield doc


def _decode(raw: bytes, source: str, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        at = f"line {line}" if where == "file" else where
        raise DataError(
            f"{source}: {at}: invalid UTF-8 (byte {raw[err.start]:#04x} at offset "
            f"{err.start}); re-encode the file as UTF-8"
        ) from None


# --- Arrow: Parquet and datasets' save_to_disk ------------------------------------------


def _records_from_batches(
    batches: Iterable[Any],
    columns: Sequence[str],
    path: Path,
    text_field: str,
    tally: _Tally,
    extra_meta: Mapping[str, Any],
) -> Iterator[Document]:
    """Turn Arrow record batches into documents, one row at a time."""
    source = str(path)
    if text_field not in columns:
        shown = ", ".join(repr(c) for c in columns) or "none"
        raise DataError(
            f"{source}: no column {text_field!r} (columns: {shown}); "
            f"set text_field to the column that holds the text"
        )
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            row += 1
            doc = _make_doc(record, text_field, source, f"row {row}", extra_meta, tally)
            if doc is not None:
                yield doc


def _read_parquet(path: Path, text_field: str, tally: _Tally) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise _unreadable(path, err) from err
    with pf:
        try:
            yield from _records_from_batches(
                pf.iter_batches(batch_size=4096), pf.schema_arrow.names, path, text_field, tally, {}
            )
        except (OSError, pa.ArrowException) as err:
            raise _unreadable(path, err) from err


def _read_hf_dataset(
    folder: Path, text_field: str, tally: _Tally, extra_meta: Mapping[str, Any]
) -> Iterator[Document]:
    """Read a ``Dataset.save_to_disk`` folder: ``state.json`` lists its Arrow stream shards."""
    state_path = folder / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _unreadable(state_path, err) from err
    if state.get("_indices_data_files"):
        raise DataError(
            f"{folder}: the dataset was saved with an indices mapping; re-save it with "
            f"dataset.flatten_indices().save_to_disk(...)"
        )
    entries = state.get("_data_files")
    if entries:
        shards = [folder / e["filename"] for e in entries]
    else:
        shards = sorted(folder.glob("*.arrow"))
    if not shards:
        raise DataError(f"{folder}: no .arrow files in this datasets folder; re-save the dataset")
    for shard in shards:
        if not shard.is_file():
            raise DataError(f"{shard}: listed in state.json but missing; re-save the dataset")
        yield from _read_arrow(shard, text_field, tally, extra_meta)


def _read_arrow(
    path: Path, text_field: str, tally: _Tally, extra_meta: Mapping[str, Any]
) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        with pa.memory_map(str(path)) as src:
            try:
                reader = ipc.open_stream(src)  # what datasets writes
                batches: Iterable[Any] = reader
            except pa.ArrowInvalid:
                src.seek(0)
                file_reader = ipc.open_file(src)  # Arrow IPC file format, just in case
                batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
                reader = file_reader
            yield from _records_from_batches(
                batches, reader.schema.names, path, text_field, tally, extra_meta
            )
    except (OSError, pa.ArrowException) as err:
        raise _unreadable(path, err) from err


def _read_dataset_dict(folder: Path, text_field: str, tally: _Tally) -> Iterator[Document]:
    """Read every split of a ``DatasetDict.save_to_disk`` folder, tagging meta["split"]."""
    dict_path = folder / "dataset_dict.json"
    try:
        splits = json.loads(dict_path.read_text(encoding="utf-8"))["splits"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise _unreadable(dict_path, err) from err
    for split in splits:
        sub = folder / split
        if not (sub / "state.json").is_file():
            raise DataError(
                f"{folder}: split {split!r} is listed in dataset_dict.json but {sub} holds no "
                f"state.json; re-save the DatasetDict"
            )
        yield from _read_hf_dataset(sub, text_field, tally, {"split": split})


# --- A folder of text files -------------------------------------------------------------


def _read_text_folder(root: Path, tally: _Tally) -> Iterator[Document]:
    """Read each text file under ``root`` as one document, skipping hidden entries.

    Files with a text suffix must be UTF-8 (anything else is an error, since the user put
    them there as text); files without a suffix are kept only if they look like UTF-8 text,
    since folders often carry binaries such as executables next to ``README``-style files.
    """
    found = 0
    data_files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            fpath = Path(dirpath) / fname
            suffix = fpath.suffix.lower()
            if suffix not in TEXT_SUFFIXES and suffix:
                if fname.lower().endswith(_DATA_SUFFIXES):
                    data_files.append(fname)
                continue
            if not fpath.is_file():
                continue
            try:
                raw = fpath.read_bytes()
            except OSError as err:
                raise _unreadable(fpath, err) from err
            if suffix:
                text = _decode(raw.removeprefix(_UTF8_BOM), str(fpath), "file")
            else:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    logger.debug("%s: no suffix and not UTF-8; skipped as binary", fpath)
                    continue
                if "\x00" in text:
                    logger.debug("%s: no suffix and holds NUL bytes; skipped as binary", fpath)
                    continue
            found += 1
            if not text.strip():
                tally.empty += 1
                continue
            rel = fpath.relative_to(root)
            folder = rel.parts[0] if len(rel.parts) > 1 else ""
            yield Document(
                text=text, meta={"folder": folder, "path": rel.as_posix()}, source=str(fpath)
            )
    if not found and data_files:
        raise DataError(
            f"{root}: no text files, but {len(data_files)} data file(s) such as "
            f"{data_files[0]!r}; pass those files instead of the folder"
        )
