"""Test helpers shared by test modules (conftest puts this folder on sys.path)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

# GPU architectures the Triton kernels must compile for, checked on any machine through
# the real compiler: Ampere (A100: mma.sync) and Hopper (H100/H200: wgmma).
AOT_CAPABILITIES = (80, 90)

# Three synthetic domains with disjoint vocabularies: models trained on one are measurably
# better on it, so merge/score tests have signal even at this size.
WORDS = {
    "code": [
        "def",
        "return",
        "import",
        "class",
        "self",
        "for",
        "in",
        "if",
        "else",
        "while",
        "print",
        "yield",
        "lambda",
    ],
    "wiki": [
        "the",
        "history",
        "of",
        "city",
        "river",
        "was",
        "born",
        "in",
        "king",
        "war",
        "empire",
        "north",
        "south",
    ],
    "math": [
        "theorem",
        "proof",
        "lemma",
        "integral",
        "sum",
        "prime",
        "group",
        "field",
        "let",
        "x",
        "y",
        "equals",
    ],
}


def make_docs(domain: str, n: int, seed: int, length: int = 60) -> list[dict]:
    rng = random.Random(f"{domain}-{seed}")
    return [
        {"text": " ".join(rng.choice(WORDS[domain]) for _ in range(length)), "domain": domain}
        for _ in range(n)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    from ablate.pool.atomic import write_jsonl as write

    return write(path, records)


def tiny_recipe(**kw):
    from ablate.pool import Recipe

    base = dict(unit_tokens=600, seq_len=32, batch_size=4, lr=3e-3)
    base.update(kw)
    return Recipe(**base)


def tiny_spec():
    from ablate.pool import TinyModelSpec

    return TinyModelSpec(
        vocab_size=300, hidden_size=32, layers=2, heads=2, intermediate_size=64, seed_tokens=3000
    )


def eval_cli_args(command: str, pool: Path, eval_data: Path, *more: object) -> list[str]:
    """``COMMAND POOL --eval-data EVAL --eval-by domain MORE...`` as strings."""
    return [
        command,
        str(pool),
        "--eval-data",
        str(eval_data),
        "--eval-by",
        "domain",
        *map(str, more),
    ]


def run_captured(cmd: list[str], *, timeout: float = 600, **kw: Any):
    """``subprocess.run(cmd)`` with text stdout/stderr captured; the caller checks the status."""
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _main_as_a_process(main: Any, argv: list[str]) -> int:
    """``main(argv)``'s exit status as the interpreter would make it."""
    import traceback

    try:
        return main(argv) or 0
    except SystemExit as e:  # argparse's usage errors and --help
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except Exception:
        traceback.print_exc()
        return 1


