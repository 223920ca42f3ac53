"""Mixture parsing, canonical form and validation."""

from __future__ import annotations

import pytest

from ablate import Mixture, MixtureError


def test_subset_is_uniform_and_sorted():
    m = Mixture.parse("wiki, code")
    assert m.weights == (("code", 0.5), ("wiki", 0.5))
    assert m.is_uniform and str(m) == "code+wiki"
    assert Mixture.uniform(["code", "wiki"]) == m


def test_weights_are_normalised_and_keys_canonical():
    a = Mixture.parse("b=3,a=1")
    assert a.as_dict() == {"a": 0.25, "b": 0.75}
    assert a.key == "a=0.25,b=0.75"
    assert Mixture.parse(a.key) == a == Mixture.of({"a": 2, "b": 6})
    assert not a.is_uniform


def test_zero_weights_drop_out():
    assert Mixture.parse("a=1,b=0").names == ("a",)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty mixture"),
        ("a,,b", "empty entry"),
        ("a,a", "named twice"),
        ("a=1,a=2", "given twice"),
        ("a=1,b", "has no weight"),
        ("a=x", "not a number"),
        ("a=inf", "must be finite"),
        ("a=-0.5,b=1", "negative"),
        ("a/b", "path separator"),
        ("..", "'..'"),
        ("a\x00b", "control character"),
        ("a=1e308,b=1e308", "too large"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(MixtureError, match=message):
        Mixture.parse(spec)


def test_huge_spec_is_refused_fast():
    with pytest.raises(MixtureError, match="characters long"):
        Mixture.parse(",".join(f"p{i}" for i in range(50_000)))


def test_check_names_unknown():
    with pytest.raises(MixtureError, match=r"unknown partition\(s\) 'zz'; the pool has: a, b"):
        Mixture.parse("a,zz").check(["a", "b"])
