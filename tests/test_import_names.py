"""Every import name ablate installs is under ``ablate.``: nothing of ours answers to a bare
``kernels`` or ``pool``, which other distributions own (transformers >= 5.25 imports Hugging
Face's ``kernels`` when it loads its activations).

Checked in child processes, so the test process's own imports cannot hide a collision, from
the repository root (where ``python -m pytest`` and a user's ``python`` put the checkout first
on ``sys.path``) and from an unrelated folder.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest
from support import run_captured

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import transformers.activations  # imports Hugging Face's `kernels` on transformers >= 5.25
import ablate, ablate.kernels, ablate.pool
import kernels
from ablate import Evaluator, Mixture, Pool  # the public API, unchanged
import importlib.util
pool = importlib.util.find_spec("pool")
print(json.dumps({
    "ablate": ablate.__file__,
    "ablate.kernels": ablate.kernels.__file__,
    "ablate.pool": ablate.pool.__file__,
    "kernels": kernels.__file__,
    "pool": [] if pool is None else [pool.origin, *(pool.submodule_search_locations or [])],
}))
"""


def test_hugging_face_kernels_is_installed():
    """The collision this file guards against needs the other `kernels` to be there: if a
    transformers release stopped depending on it, this says so instead of skipping."""
    spec = importlib.util.find_spec("kernels")
    assert spec is not None and spec.origin, "Hugging Face's `kernels` is not installed"
    assert not Path(spec.origin).resolve().is_relative_to(ROOT / "ablate")


@pytest.mark.parametrize("where", ["repository root", "other folder"])
def test_ablate_and_transformers_import_side_by_side(where, tmp_path):
    cwd = ROOT if where == "repository root" else tmp_path
    run = run_captured([sys.executable, "-c", PROBE], cwd=cwd, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    ours = (ROOT / "ablate").resolve()
    for name in ("ablate", "ablate.kernels", "ablate.pool"):
        assert Path(found[name]).resolve().is_relative_to(ours), (name, found[name])
    # the bare names are someone else's (or nobody's), never a folder of this checkout
    assert "site-packages" in found["kernels"], found["kernels"]
    assert not [p for p in found["pool"] if p and str(ROOT) in p], found["pool"]


def test_the_repository_root_holds_no_bare_package():
    for name in ("kernels", "pool"):
        assert not (ROOT / name).exists(), f"a top-level '{name}' folder is importable as '{name}'"


@pytest.mark.slow
def test_the_wheel_installs_only_the_ablate_package(tmp_path):
    run = run_captured(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("ablate_sim-")  # the distribution name; `ablate` is taken on PyPI
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"ablate"}, sorted(tops)
    assert len(dist_info) == 1
    # the rooms are inside the package, with their modules
    for module in ("ablate/kernels/average.py", "ablate/pool/pool.py", "ablate/cli/__init__.py"):
        assert module in names, module
