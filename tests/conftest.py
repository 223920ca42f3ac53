"""Shared fixtures: tiny corpora and tiny pools built once per session (no downloads)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any hub access in a test is a bug: fail fast
sys.path.insert(0, str(Path(__file__).parent))

from support import WORDS, make_docs, tiny_recipe, tiny_spec, write_jsonl  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    seed = [r for dom in WORDS for r in make_docs(dom, 15, seed=0)]
    random.Random(0).shuffle(seed)
    return {
        "seed": write_jsonl(d / "seed.jsonl", [{"text": r["text"]} for r in seed]),
        "train": write_jsonl(
            d / "train.jsonl", make_docs("code", 12, 1) + make_docs("wiki", 12, 1)
        ),
        "math": write_jsonl(d / "math.jsonl", make_docs("math", 6, 1)),  # one short unit
        "eval": write_jsonl(
            d / "eval.jsonl",
            make_docs("code", 3, 2) + make_docs("wiki", 3, 2) + make_docs("math", 3, 2),
        ),
    }


def _build(root: Path, corpus: dict[str, Path], merge: str | None = None, **recipe):
    from ablate.pool import Pool

    pool = Pool.create(
        root,
        seed_data=corpus["seed"],
        recipe=tiny_recipe(**recipe),
        tiny=tiny_spec(),
        progress=False,
        merge=merge,
    )
    pool.add([corpus["train"]], by="domain", progress=False)
    pool.add([corpus["math"]], by="domain", progress=False)
    pool.grow(progress=False)
    return pool


@pytest.fixture(scope="session")
def full_pool_dir(tmp_path_factory, corpus) -> Path:
    """A trained full-weight pool: code, math, wiki partitions (one or two units each)."""
    return _build(tmp_path_factory.mktemp("full") / "pool", corpus).path


@pytest.fixture(scope="session")
def lora_pool_dir(tmp_path_factory, corpus) -> Path:
    """A trained LoRA pool that merges by the plain average (the exact factor merge these
    tests check; a new LoRA pool's default, the Fisher merge, has tests of its own)."""
    path = tmp_path_factory.mktemp("lora") / "pool"
    return _build(path, corpus, merge="average", method="lora").path


@pytest.fixture
def full_pool(full_pool_dir, tmp_path):
    """A private copy of the session pool, free to modify."""
    import shutil

    from ablate.pool import Pool

    dst = tmp_path / "pool"
    shutil.copytree(full_pool_dir, dst)
    return Pool.open(dst)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for every Ray test (startup is the slow part); skips without ray."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
