"""GP: Bayesian optimisation with a Gaussian-process surrogate, through Optuna.

Snoek et al. (NeurIPS 2012, "Practical Bayesian Optimization of Machine Learning
Algorithms"); Optuna's ``GPSampler``. After a few random start-up mixtures, a GP (Matern
5/2 kernel, categorical memberships handled as such) is fitted to the scored mixtures and
the next mixture maximises the log expected improvement. Perplexity is a deterministic
function of the mixture, so the GP is told there is no observation noise.
"""

from __future__ import annotations

from ablate.strategies._optuna import OptunaStrategy
from ablate.strategies.base import register


@register("gp")
class GP(OptunaStrategy):
    """Gaussian-process Bayesian optimisation (Optuna GPSampler, log expected improvement)."""

    name = "gp"
    penalise_infeasible = True  # GPSampler ignores pruned trials

    def make_sampler(self, *, seed: int, n_startup: int, shared: bool):
        import optuna

        return optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=n_startup, deterministic_objective=True
        )
