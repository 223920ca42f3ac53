"""The weighted average of members' parameters (Na et al., EMNLP 2024; model soups, Wortsman
et al., ICML 2022): ``theta = sum_i w_i theta_i``, one ``kernels.weighted_average`` call."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ablate.engine.merges.base import Mergeable, register

if TYPE_CHECKING:
    import torch


@register("average")
class Average:
    """``sum_i w_i theta_i`` (LoRA pools: ``W0 + scaling * sum_i w_i B_i A_i``)."""

    linear = True

    def apply(self, model: Mergeable, weights: torch.Tensor) -> None:
        model.weighted_sum_(weights)
