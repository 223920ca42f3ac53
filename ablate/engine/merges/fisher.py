"""Fisher-weighted merging (Matena & Raffel, NeurIPS 2022, "Merging Models with
Fisher-Weighted Averaging").

Each member's loss is approximated near its weights by a quadratic with its diagonal
Fisher ``F_i`` as curvature; the mixture's loss ``sum_i w_i L_i`` is then smallest at
``theta = sum_i w_i F_i theta_i / sum_i w_i F_i`` per parameter. A parameter that a
partition's data barely constrains takes its value from the members whose data does,
where the plain average would let every member pull equally. Needs each member's Fisher
(``ablate pool fisher``, ``ablate.pool.fisher``). LoRA pools: the adapted weights, each
member's update ``s B_i A_i`` weighed by its Fisher at the member's effective weights; the
rest is the seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ablate.engine.merges.base import Mergeable, register

if TYPE_CHECKING:
    import torch


@register("fisher")
class Fisher:
    """``sum_i w_i F_i theta_i / sum_i w_i F_i`` (the plain average where all ``F_i`` are 0)."""

    statistic = "fisher"

    def apply(self, model: Mergeable, weights: torch.Tensor) -> None:
        model.precision_weighted_sum_(weights, "fisher")


@register("fisher_tensor")
class FisherPerTensor:
    """``Fisher`` with each member's Fisher scaled to mean 1 in every tensor: a member whose
    loss (so whose gradients) is larger overall does not outweigh the others everywhere."""

    statistic = "fisher"

    def apply(self, model: Mergeable, weights: torch.Tensor) -> None:
        model.precision_weighted_sum_(weights, "fisher_tensor")


@register("fisher_damped")
class FisherDamped:
    """``FisherPerTensor`` with 1 (each tensor's mean Fisher) added to every parameter's
    precision: half of every weight is the plain average's. A Fisher estimated from a few
    hundred sequences, and a diagonal that ignores how parameters interact, then decide only
    part of the merge; where one member's curvature dwarfs the others' it still dominates."""

    statistic = "fisher"

    def apply(self, model: Mergeable, weights: torch.Tensor) -> None:
        model.precision_weighted_sum_(weights, "fisher_damped")
