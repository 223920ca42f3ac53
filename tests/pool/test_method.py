"""Training methods: one object per method, found by name; nothing else tests the name."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import tiny_recipe, tiny_spec

from ablate.pool import METHODS, Method, Pool, PoolError, method_of

ROOT = Path(__file__).resolve().parents[2]

# name -> (weights_file, trains_in_place, merges_by_factors, running_sum_walks)
EXPECTED = {
    "full": ("model.safetensors", True, False, True),
    "lora": ("adapter.safetensors", False, True, False),
}


def test_every_recipe_method_is_registered():
    from typing import get_args

    from ablate.pool.recipe import Recipe

    names = get_args(Recipe.model_fields["method"].annotation)
    assert sorted(METHODS) == sorted(names) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_owns_its_file_and_flags(name):
    method = METHODS[name]
    assert isinstance(method, Method) and method.name == name
    flags = (
        method.weights_file,
        method.trains_in_place,
        method.merges_by_factors,
        method.running_sum_walks,
    )
    assert flags == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_of_a_name_a_recipe_and_a_pool(name):
    recipe = tiny_recipe(method=name)
    assert method_of(name) is method_of(recipe) is METHODS[name]
    assert Pool(Path("unused"), SimpleNamespace(recipe=recipe)).method is METHODS[name]


@pytest.mark.parametrize("bad", ["qlora", "", "FULL", None])
def test_unknown_method_is_a_clear_error(bad):
    with pytest.raises(PoolError, match=r"unknown training method .*known: full, lora"):
        method_of(bad)


@pytest.fixture(scope="module")
def seed_model():
    from ablate.pool.seed import build_tiny_model

    return build_tiny_model(tiny_spec(), vocab_size=300, context=32, seed=0)


def test_full_trains_the_model_itself_and_saves_every_parameter(seed_model):
    full = METHODS["full"]
    assert full.prepare(seed_model, tiny_recipe(), seed=1) is seed_model
    saved = full.trained_tensors(seed_model)
    assert set(saved) == {k for k, _ in seed_model.named_parameters()}
    assert full.full_state(saved, lambda: pytest.fail("loaded the seed"), tiny_recipe()) is saved


def test_lora_trains_a_seeded_copy_and_saves_only_the_adapter(seed_model):
    import torch

    lora, recipe = METHODS["lora"], tiny_recipe(method="lora")
    before = {k: v.clone() for k, v in seed_model.state_dict().items()}
    a, b = (lora.prepare(seed_model, recipe, seed=7) for _ in range(2))
    assert a is not seed_model
    saved_a, saved_b = lora.trained_tensors(a), lora.trained_tensors(b)
    assert saved_a and all("lora_A" in k or "lora_B" in k for k in saved_a)
    # The adapter's initialisation comes from the seed, not from what ran before.
    assert all(torch.equal(saved_a[k], saved_b[k]) for k in saved_a)
    assert all(torch.equal(v, before[k]) for k, v in seed_model.state_dict().items())
    # A fresh adapter (B = 0) merged into the seed gives the seed's parameters back.
    plain = lora.full_state(saved_a, lambda: _copy(seed_model), recipe)
    params = dict(seed_model.named_parameters())
    assert set(plain) == set(params)
    assert all(torch.equal(plain[k], params[k].detach()) for k in params)


def _copy(model):
    import copy

    return copy.deepcopy(model)


NAME_CHECK = re.compile(r"""method\s*[!=]=\s*["'](full|lora)["']""")


def _code_lines(path: Path) -> list[str]:
    """The file's lines, docstrings blanked (prose may say ``method == "lora"``)."""
    import ast

    lines = path.read_text(encoding="utf-8").splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for i in range(node.lineno - 1, node.end_lineno):
                lines[i] = ""
    return lines


def test_no_code_tests_a_method_by_name():
    """Behaviour that differs by method is asked of the ``Method`` object, not of its name."""
    hits = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for room in ("ablate", "pool", "kernels")
        for path in sorted((ROOT / room).rglob("*.py"))
        for i, line in enumerate(_code_lines(path), 1)
        if NAME_CHECK.search(line)
    ]
    assert not hits, "ask pool.method_of(...) instead of testing the name:\n" + "\n".join(hits)


def test_the_name_check_sees_code_but_not_prose(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""Used when ``method == \'lora\'``."""\nif recipe.method != "full":\n    pass\n')
    assert [bool(NAME_CHECK.search(line)) for line in _code_lines(f)] == [False, True, False]
