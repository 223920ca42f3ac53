"""The notebooks run top to bottom on the quick demo pool, show their figures and save them as PNGs.

Each notebook's first code cell is tagged ``parameters``; the tests append tiny settings to
it (papermill's convention, without needing papermill) and execute the notebook in a fresh
``python3`` kernel that runs this interpreter.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELL_TIMEOUT_S = 600  # one cell; the slowest (validation training) takes ~30 s on 2 idle cores
FIGURES = {
    "what_if": ["help_hurt", "weight_sweep", "best_subset", "grow_before_after", "task_vs_ppl"],
    "validation": ["proxy_vs_real", "correlations", "decisions", "calibration"],
}


def _parameters_cell(nb):
    return next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The quick demo (pool, eval set), built once and shared by both notebooks."""
    from ablate.demo import run_demo

    out = tmp_path_factory.mktemp("nb-demo")
    run_demo(out, quick=True, progress=False)
    return out


@pytest.fixture(scope="session")
def python3_kernel(tmp_path_factory):
    """Make the ``python3`` kernel run this interpreter, whatever other kernelspecs exist.

    A user-level kernelspec would otherwise win over the venv's; JUPYTER_PATH is searched
    first, so a private spec there pins the kernel without touching any installation.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3 (ablate tests)", "language": "python"})
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "JUPYTER_PATH",
            os.pathsep.join(filter(None, [str(root), os.environ.get("JUPYTER_PATH")])),
        )
        yield "python3"


def run_notebook(name: str, params: dict, cwd: Path, kernel: str):
    """Execute notebooks/<name>.ipynb with ``params`` overriding its parameters cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cell = _parameters_cell(nb)
    declared = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
    assert set(params) <= declared, f"not parameters of {name}: {set(params) - declared}"
    cell.source += "\n# injected by tests/test_notebooks.py\n" + "\n".join(
        f"{k} = {v!r}" for k, v in params.items()
    )
    NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel, resources={"metadata": {"path": str(cwd)}}
    ).execute()  # raises CellExecutionError (with the traceback) on any failing cell
    return nb


def _outputs(nb, kind: str) -> list:
    return [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == kind
    ]


def _check_figures(nb, out: Path, names: list[str]) -> None:
    import matplotlib.image

    for n in names:
        path = out / f"{n}.png"
        assert path.is_file(), f"{path} was not written"
        assert path.read_bytes()[:8] == PNG_MAGIC
        img = matplotlib.image.imread(path)  # decodes the whole file: a truncated PNG fails here
        assert img.shape[0] > 100 and img.shape[1] > 100
    shown = [o for o in _outputs(nb, "display_data") if "image/png" in o.data]
    assert len(shown) == len(names), "every figure is shown inline as well as saved"


@pytest.mark.slow
def test_what_if_notebook(demo_dir, python3_kernel, tmp_path):
    from ablate import Pool

    out = tmp_path / "out"
    params = {
        "POOL": None,  # the default path: (re)use the demo in DEMO_OUT and its eval set
        "DEMO_OUT": str(demo_dir),
        "EVAL_DATA": None,
        "EVAL_BY": "domain",
        "QUICK": True,
        "OUT": str(out),
        "SWEEP_WEIGHTS": [0.0, 0.6],
        "MAX_SUBSET_SIZE": 3,
        "NEW_PARTITION": "json",
        "NEW_DATA": None,
    }
    nb = run_notebook("what_if", params, tmp_path, python3_kernel)
    _check_figures(nb, out, FIGURES["what_if"])
    text = "".join(o.text for o in _outputs(nb, "stream"))
    assert "grow() trained 1 member(s): ['json/0']" in text  # new data costs one member
    grown = Pool.open(out / "grown-pool")
    assert sorted(grown.partitions) == ["asyncio", "docs", "email", "json"]
    assert len(grown.members) == 4 and not grown.missing()
    original = Pool.open(demo_dir / "pool")  # the notebook grew a copy, not the given pool
    assert "json" not in original.partitions and len(original.members) == 3


@pytest.mark.slow
def test_validation_notebook(demo_dir, python3_kernel, tmp_path):
    out = tmp_path / "out"
    params = {
        "POOL": str(demo_dir / "pool"),
        "EVAL_DATA": str(demo_dir / "eval.jsonl"),
        "EVAL_BY": "domain",
        "QUICK": True,
        "OUT": str(out),
        "SAMPLE": 3,  # three weighted mixtures of the three demo partitions: the fewest that rank
        "BUDGET": "fixed",
        "WEIGHTS": "dirichlet",
        "SIZES": (2,),
        "REPEATS": 1,
        "MIXTURES": None,
        "BOOTSTRAP": 100,
        "SEED": 0,
    }
    nb = run_notebook("validation", params, tmp_path, python3_kernel)
    _check_figures(nb, out, FIGURES["validation"])
    import pandas as pd

    corr = pd.read_csv(out / "correlations.csv", index_col="domain")
    assert set(corr.index) == {"asyncio", "docs", "email", "pooled"}
    assert corr["n"].to_dict() == {"asyncio": 3, "docs": 3, "email": 3, "pooled": 9}
    assert math.isfinite(corr.loc["pooled", "pearson"])
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 9 and (pairs[["proxy", "real"]] > 1).all().all()
    dec = pd.read_csv(out / "decisions.csv", index_col="target")
    assert list(dec.index) == ["asyncio", "docs", "email", "macro"]
    assert (dec["n"] == 3).all() and (dec["regret"] >= 0).all() and dec["spearman"].notna().any()


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_is_saved_clean_and_parametrised(name):
    """Saved without outputs, valid nbformat, first code cell tagged ``parameters``."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for fig in FIGURES[name]:
        assert f'save(fig, "{fig}")' in "".join(c.source for c in code)
