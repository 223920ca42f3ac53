"""Untrusted files are never unpickled: product code reads weights through safetensors only.

A pool, a seed model or an eval cache may come from someone else; unpickling any of them
runs their code. This test reads the product's source (``ablate/``, with its kernels and pool)
and fails on every call that could unpickle: ``pickle``-family loaders, ``torch.load``
without ``weights_only=True``, ``np.load`` with ``allow_pickle`` anything but ``False``,
``pandas.read_pickle``, ``trust_remote_code=True``, and model ``from_pretrained`` calls that
do not insist on safetensors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("ablate",)

# module -> functions that unpickle whatever they are given
PICKLE_READERS = {
    "pickle": {"load", "loads", "Unpickler"},
    "_pickle": {"load", "loads", "Unpickler"},
    "cloudpickle": {"load", "loads"},
    "dill": {"load", "loads"},
    "joblib": {"load"},
    "marshal": {"load", "loads"},
    "shelve": {"open"},
    "pandas": {"read_pickle"},
}
# from_pretrained on these may fall back to pickled ``*.bin`` weights unless told not to
MODEL_LOADERS = ("Model", "ForCausalLM", "PeftModel")


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


class _Scanner(ast.NodeVisitor):
    def __init__(self, where: str):
        self.where = where
        self.aliases: dict[str, str] = {"np": "numpy", "pd": "pandas"}  # name -> module
        self.problems: list[str] = []

    def _flag(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"{self.where}:{getattr(node, 'lineno', '?')}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = (
                a.name if a.asname else a.name.split(".")[0]
            )

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = (node.module or "").split(".")[0]
        for a in node.names:
            if a.name in PICKLE_READERS.get(module, ()) or (module, a.name) in {
                ("torch", "load"),
                ("numpy", "load"),
            }:
                self._flag(node, f"imports {module}.{a.name} by name (call it qualified, safely)")
            self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def _name(self, func: ast.expr) -> str:
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if isinstance(func, ast.Name):
            parts.append(self.aliases.get(func.id, func.id))
        return ".".join(reversed(parts))

    def visit_Call(self, node: ast.Call) -> None:
        name = self._name(node.func)
        module, _, fn = name.rpartition(".")
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        top = module.split(".")[0]
        if fn in PICKLE_READERS.get(top, ()):
            self._flag(node, f"{name}() unpickles its input")
        if name in ("torch.load", "torch.serialization.load") and not _is_const(
            kw.get("weights_only"), True
        ):
            self._flag(node, f"{name}() without weights_only=True")
        if (
            name == "numpy.load"
            and "allow_pickle" in kw
            and not _is_const(kw["allow_pickle"], False)
        ):
            self._flag(node, "numpy.load(allow_pickle=...) may unpickle; leave it False")
        if "trust_remote_code" in kw and not _is_const(kw["trust_remote_code"], False):
            self._flag(node, "trust_remote_code runs code from the model folder")
        loads_model = fn == "from_pretrained" and module.endswith(MODEL_LOADERS)
        if loads_model and not _is_const(kw.get("use_safetensors"), True):
            self._flag(node, f"{name}() without use_safetensors=True may read pickled weights")
        self.generic_visit(node)


def scan(source: str, where: str) -> list[str]:
    scanner = _Scanner(where)
    scanner.visit(ast.parse(source))
    return scanner.problems


def _product_files() -> list[Path]:
    files = [p for d in PRODUCT for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 10, f"product sources not found under {ROOT}"
    return files


def test_product_code_never_unpickles() -> None:
    problems = [
        p
        for f in _product_files()
        for p in scan(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))
    ]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.load(f)",
        "import pickle as pk\npk.loads(b)",
        "from pickle import loads",
        "import torch\ntorch.load(p)",
        "import torch\ntorch.load(p, weights_only=False)",
        "import numpy as np\nnp.load(p, allow_pickle=True)",
        "import numpy\nnumpy.load(p, allow_pickle=flag)",
        "import pandas as pd\npd.read_pickle(p)",
        "import joblib\njoblib.load(p)",
        "from transformers import AutoModelForCausalLM\nAutoModelForCausalLM.from_pretrained(d)",
        "from transformers import AutoTokenizer\nAutoTokenizer.from_pretrained(d, trust_remote_code=True)",
    ],
)
def test_scanner_catches_unsafe_calls(snippet: str) -> None:
    assert scan(snippet, "snippet"), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(p, weights_only=True)",
        "import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)",
        "from safetensors.torch import load_file\nload_file(p)",
        "from transformers import AutoTokenizer\nAutoTokenizer.from_pretrained(d, local_files_only=True)",
        "from transformers import AutoModelForCausalLM\n"
        "AutoModelForCausalLM.from_pretrained(d, use_safetensors=True)",
        "import json\njson.load(f)",
    ],
)
def test_scanner_allows_safe_calls(snippet: str) -> None:
    assert scan(snippet, "snippet") == [], snippet