def run_cli(*args: object, cwd: Path | None = None, subprocess: bool = False):
    """Run the ``ablate`` command line; returns a ``CompletedProcess``.

    In this process by default (``ablate.cli.main`` with its streams captured, an uncaught
    exception printed as a traceback with status 1, as the interpreter would): each fresh
    interpreter pays torch's and transformers' imports, several seconds on a CI machine, and
    the suite runs the CLI some seventy times. ``subprocess=True`` runs the real console
    entry in its own interpreter, for what only a process shows (its exit path, pipes, a
    module's import-time state).
    """
    import contextlib
    import io
    import os
    import subprocess as sp

    argv = ["-q", *map(str, args)]
    if subprocess:
        return run_captured([sys.executable, "-m", "ablate.cli", *argv], cwd=cwd)
    from ablate.cli import main

    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd or before)  # contextlib.chdir is 3.11+; the project supports 3.10
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _main_as_a_process(main, argv)
    finally:
        os.chdir(before)
    return sp.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def domain_evaluator(pool: Path | Any, corpus: dict[str, Path], **kw: Any):
    """An ``Evaluator`` of ``pool`` on the corpus's eval split by domain; by default it neither
    stores results nor shows progress (``kw`` overrides or adds ``Evaluator`` options)."""
    from ablate import Evaluator

    return Evaluator(pool, corpus["eval"], by="domain", **{"store": False, "progress": False, **kw})


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: equal digests = byte-identical trees."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def fake_grow(pool: Any, *, scale: float = 0.02) -> int:
    """A FAST FAKE-TRAINED STAND-IN for ``pool.grow()``, for tests about search and scale.

    Each missing member is the seed plus seeded noise (``scale`` x each tensor's std), written
    through the same ``write_trained`` path and records as a real member, so the pool loads,
    merges and scores exactly like a grown one; nothing is trained. Returns how many were
    written.
    """
    import functools
    import zlib

    import torch

    from ablate.pool.storage import MemberRecord
    from ablate.pool.train import TrainResult, write_trained

    missing = pool.missing()
    base = pool.load_base_model()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for ref in missing:
        gen = torch.Generator().manual_seed(zlib.crc32(ref.member_id.encode()))
        with torch.no_grad():
            for name, p in base.named_parameters():
                noise = torch.randn(p.shape, generator=gen) * (scale * float(p.std() or 1.0))
                p.copy_(state[name] + noise)
        write_trained(
            pool.member_folder(ref.partition, ref.unit),
            base,
            TrainResult(0, 0, 0.0, (), 0.0, "cpu"),
            pool.manifest.recipe,
            seed=0,
            base_sha256=pool.manifest.base_sha256,
            record=functools.partial(
                MemberRecord, partition=ref.partition, unit=ref.unit, data_hash=ref.data_hash
            ),
            record_file="member.json",
        )
    return len(missing)


def write_member_stat(pool: Any, stat: Any, tensors_of: Any, **fields: Any) -> None:
    """Give every member of ``pool`` a hand-made statistic (``stat``: ``storage.FISHER`` or
    ``GRAM``): ``tensors_of(row, name, weight)`` returns its tensor for a weight, or None;
    ``fields`` are the record's own (``sequences``, ``mean``; ``tokens``)."""
    from safetensors.torch import save_file

    from ablate.pool.atomic import sha256_file, write_json
    from ablate.pool.statistics import stat_paths
    from ablate.pool.storage import utc_now
    from ablate.pool.weights import load_tensors

    for i, rec in enumerate(pool.members):
        weights = load_tensors(pool.weights_path(rec))
        tensors = {
            k: t.float().contiguous()
            for k, v in weights.items()
            if (t := tensors_of(i, k, v)) is not None
        }
        path, record = stat_paths(pool, rec, stat)
        save_file(tensors, str(path))
        got = stat.record_cls(
            member=rec.member_id,
            weights_sha256=rec.weights_sha256,
            batches=1,
            seq_len=pool.manifest.recipe.seq_len,
            created_at=utc_now(),
            **{f"{stat.name}_sha256": sha256_file(path)},
            **fields,
        )
        write_json(record, got.model_dump(mode="json"))


def merge_lora_members(pool: Any, merge: str) -> tuple[Any, Any, dict, list[dict]]:
    """A LoRA pool's members merged by ``merge`` under weights 1, 2, ..., N (normalised), for
    checks against a formula: (the merged model, the weights, its parameters, each member's
    effective weights: seed plus its adapter)."""
    import torch

    from ablate.engine.layout import MemberLayout
    from ablate.engine.merge import MergedModel
    from ablate.pool.weights import load_tensors

    layout = MemberLayout(pool, merge=merge)
    m = MergedModel(pool, layout.members, device=torch.device("cpu"), progress=False, layout=layout)
    w = torch.tensor([1.0 + i for i in range(len(layout.members))])
    w /= w.sum()
    m.merge(w)
    got = {k: p.detach().clone() for k, p in m.model.named_parameters()}
    recipe = pool.manifest.recipe
    full = [
        pool.method.full_state(load_tensors(pool.weights_path(r)), pool.load_base_model, recipe)
        for r in layout.members
    ]
    return m, w, got, full


def load_benchmark(name: str) -> Any:
    """A script of ``benchmarks/`` imported as a module (they are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
