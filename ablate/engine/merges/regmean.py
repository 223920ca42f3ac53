"""RegMean merging (Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of
Language Models").

A linear layer's merge is the weight that best reproduces each member's outputs on that
member's own inputs, weighted by the mixture: ``(sum_i w_i G_i)^-1 sum_i w_i G_i W_i^T``,
``G_i`` the Gram of member i's inputs to the layer (``ablate pool gram``,
``ablate.pool.gram``). An input direction that only some partitions' data excites is set by
those members, where the plain average lets every member pull it equally. The input
embedding's Gram is the diagonal of token counts (its inputs are one-hot), so each token's
row is the count-weighted average of the members that saw it; everything else (norms) is
the weighted average. Works for full-weight and LoRA pools (for LoRA, the adapted layers;
the rest is the seed).

The off-diagonal of every ``G_i`` is scaled by ``SHRINK`` before solving, as the paper does
(its ``alpha``), which keeps the solve well conditioned where a few members' inputs are
nearly collinear. On the fidelity suite 0.9 and 1.0 gave the same picks in every cell
(docs/accuracy.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ablate.engine.merges.base import Mergeable, register

if TYPE_CHECKING:
    import torch

SHRINK = 0.9  # scale of the Grams' off-diagonal (the paper's alpha)


@register("regmean")
class RegMean:
    """``(sum_i w_i G_i)^-1 sum_i w_i G_i W_i^T`` per linear layer; a one-member mixture is
    that member exactly."""

    statistic = "gram"

    def apply(self, model: Mergeable, weights: torch.Tensor) -> None:
        model.regression_merge_(weights, SHRINK)
