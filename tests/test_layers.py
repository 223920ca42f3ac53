"""The layers of ``ablate``: which room may import which, and no import cycles.

Every import counts: module level, function-local (lazy) and ``if TYPE_CHECKING:`` ones
(a typing import that points up still says the lower room knows the upper one). An import
of a package's face (``from ablate.pool import Pool``) is an edge to that package's
``__init__``, so a module that reaches a sibling through its own package face closes a
cycle through the ``__init__`` and fails here. Rooms, bottom up (a room may import itself
and any room below it):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ablate"

# Bottom up. A module belongs to the first room whose prefix matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("version", ("ablate.version",)),
    ("kernels", ("ablate.kernels",)),
    ("pool", ("ablate.pool",)),
    ("extras", ("ablate.extras",)),
    ("mixture", ("ablate.mixture",)),
    ("objective", ("ablate.objective",)),
    ("data", ("ablate.data",)),
    ("engine", ("ablate.engine",)),
    ("export", ("ablate.export",)),
    ("evaluator", ("ablate.evaluator",)),
    ("racing", ("ablate.racing",)),
    ("present", ("ablate.present",)),
    ("space", ("ablate.strategies.space",)),
    ("laws", ("ablate.laws",)),
    ("strategies", ("ablate.strategies",)),
    ("validation", ("ablate.validation",)),
    ("demo", ("ablate.demo",)),
    ("face", ("ablate.__init__",)),  # ``import ablate``: the public names
    ("cli", ("ablate.cli",)),
]
__doc__ += "\n" + " < ".join(name for name, _ in LAYERS) + "\n"


def module_name(path: Path) -> str:
    """``ablate.engine.merge`` for ablate/engine/merge.py, ``ablate.pool`` for its __init__."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room_of(module: str) -> int:
    """Index of ``module``'s room in ``LAYERS`` (the face is ``ablate`` itself)."""
    name = "ablate.__init__" if module == "ablate" else module
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"module {module} is in no room; add it to LAYERS in {__file__}")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every ablate module ``module`` imports, wherever the import statement stands."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "ablate"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "ablate":
                continue
            for a in node.names:  # ``from ablate.engine import merges``: the submodule
                sub = f"{target}.{a.name}"
                out.add(sub if sub in modules else target)
    return {m for m in out if m in modules and m != module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_room(graph):
    for m in graph:
        room_of(m)


def test_no_import_points_up(graph):
    back = sorted(
        f"{m} ({LAYERS[room_of(m)][0]}) imports {t} ({LAYERS[room_of(t)][0]})"
        for m, targets in graph.items()
        for t in targets
        if room_of(t) > room_of(m)
    )
    assert not back, "imports that point up the layers:\n" + "\n".join(back)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (lazy and TYPE_CHECKING imports count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_checks_can_fail():
    """A planted back arrow and a planted cycle through a package face are caught."""
    planted = {
        "ablate.pool": {"ablate.pool.pool"},
        "ablate.pool.pool": {"ablate.pool.storage"},
        "ablate.pool.storage": {"ablate.pool"},  # a sibling reached through the face
        "ablate.engine.merge": {"ablate.evaluator"},
        "ablate.evaluator": set(),
    }
    assert find_cycles(planted) == [["ablate.pool", "ablate.pool.pool", "ablate.pool.storage"]]
    assert room_of("ablate.evaluator") > room_of("ablate.engine.merge")


def test_imports_are_resolved_lazy_and_typing_ones_included(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ablate.evaluator import Evaluator\n"
        "def f():\n    from ablate.engine import merges\n    import ablate.kernels\n"
        "from ablate import Mixture\n",
        encoding="utf-8",
    )
    modules = dict.fromkeys(
        ["ablate", "ablate.evaluator", "ablate.engine", "ablate.engine.merges", "ablate.kernels"],
        src,
    )
    got = imports_of("ablate.engine.merge", src, modules)
    assert got == {"ablate.evaluator", "ablate.engine.merges", "ablate.kernels", "ablate"}
