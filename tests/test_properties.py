"""Property-based tests (Hypothesis) for the invariants the results store and merges rely on.

* Mixtures: the canonical key is a fixed point (``parse(key)`` gives the same mixture), and
  neither the order nor the scale of the weights changes it, so one mixture never gets two
  cache entries.
* Base units: earlier units do not move when a partition grows (what ``cut_units`` promises
  beyond ``tests/pool/test_partition.py``'s per-call checks).
* The merge: ``kernels.weighted_average`` is linear in the weights, does not care about
  member order, and a uniform subset is the plain mean of its members.

Example counts stay modest (CI time); shapes stay small.
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ablate.kernels as kernels
from ablate import Mixture
from ablate.pool.partition import cut_units

FEW = settings(max_examples=50, deadline=None)

# partition names as the pool accepts them (see pool.partition.PARTITION_NAME_RE)
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_+-]{0,11}\Z").filter(lambda s: ".." not in s)
weight = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
weight_maps = st.dictionaries(names, weight, min_size=1, max_size=12)


# ---------------------------------------------------------------- mixtures


@FEW
@given(weight_maps)
def test_key_round_trips(ws: dict[str, float]) -> None:
    m = Mixture.of(ws)
    assert Mixture.parse(m.key) == m
    assert Mixture.parse(Mixture.parse(m.key).key).key == m.key


@FEW
@given(weight_maps, st.randoms(use_true_random=False))
def test_order_does_not_matter(ws: dict[str, float], rnd) -> None:
    items = list(ws.items())
    rnd.shuffle(items)
    assert Mixture.of(dict(items)) == Mixture.of(ws)
    spec = ",".join(f"{n}={w!r}" for n, w in items)
    assert Mixture.parse(spec) == Mixture.of(ws)


@FEW
@given(st.dictionaries(names, st.floats(1e-3, 1e3), min_size=1, max_size=12), names)
def test_weights_are_normalised(ws: dict[str, float], extra: str) -> None:
    m = Mixture.of({extra: 0.0, **ws})  # a zero weight is no weight
    got = m.as_dict()
    assert list(got) == sorted(ws) and all(w > 0 for w in got.values())
    assert math.isclose(math.fsum(got.values()), 1.0, abs_tol=1e-15)
    total = math.fsum(ws.values())
    for n, w in ws.items():
        assert math.isclose(got[n], w / total, rel_tol=1e-6, abs_tol=1e-12)


@FEW
@given(weight_maps, names)
def test_negligible_weights_drop_out(ws: dict[str, float], extra: str) -> None:
    """Below half a part in 10**12 a weight cannot change the merge: it is dropped."""
    assume(extra not in ws)
    tiny = math.fsum(ws.values()) * 1e-14
    with_tiny, without = Mixture.of({**ws, extra: tiny}).as_dict(), Mixture.of(ws).as_dict()
    assert with_tiny.keys() == without.keys()
    assert all(math.isclose(with_tiny[n], w, abs_tol=1.5e-12) for n, w in without.items())


@FEW
@given(weight_maps, st.integers(min_value=-30, max_value=30), st.floats(1e-3, 1e3))
def test_scaling_does_not_matter(ws: dict[str, float], k: int, c: float) -> None:
    # a power of two scales exactly, so the key must not move at all
    assert Mixture.of({n: w * 2.0**k for n, w in ws.items()}).key == Mixture.of(ws).key
    scaled = Mixture.of({n: w * c for n, w in ws.items()}).as_dict()
    for n, w in Mixture.of(ws).as_dict().items():
        assert math.isclose(scaled[n], w, rel_tol=1e-9, abs_tol=1e-12)


@FEW
@given(st.lists(names, min_size=1, max_size=12, unique=True), st.floats(1e-3, 1e3))
def test_a_subset_is_any_equal_weighting(subset: list[str], w: float) -> None:
    m = Mixture.uniform(subset)
    assert m.is_uniform and m == Mixture.parse(",".join(subset))
    assert Mixture.of(dict.fromkeys(subset, w)) == m


# ---------------------------------------------------------------- base units


@FEW
@given(
    tokens=st.lists(st.integers(0, 50), min_size=1, max_size=60),
    more=st.lists(st.integers(0, 50), min_size=1, max_size=30),
    unit=st.integers(1, 120),
)
def test_units_do_not_move_when_a_partition_grows(
    tokens: list[int], more: list[int], unit: int
) -> None:
    """All units but the last are final: appending documents re-cuts only the tail."""
    before, after = cut_units(tokens, unit), cut_units(tokens + more, unit)
    assert after[: len(before) - 1] == before[:-1]
    assert after[len(before) - 1][0] == before[-1][0]


@FEW
@given(tokens=st.lists(st.integers(0, 50), min_size=1, max_size=200), unit=st.integers(1, 120))
def test_unit_count_matches_the_token_budget(tokens: list[int], unit: int) -> None:
    """Every member trains on ``unit`` tokens, so units never outnumber the data."""
    n, total = len(cut_units(tokens, unit)), sum(tokens)
    assert n == 1 or n <= total / unit + 0.5


# ---------------------------------------------------------------- the merge

shapes = st.tuples(st.integers(1, 8), st.integers(1, 257))


def _stack(seed: int, n: int, p: int) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _weights(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed + 1))


@FEW
@given(shapes, st.integers(0, 2**16), st.floats(-4, 4), st.floats(-4, 4))
def test_merge_is_linear_in_the_weights(
    shape: tuple[int, int], seed: int, a: float, b: float
) -> None:
    n, p = shape
    stack, u, v = _stack(seed, n, p), _weights(seed, n), _weights(seed + 7, n)
    combined = kernels.weighted_average(stack, a * u + b * v)
    separate = a * kernels.weighted_average(stack, u) + b * kernels.weighted_average(stack, v)
    torch.testing.assert_close(combined, separate, atol=1e-4, rtol=1e-4)


@FEW
@given(shapes, st.integers(0, 2**16), st.randoms(use_true_random=False))
def test_merge_ignores_member_order(shape: tuple[int, int], seed: int, rnd) -> None:
    n, p = shape
    stack, w = _stack(seed, n, p), _weights(seed, n)
    perm = list(range(n))
    rnd.shuffle(perm)
    torch.testing.assert_close(
        kernels.weighted_average(stack[perm], w[perm]),
        kernels.weighted_average(stack, w),
        atol=1e-5,
        rtol=1e-5,
    )


@FEW
@given(shapes, st.integers(0, 2**16), st.data())
def test_uniform_subset_is_the_mean(shape: tuple[int, int], seed: int, data) -> None:
    n, p = shape
    stack = _stack(seed, n, p)
    subset = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    assume(subset)
    w = torch.zeros(n)
    w[subset] = 1.0 / len(subset)
    want = stack[subset].double().mean(0)
    torch.testing.assert_close(
        kernels.weighted_average(stack, w).double(), want, atol=1e-5, rtol=1e-5
    )
