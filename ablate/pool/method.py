"""Training methods: full fine-tuning and LoRA, one object each.

Whatever differs between a full and a LoRA pool is asked of the pool's ``Method`` instead
of testing ``recipe.method`` (the model is peft's ``PeftType -> tuner`` mapping: one object
per method, found by name in one registry). A method owns what it decides per architecture
(``fit_recipe``, e.g. LoRA's adapted layers), what it trains (``prepare``),
what a member saves (``trained_tensors`` into ``weights_file``), how saved tensors become
plain parameters again (``full_state``), and what the merge engine may assume of its
members (``merges_by_factors``, ``running_sum_walks``).

The name stays a plain string on disk (``recipe.method``, ``MemberRecord.method``), checked
by the recipe's ``Literal``; ``method_of`` turns it into the object.

LoRA: Hu et al., ICLR 2022, "LoRA: Low-Rank Adaptation of Large Language Models".
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ablate.pool.architectures import lora_targets
from ablate.pool.errors import PoolError
from ablate.pool.weights import wrap_lora

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ablate.pool.recipe import Recipe
    from ablate.pool.storage import PoolMerge, ProxyLevel, TrainedRecord


@runtime_checkable
class Method(Protocol):
    """How one training method trains, saves and merges a model."""

    @property
    def name(self) -> Literal["full", "lora"]:
        """The name in ``recipe.method`` and in every record."""
        ...

    @property
    def weights_file(self) -> str:
        """File name of a trained model's tensors inside its folder."""
        ...

    @property
    def trains_in_place(self) -> bool:
        """Whether ``prepare`` returns the seed model itself (training then changes it)."""
        ...

    @property
    def merges_by_factors(self) -> bool:
        """Whether members merge through their factors (the merge engine concatenates the
        LoRA factors of all members) rather than as stacked flat parameter vectors."""
        ...

    @property
    def running_sum_walks(self) -> bool:
        """Whether Gray-code running-sum subset walks apply (one member added or removed
        per step updates a running sum of flat parameters)."""
        ...

    def fit_recipe(self, recipe: Recipe, model: PreTrainedModel) -> Recipe:
        """``recipe`` with what this method decides per architecture resolved against the
        seed ``model`` and written out (LoRA: the adapted layers), as ``pool init`` records it.

        Raises:
            PoolError: The recipe does not fit the model; the message names the fix.
        """
        ...

    def prepare(self, model: PreTrainedModel, recipe: Recipe, seed: int) -> PreTrainedModel:
        """The model to train, starting from the seed ``model``."""
        ...

    def trained_tensors(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        """The tensors that define a trained model (CPU, contiguous), as saved to disk."""
        ...

    def full_state(
        self,
        saved: dict[str, torch.Tensor],
        load_seed: Callable[[], PreTrainedModel],
        recipe: Recipe,
    ) -> dict[str, torch.Tensor]:
        """Plain model parameters (``named_parameters`` names) from ``saved`` tensors.

        ``load_seed`` returns a fresh copy of the seed model, which may be consumed; it is
        called only when the saved tensors alone are not the full parameters.
        """
        ...

    def adapted_weights(self, saved: dict[str, torch.Tensor]) -> set[str] | None:
        """Names of the plain weights that ``saved`` changes, where a merge's statistics
        (Fisher, Grams) are needed only for those (None: every parameter, a full model)."""
        ...


@dataclass(frozen=True)
class _MethodFlags:
    """The plain values of a ``Method`` (documented there); ``FULL`` and ``LORA`` set them."""

    name: Literal["full", "lora"]
    weights_file: str
    trains_in_place: bool
    merges_by_factors: bool
    running_sum_walks: bool


@dataclass(frozen=True)
class FullMethod(_MethodFlags):
    """Full fine-tuning: every parameter trains; a member is a full set of weights."""

    def fit_recipe(self, recipe: Recipe, model: PreTrainedModel) -> Recipe:
        """Unchanged: every parameter trains, whatever the architecture; LoRA targets are
        refused (they would be recorded but mean nothing)."""
        if recipe.lora.target_modules:
            raise PoolError("LoRA targets (--lora-targets) apply only to --method lora")
        return recipe

    def prepare(self, model: PreTrainedModel, recipe: Recipe, seed: int) -> PreTrainedModel:
        """The seed model itself: it trains in place (callers keep a copy to restore)."""
        return model

    def trained_tensors(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        # named_parameters() lists a tied weight once, which safetensors requires.
        return {k: p.detach().cpu().contiguous() for k, p in model.named_parameters()}

    def full_state(
        self,
        saved: dict[str, torch.Tensor],
        load_seed: Callable[[], PreTrainedModel],
        recipe: Recipe,
    ) -> dict[str, torch.Tensor]:
        """The saved tensors already are the parameters; the seed is not loaded."""
        return saved

    def adapted_weights(self, saved: dict[str, torch.Tensor]) -> set[str] | None:
        return None


@dataclass(frozen=True)
class LoraMethod(_MethodFlags):
    """LoRA (peft): the seed stays frozen; a member is its adapter's A and B factors."""

    def fit_recipe(self, recipe: Recipe, model: PreTrainedModel) -> Recipe:
        """The adapted layers resolved to names (``ablate.pool.architectures.lora_targets``)."""
        targets = lora_targets(model, recipe.lora.target_modules)
        lora = recipe.lora.model_copy(update={"target_modules": targets})
        return recipe.model_copy(update={"lora": lora})

    def prepare(self, model: PreTrainedModel, recipe: Recipe, seed: int) -> PreTrainedModel:
        """A copy of ``model`` with a fresh adapter whose initialisation comes from ``seed``
        (not from run order); ``model`` is left unchanged."""
        import torch

        torch.manual_seed(seed)
        return wrap_lora(copy.deepcopy(model), recipe.lora)

    def trained_tensors(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {
            k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
        }

    def full_state(
        self,
        saved: dict[str, torch.Tensor],
        load_seed: Callable[[], PreTrainedModel],
        recipe: Recipe,
    ) -> dict[str, torch.Tensor]:
        """Seed weights plus the saved adapter, merged into plain parameters (peft)."""
        from peft import set_peft_model_state_dict

        model = wrap_lora(load_seed(), recipe.lora)
        set_peft_model_state_dict(model, saved)
        plain = model.merge_and_unload()
        return {k: p.detach() for k, p in plain.named_parameters()}

    def adapted_weights(self, saved: dict[str, torch.Tensor]) -> set[str] | None:
        """The adapted layers' weights, from the adapter's ``lora_A`` keys."""
        return {w for k in saved if (w := adapted_weight(k)) is not None}


def adapted_weight(key: str) -> str | None:
    """The seed model's weight that an adapter tensor ``key`` adapts, for its ``lora_A``
    factor (``base_model.model.X.lora_A.weight`` -> ``X.weight``); None for any other key."""
    suffix = ".lora_A.weight"
    if not key.endswith(suffix):
        return None
    return key[: -len(suffix)].removeprefix("base_model.model.") + ".weight"


# One row per method: name, weights_file, trains_in_place, merges_by_factors, running_sum_walks.
FULL = FullMethod("full", "model.safetensors", True, False, True)
LORA = LoraMethod("lora", "adapter.safetensors", False, True, False)

METHODS: dict[str, Method] = {m.name: m for m in (FULL, LORA)}


def method_of(name_or_recipe: str | Recipe | TrainedRecord) -> Method:
    """The ``Method`` named by a string, a recipe or a trained model's record."""
    name = getattr(name_or_recipe, "method", name_or_recipe)
    try:
        return METHODS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        raise PoolError(
            f"unknown training method {name!r}; known: {', '.join(sorted(METHODS))}"
        ) from None


def new_pool_recipe(seed_data: object = None, **fields: Any) -> Recipe:
    """A new pool's recipe from the fields given (``Recipe``'s).

    Where ``member_preconditioner`` is not given, members start from the seed's estimated
    AdamW second moments when the pool has seed data to estimate them on and members train
    the seed's own weights (``trains_in_place``: not a new adapter); on the fidelity suite
    7 of 8 cells ranked mixtures at least as well (docs/accuracy.md). ``Recipe()``'s own
    default stays ``fresh``, so pools written before it read back as they were trained.
    """
    from ablate.pool.recipe import Recipe

    if "member_preconditioner" not in fields:
        in_place = method_of(fields.get("method", "full")).trains_in_place
        fields["member_preconditioner"] = "seed" if seed_data is not None and in_place else "fresh"
    return Recipe(**fields)


def new_pool_merge(recipe: Recipe) -> PoolMerge:
    """A new pool's default merge for its recipe: ``fisher_damped`` (each member's diagonal
    Fisher, scaled to mean 1 per tensor, plus 1) where members start from the seed's second
    moments, ``fisher`` (each member's update of an adapted weight weighed by its Fisher
    there) for LoRA pools, else the plain average. Against four training seeds on the
    fidelity suite ``fisher_damped``'s picks were as good as ``fisher_tensor``'s (the default
    before it) everywhere and better in two cells (2.3% and 6.5% worse than the best -> 0%),
    and it met issue 25's bar on 7 of 8 cells against 5; on the suite's LoRA cells the plain
    Fisher met it on 7 of 8 against 5 for RegMean (their default before), ``fisher_damped``
    and ``fisher_tensor``, and 4 for the average (docs/accuracy.md). On fresh-optimizer
    full-weight members Fisher merges lost the pick on corpora they were not chosen on:
    those keep the average. A pool records its merge, so pools made before keep theirs
    (``PoolManifest``'s own default stays the average)."""
    if method_of(recipe).merges_by_factors:
        return "fisher"
    return "fisher_damped" if recipe.member_preconditioner == "seed" else "average"


def new_pool_proxy_level(recipe: Recipe) -> ProxyLevel:
    """A new pool's proxy level: ``specialisation`` where full-weight members start from the
    seed's second moments, else ``none``. On the twelve full-weight cells of the fidelity
    suite it met issue 25's bar on 11 of 12 against two training seeds (9 uncorrected) and
    12 of 12 against four (9), and on 59 of 72 pairs of seeds (46), the held-out ``shellman``
    corpus included; on LoRA pools the proxies' levels do not follow the gain and it changed
    nothing that mattered (48 of 60 pair cases against 49): those keep ``none``
    (docs/accuracy.md). A pool records its level, so pools made before keep ``none``."""
    if method_of(recipe).merges_by_factors or recipe.member_preconditioner != "seed":
        return "none"
    return "specialisation"
