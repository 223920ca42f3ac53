"""The merge-method plug-in interface: a small protocol and a registry filled by a decorator.

A merge method turns weights over the pool's members into the merged model's parameters,
using only the primitives of ``Mergeable`` (which ``ablate.engine.merge.MergedModel``
implements): plug-ins never see the stack's layout or streaming. Adding one is one file under ``ablate/engine/merges/`` and one import line
in its ``__init__``; ``tests/ablate/engine/test_merge.py`` runs every registered method
through the shared contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, get_args, runtime_checkable

from ablate.pool.errors import AblateError
from ablate.pool.storage import POOL_MERGES, PoolMerge

if TYPE_CHECKING:
    import numpy as np
    import torch


class Mergeable(Protocol):
    """What a merge method may use of a merged model."""

    @property
    def merges_deltas(self) -> bool:
        """Whether a merge writes seed + weighted member deltas (LoRA), so scaling the
        weights already scales the distance from the seed."""
        ...

    def weighted_sum_(self, weights: torch.Tensor) -> None:
        """``sum_i weights[i] * member_i`` into the skeleton."""
        ...

    def add_seed_(self, alpha: float) -> None:
        """``skeleton += alpha * theta_0`` (full-weight pools)."""
        ...

    def update_gram(self) -> np.ndarray:
        """``(N, N)`` float64 inner products of the members' updates from the seed."""
        ...

    def precision_weighted_sum_(self, weights: torch.Tensor, precision: Precision) -> None:
        """``sum_i w_i F_i theta_i / sum_i w_i F_i`` per parameter, ``F_i`` the members'
        diagonal ``precision`` (``PRECISIONS``; LoRA pools: the adapted weights)."""
        ...

    def regression_merge_(self, weights: torch.Tensor, shrink: float) -> None:
        """Each linear layer ``(sum_i w_i G_i)^-1 sum_i w_i G_i W_i^T`` from the members'
        input Grams ``G_i`` (their off-diagonal scaled by ``shrink``), input-embedding rows
        weighted by token counts, the rest the weighted average (full-weight and LoRA pools)."""
        ...


@runtime_checkable
class MergeMethod(Protocol):
    """How member weights become one model (constructed with its defaults, a method
    must give a one-member mixture exactly that member's weights)."""

    name: ClassVar[str]
    # The per-member statistic it reads (``"fisher"``: ``ablate pool fisher``; ``"gram"``:
    # ``ablate pool gram``; ``ablate.pool.statistics``), or None; ``register`` sets None where
    # a class does not say.
    statistic: ClassVar[str | None]
    # Whether it is the plain weighted sum ``sum_i w_i theta_i`` (linear in the weights): then
    # running sums walk uniform subsets and the gradient in ``w_i`` is ``<grad, theta_i>``;
    # ``register`` sets False where a class does not say.
    linear: ClassVar[bool]

    def apply(self, model: Mergeable, weights: torch.Tensor) -> None:
        """Write the merge of ``model``'s members under ``weights`` (fp32 ``(N,)``) into
        its skeleton."""
        ...


MERGES: dict[str, Callable[[], MergeMethod]] = {}

# ``PoolMerge``/``POOL_MERGES`` (``ablate.pool.storage``, where a pool records its default):
# the merges an evaluator can use for every mixture it scores.
# Diagonal precisions of ``Mergeable.precision_weighted_sum_``: each member's Fisher as
# stored, or scaled to mean 1 within each tensor (only where inside a tensor a member's
# curvature is high counts, not its overall gradient scale), or that plus 1 (damped: half of
# every weight is the plain average's).
Precision = Literal["fisher", "fisher_tensor", "fisher_damped"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# Those scaled to mean 1 within every tensor, and of them those that then add a constant
# (in units of that mean, so only per-tensor ones can): the share of each weight left to
# the plain average.
PER_TENSOR = frozenset({"fisher_tensor", "fisher_damped"})
DAMPING: dict[str, float] = {"fisher_damped": 1.0}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: add a merge method to ``MERGES`` under ``name``."""

    def deco(cls: type) -> type:
        if name in MERGES:
            raise ValueError(f"merge method {name!r} is registered twice")
        cls.name = name
        cls.statistic = getattr(cls, "statistic", None)
        cls.linear = getattr(cls, "linear", False)
        MERGES[name] = cls
        return cls

    return deco


def merge_method(spec: MergeMethod | str | float) -> MergeMethod:
    """A merge method from a registered name (``average``, ``norm``, ...) or a number, the
    extrapolation lambda of ``--extrapolate`` (1: the plain average)."""
    if isinstance(spec, MergeMethod):
        return spec
    if isinstance(spec, str):
        if spec not in MERGES:
            raise AblateError(f"unknown merge method {spec!r}; known: {', '.join(sorted(MERGES))}")
        return MERGES[spec]()
    lam = float(spec)
    if not (math.isfinite(lam) and lam > 0):
        raise AblateError(f"the extrapolation lambda must be a number > 0, got {spec!r}")
    if lam == 1.0:
        return MERGES["average"]()
    return MERGES["extrapolate"](lam)  # type: ignore[call-arg]


__all__ = [
    "DAMPING",
    "MERGES",
    "PER_TENSOR",
    "POOL_MERGES",
    "PRECISIONS",
    "MergeMethod",
    "Mergeable",
    "PoolMerge",
    "Precision",
    "merge_method",
    "register",
]
