"""Fixtures shared by the pool tests."""

from __future__ import annotations

import pytest
from support import tiny_recipe

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
