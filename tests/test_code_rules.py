"""Rules of the code's shape that a reviewer would otherwise have to remember.

* Underscored names stay home: no module of ablate, pool, kernels or benchmarks reaches into
  another object's private members (ruff's SLF001); a need for one is a missing public API.
* Imports flow one way: ``ablate -> pool -> kernels``; ``kernels`` imports neither of the
  others and ``pool`` never imports ``ablate``.
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
    out = run_captured(
        [*_ruff(), *rule, "ablate", "pool", "kernels", "benchmarks"], cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, f"private members used outside their module:\n{out.stdout}"


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("room", "forbidden"), [("kernels", {"ablate", "pool"}), ("pool", {"ablate"})]
)
def test_imports_flow_one_way(room, forbidden):
    offenders = {
        str(f.relative_to(ROOT)): sorted(_imported_roots(f) & forbidden)
        for f in sorted((ROOT / room).rglob("*.py"))
        if _imported_roots(f) & forbidden
    }
    assert not offenders, f"{room} must not import {sorted(forbidden)}: {offenders}"
