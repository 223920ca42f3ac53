"""Fault-injection fixtures: run the real CLI with one fault installed (see ``inject.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

INJECT = Path(__file__).with_name("inject.py")

Inject = Callable[..., subprocess.CompletedProcess]
Tree = Callable[[Path], dict[str, bytes]]


def _inject(fault: str, n: int, *args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(INJECT), fault, str(n), "--", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _visible_tree(root: Path) -> dict[str, bytes]:
    """Files a reader can see: hidden names (staged ``.x.tmp``, ``.x.lock``) left out."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.fixture
def inject() -> Inject:
    """``inject(fault, n, *ablate_args)`` -> CompletedProcess of the faulted CLI run."""
    return _inject


@pytest.fixture
def visible_tree() -> Tree:
    return _visible_tree


def hidden_leftovers(root: Path) -> list[str]:
    """Temporaries of interrupted writes (``.NAME.*.tmp`` / ``.NAME.old``) under ``root``."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob(".*")
        if p.name.endswith((".tmp", ".old"))
    )


@pytest.fixture
def leftovers() -> Callable[[Path], list[str]]:
    return hidden_leftovers
