"""Rules of the code's shape that a reviewer would otherwise have to remember.

* Underscored names stay home: no module of ablate, pool, kernels or benchmarks reaches into
  another object's private members (ruff's SLF001); a need for one is a missing public API.
* Imports flow one way: ``ablate -> ablate.pool -> ablate.kernels``; the kernels import
  nothing else of ablate, the pool nothing but the kernels.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest
from support import run_captured

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (the dev extra has it)")
    return [exe]


def test_no_module_touches_another_objects_private_members():
    rule = ["check", "--no-cache", "--select", "SLF001", "--output-format", "concise"]
    out = run_captured([*_ruff(), *rule, "ablate", "benchmarks"], cwd=ROOT, timeout=120)
    assert out.returncode == 0, f"private members used outside their module:\n{out.stdout}"


def _imported_rooms(path: Path) -> set[str]:
    """``ablate.X`` for every ``ablate`` import (``ablate`` alone for the package face)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        rooms |= {".".join(n.split(".")[:2]) for n in names if n.split(".")[0] == "ablate"}
    return rooms


@pytest.mark.parametrize(
    ("room", "allowed"),
    [("ablate/kernels", {"ablate.kernels"}), ("ablate/pool", {"ablate.pool", "ablate.kernels"})],
)
def test_imports_flow_one_way(room, allowed):
    files = sorted((ROOT / room).rglob("*.py"))
    assert files, f"{room} has no modules"
    offenders = {
        str(f.relative_to(ROOT)): sorted(_imported_rooms(f) - allowed)
        for f in files
        if _imported_rooms(f) - allowed
    }
    assert not offenders, f"{room} may import only {sorted(allowed)}: {offenders}"
