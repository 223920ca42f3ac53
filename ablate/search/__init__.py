"""Mixture search: find the data mixture that minimises a target perplexity.

``search(ev, target=..., strategy=...)`` runs one registered strategy against an
``Evaluator``; every score goes through the results store. Strategies are plug-ins (one
module each, registered with ``@register``): to add one, write ``ablate/search/NAME.py``
and add NAME to the import line below.
"""

from ablate.search import exhaustive, gp, gradient, greedy, random, regression, tpe  # noqa: F401  (registers)
from ablate.search.base import STRATEGIES, SearchContext, Strategy, Trial, register
from ablate.search.driver import search
from ablate.search.gradient import mixture_gradient
from ablate.search.space import SearchSpace, Target
from ablate.search.study import Best, Study

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
