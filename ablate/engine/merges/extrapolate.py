"""Extrapolated merges: the average moved lambda times as far from the seed.

``theta_0 + lambda * sum_i w_i (theta_i - theta_0)`` (task arithmetic's scaling, Ilharco et
al., ICLR 2023), a budget-aware proxy that ``ablate validate --extrapolate`` measures. ``norm``
picks lambda per mixture so that the merged update is as long as the members' updates are on
average: ``sum_i w_i |d_i| / |sum_i w_i d_i|`` with ``d_i = theta_i - theta_0`` (members that
moved in different directions partly cancel, while a model really trained on the mixture
moves the full distance of its training run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ablate.engine.merges.base import Mergeable, register

if TYPE_CHECKING:
    import torch


@register("extrapolate")
@dataclass(frozen=True)
class Extrapolate:
    """``theta_0 + lam * sum_i w_i (theta_i - theta_0)`` for weights summing to one."""

    lam: float = 1.0

    def apply(self, model: Mergeable, weights: torch.Tensor) -> None:
        model.weighted_sum_(weights * self.lam)
        if not model.merges_deltas:  # LoRA deltas are relative to the seed already
            model.add_seed_(1.0 - self.lam)


def norm_lambda(model: Mergeable, weights: torch.Tensor) -> float:
    """``sum_i w_i |d_i| / |sum_i w_i d_i|`` from the members' update Gram matrix; 1 for
    one member (nothing cancels)."""
    g = model.update_gram()
    w = weights.double().cpu().numpy()
    merged = float(np.sqrt(max(w @ g @ w, 0.0)))
    return float(w @ np.sqrt(np.clip(np.diag(g), 0.0, None))) / merged if merged > 0 else 1.0


@register("norm")
class NormExtrapolate:
    """``Extrapolate`` with lambda = ``norm_lambda`` of each mixture (full-weight pools)."""

    def apply(self, model: Mergeable, weights: torch.Tensor) -> None:
        Extrapolate(norm_lambda(model, weights)).apply(model, weights)
