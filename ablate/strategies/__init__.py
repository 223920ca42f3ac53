"""Mixture-search strategies: find the data mixture that minimises a target perplexity.

``search(ev, target=..., strategy=...)`` runs one registered strategy against an
``Evaluator``; every score goes through the results store. Strategies are plug-ins (one
module each, registered with ``@register``): to add one, write ``ablate/strategies/NAME.py``
and add NAME to the import line below.
"""

from ablate.strategies import exhaustive, gp, gradient, greedy, random, regression, tpe  # noqa: F401  (registers)
from ablate.strategies.base import STRATEGIES, SearchContext, Strategy, Trial, register
from ablate.strategies.driver import search
from ablate.strategies.gradient import mixture_gradient
from ablate.strategies.space import SearchSpace, Target
from ablate.strategies.study import Best, Study

__all__ = [
    "STRATEGIES",
    "Best",
    "SearchContext",
    "SearchSpace",
    "Strategy",
    "Study",
    "Target",
    "Trial",
    "mixture_gradient",
    "register",
    "search",
]
