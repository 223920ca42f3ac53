"""Gradient: mirror descent on the simplex with exact gradients of the merged model's loss.

The merge is linear in the mixture weights, theta(w) = sum_i w_i theta_i, so one backward
pass through the merged model gives every weight's derivative at once:
d L / d w_i = <grad_theta L, theta_i> (the chain rule through the merge), i.e. the
``[N, P]`` member stack times the flat parameter gradient. The target is a weighted mean
of domain perplexities, so d ppl_d = ppl_d / tokens_d * d nll_d. Steps are exponentiated
gradient (Kivinen & Warmuth, 1997; mirror descent with the entropy on the simplex, Beck &
Teboulle, 2003): w <- w * exp(-eta * g) / Z, with g centred and scaled to unit max-norm,
eta grown after an improvement and halved (from the best point) after a worsening. Full
pools only: a LoRA pool's merge is not a weighted sum of stacked parameter vectors here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ablate.engine.scoring import target_nll
from ablate.mixture import Mixture
from ablate.pool.errors import AblateError
from ablate.strategies.base import SearchContext, Trial, register

if TYPE_CHECKING:
    from ablate.evaluator import EvalResult, Evaluator
    from ablate.objective import Target

_ETA0 = 1.0  # first step: the most-favoured partition's weight moves by a factor e
_ETA_GROW = 1.5  # after an improvement
_ETA_MAX = 8.0
_ETA_MIN = 1e-2  # stop when steps this small stop improving
_MIN_CHANGE = 1e-4  # stop when no weight moves by more than this
_DROP = 1e-6  # weights below this are left out of a proposal (they change nothing measurable)
_REENTER = 1e-8  # floor inside the iterate so a dropped partition can come back


def mixture_gradient(
    ev: Evaluator,
    mixture: Mixture,
    target: Target,
    result: EvalResult | None = None,
    partitions: Sequence[str] | None = None,
) -> dict[str, float]:
    """d target / d w_p for each partition p (default: all of ``ev``'s pool), at ``mixture``.

    One forward and one backward pass over the eval windows. ``result`` (the mixture's
    scores, from the store or a fresh evaluation) supplies the perplexities of the chain
    rule; it is computed when not given.

    Returns:
        ``{partition: derivative}`` of the target's weighted mean perplexity.
    """
    import torch

    if ev.pool.method.merges_by_factors:
        raise AblateError(
            "the gradient strategy needs a full-weight pool; this pool is LoRA - use tpe, gp or regression"
        )
    if not ev.layout.method.linear:
        raise AblateError(
            f"the gradient strategy differentiates the plain average, not the {ev.layout.merge} "
            "merge: pass --merge average (merge='average'), or use tpe, gp or regression"
        )
    result = result if result is not None else ev.evaluate(mixture)
    merged = ev.merged
    merged.load(mixture)
    model = merged.model
    coef = target.coefficients(target.domains(ev.domains))
    # d (sum_d c_d exp(nll_d / T_d)) = sum_d c_d ppl_d / T_d * d nll_d, one factor per token.
    per_domain = torch.tensor(
        [coef.get(d, 0.0) * result.scores[d].ppl / result.scores[d].tokens for d in ev.domains],
        dtype=torch.float32,
        device=ev.device,
    )
    params = list(model.parameters())
    grads = [torch.zeros_like(p) for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            for b in ev.scorer().batches:
                loss = (target_nll(model, b) * per_domain[b.domain]).sum()
                for acc, g in zip(
                    grads, torch.autograd.grad(loss, params, allow_unused=True), strict=True
                ):
                    if g is not None:
                        acc.add_(g)
    finally:
        for p in params:
            p.requires_grad_(False)
    grad_flat = merged.flatten(grads)  # (P,) in the member stack's column layout
    wanted = set(ev.partitions if partitions is None else partitions)
    rows: dict[str, list[int]] = {}
    for i, m in enumerate(ev.members):
        if m.partition in wanted:
            rows.setdefault(m.partition, []).append(i)
    # d L / d member weight = <grad_theta L, theta_i>; a partition's weight is spread evenly
    # over its units' members, so its derivative is their mean.
    return {p: sum(_dot_member(merged, i, grad_flat) for i in r) / len(r) for p, r in rows.items()}


def _dot_member(merged, row: int, vec) -> float:
    """``<member_row, vec>`` in fp32, for in-memory and streamed (chunked) stacks alike."""
    import torch

    theta = merged.member_row(row)  # (P,): a view of the stack when in memory; checks the member
    if theta.dtype == torch.float32:
        return float(torch.dot(theta, vec))
    chunk = 1 << 20  # upcast 4 MiB at a time
    return float(
        sum(
            torch.dot(theta[a : a + chunk].float(), vec[a : a + chunk])
            for a in range(0, theta.numel(), chunk)
        )
    )


@register("gradient", spaces=("weights",))
class Gradient:
    """Exponentiated-gradient descent on the simplex from one backward pass per step."""

    def __init__(self, ctx: SearchContext):
        ev = ctx.evaluator
        if ev.pool.method.merges_by_factors:
            raise AblateError(
                "the gradient strategy needs a full-weight pool; this pool is LoRA - use tpe, gp or regression"
            )
        self._ev, self._space, self._target = ev, ctx.space, ctx.target
        self._names = ctx.space.allowed
        self._w = ctx.space.vector(
            ctx.space.project(dict.fromkeys(self._names, 1.0))
        )  # (n,) iterate
        self._eta = _ETA0
        self._best: tuple[float, np.ndarray, np.ndarray] | None = None  # (score, w, gradient)
        self._done = False
        self.steps: list[tuple[float, float]] = []  # (eta, score) per observation

    def _proposal(self) -> Mixture:
        w = {
            p: v
            for p, v in zip(self._names, self._w, strict=True)
            if v >= _DROP or p in self._space.require
        }
        return self._space.project(w)

    def propose(self, n: int) -> list[Mixture]:
        return [] if self._done else [self._proposal()]

    def observe(self, trials: Sequence[Trial]) -> None:
        if not trials:
            return
        t = trials[-1]
        self.steps.append((self._eta, t.score))
        if self._best is None or t.score < self._best[0]:
            g = mixture_gradient(self._ev, t.mixture, self._target, t.result, self._names)
            grad = np.array([g[p] for p in self._names])
            if self._best is not None:
                self._eta = min(self._eta * _ETA_GROW, _ETA_MAX)
            self._best = (t.score, self._w.copy(), grad)
        else:
            self._eta *= 0.5
            if self._eta < _ETA_MIN:
                self._done = True
                return
        _, w, grad = self._best
        gc = grad - grad.mean()  # the update is shift-invariant; centring makes the scale fair
        scale = np.abs(gc).max()
        if not math.isfinite(scale) or scale == 0:
            self._done = True
            return
        new = np.maximum(w, _REENTER) * np.exp(-self._eta * gc / scale)
        new /= new.sum()
        new = self._space.vector(self._space.project(dict(zip(self._names, new, strict=True))))
        if np.abs(new - w).max() < _MIN_CHANGE:
            self._done = True
            return
        self._w = new
