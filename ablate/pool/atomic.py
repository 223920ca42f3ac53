"""Crash-safe writes: nothing half-written is ever visible under its final name.

Every file or folder is written under a temporary name in the same directory, flushed
to disk, then moved into place with ``os.replace``/``os.rename`` (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_HASH_CHUNK = 1 << 22  # 4 MiB reads keep hashing I/O-bound without a large buffer


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as sorted, indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write ``records`` one JSON object per line, atomically; returns the path (corpus files
    are written, then handed on)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    write_bytes(path, text.encode("utf-8"))
    return Path(path)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is renamed to ``final``.

    On any error (or KeyboardInterrupt) the temporary folder is removed and ``final`` is
    untouched. If ``final`` already exists it is replaced only after the new one is
    complete, so a reader sees either the old folder or the new one, never a mix.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON form of ``obj`` (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def remove_stale_temporaries(folder: str | os.PathLike, prefix: str = ".") -> None:
    """Delete leftovers of interrupted writes directly in ``folder``.

    Leftovers are the ``.tmp`` files and folders of ``write_bytes``/``staged_dir`` and the
    ``.old`` folders of ``staged_dir`` whose names start with ``prefix``. The default sweeps
    every hidden one; ``prefix=f".{name}."`` sweeps only those of ``staged_dir(folder / name)``
    (for a caller that holds ``name``'s lock while others may be staging its siblings).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name.startswith(prefix) and child.name.endswith((".tmp", ".old")):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
