"""Mixture laws: fit a map from mixture weights to a score on any table of runs.

``MixtureLaw.fit`` reads a runs table (``table``), picks a surrogate from the family the
regression search strategy uses (``surrogate``) and proposes the best mixtures under caps
(``propose``); ``MixtureLaw.fit_from`` joins a pool's proxies and its really trained
models (``fidelity``).
"""

from ablate.laws.fidelity import Fidelity
from ablate.laws.law import MixtureLaw
from ablate.laws.propose import Constraints
from ablate.laws.table import Runs, RunsTableError, read_runs

__all__ = ["Constraints", "Fidelity", "MixtureLaw", "Runs", "RunsTableError", "read_runs"]
