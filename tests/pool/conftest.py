"""Fixtures shared by the pool tests."""

from __future__ import annotations

import pytest
from support import run_cli, tiny_recipe

from ablate.pool import Pool


@pytest.fixture
def empty_pool(full_pool_dir, tmp_path) -> Pool:
    """A new pool on the session pool's seed model (no seed training), with no data folder yet."""
    return Pool.create(
        tmp_path / "pool",
        base=str(full_pool_dir / "base"),
        recipe=tiny_recipe(unit_tokens=100),
        progress=False,
    )


@pytest.fixture(scope="session")
def seeded(tmp_path_factory, full_pool_dir, corpus) -> Pool:
    """A pool on the session pool's seed whose members start from the seed's second moments
    (so its merge is, by default, ``fisher_damped``), grown by ``ablate pool grow``. Shared:
    a test that changes it works on a copy."""
    pool = Pool.create(
        tmp_path_factory.mktemp("seeded") / "pool",
        base=str(full_pool_dir / "base"),
        seed_data=corpus["seed"],
        recipe=tiny_recipe(member_preconditioner="seed"),
        progress=False,
    )
    pool.add([corpus["train"]], by="domain", progress=False)
    grow = run_cli("pool", "grow", pool.path)
    assert grow.returncode == 0, grow.stderr
    return pool
