"""TPE: the Tree-structured Parzen Estimator, through Optuna's ask/tell interface.

Bergstra et al. (NeurIPS 2011, "Algorithms for Hyper-Parameter Optimization"); Watanabe
(2023, "Tree-Structured Parzen Estimator: Understanding Its Algorithm Components"). After
a few random start-up mixtures, scored mixtures are split into a good quantile and the
rest; a Parzen density is fitted to each, and the next mixture maximises the density
ratio l(x)/g(x) among candidates drawn from l. Multivariate TPE models partition
memberships jointly. With ``--storage`` several workers share one study (constant liar:
running trials count as bad so workers spread out).
"""

from __future__ import annotations

from ablate.strategies._optuna import OptunaStrategy
from ablate.strategies.base import register


@register("tpe")
class TPE(OptunaStrategy):
    """Tree-structured Parzen Estimator (Optuna), shareable across workers via --storage."""

    name = "tpe"

    def make_sampler(self, *, seed: int, n_startup: int, shared: bool):
        import optuna

        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=n_startup, multivariate=True, constant_liar=shared
        )
