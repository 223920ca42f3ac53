"""Fault-injection driver: install one fault, then run the real ``ablate`` command line.

    python inject.py FAULT N -- pool grow POOL ...

FAULT names a critical moment in a write; the fault fires on its N-th occurrence (1-based).
Every fault SIGKILLs the process (no ``finally``, no ``atexit``: the harshest crash a pool
can see). Full-disk faults need no new process and live in ``test_disk_full.py``.
The hooks patch library seams from the outside, so product code carries no test hooks.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

FAULTS: dict[str, Callable[[int], None]] = {}


def fault(name: str) -> Callable[[Callable[[int], None]], Callable[[int], None]]:
    """Register an installer under ``name``."""

    def register(fn: Callable[[int], None]) -> Callable[[int], None]:
        FAULTS[name] = fn
        return fn

    return register


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _nth(n: int) -> Callable[[], bool]:
    """A counter that answers True on its n-th call only."""
    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == n

    return hit


@fault("kill-in-member-save")
def _kill_in_member_save(n: int) -> None:
    """Kill with half of a member's safetensors file on disk (what a crash mid-write leaves)."""
    import safetensors.torch as st

    real, hit = st.save_file, _nth(n)

    def save_file(tensors: Any, filename: Any, metadata: Any = None) -> None:
        real(tensors, filename, metadata=metadata)
        if hit():
            os.truncate(filename, os.path.getsize(filename) // 2)
            _die()

    st.save_file = save_file


@fault("kill-at-publish")
def _kill_at_publish(n: int) -> None:
    """Kill just before a staged ``.NAME.*.tmp`` folder is renamed into place."""
    real, hit = os.rename, _nth(n)

    def rename(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        if os.fspath(src).endswith(".tmp") and hit():
            _die()
        real(src, dst, *args, **kw)

    os.rename = rename


@fault("kill-in-tokenize")
def _kill_in_tokenize(n: int) -> None:
    """Kill half-way through the n-th tokenizer batch (of 256 documents: a small partition is one)."""
    from ablate.pool import tokens as pool_tokens

    real, hit = pool_tokens.encode_documents, _nth(n)

    def encode_documents(tokenizer: Any, texts: Any, progress: Any = None) -> Any:
        if hit():
            real(tokenizer, texts[: len(texts) // 2], progress)
            _die()
        return real(tokenizer, texts, progress)

    pool_tokens.encode_documents = encode_documents


class _Connection:
    """A sqlite3 connection that dies after its n-th ``executemany``, before the commit."""

    def __init__(self, db: Any, hit: Callable[[], bool]):
        self._db, self._hit = db, hit

    def executemany(self, *args: Any) -> Any:
        cur = self._db.executemany(*args)
        if self._hit():
            _die()  # rows inserted, transaction not yet committed
        return cur

    def __enter__(self) -> _Connection:
        self._db.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._db.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@fault("kill-in-store-put")
def _kill_in_store_put(n: int) -> None:
    from ablate.engine.results import ResultsStore

    real_init, hit = ResultsStore.__init__, _nth(n)

    def __init__(self: ResultsStore, *args: Any, **kw: Any) -> None:
        real_init(self, *args, **kw)
        self._db = _Connection(self._db, hit)

    ResultsStore.__init__ = __init__  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    name, n, sep, *args = argv
    if sep != "--" or name not in FAULTS:
        raise SystemExit(f"usage: inject.py {{{','.join(FAULTS)}}} N -- ABLATE_ARGS...")
    FAULTS[name](int(n))
    from ablate.cli import main as ablate_main

    return ablate_main(["-q", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
