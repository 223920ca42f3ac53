"""Optional dependencies: found with a cached ``find_spec`` (nothing imported), and one error
that names the extra to install when one is missing."""

from __future__ import annotations

import importlib.util
from functools import cache

from ablate.pool.errors import AblateError


@cache
def has_module(module: str) -> bool:
    """Whether ``module`` is importable (cached ``find_spec``; nothing is imported)."""
    return importlib.util.find_spec(module) is not None


def require_extra(module: str, purpose: str, extra: str = "search") -> None:
    """Raise an ``AblateError`` naming ``extra`` when ``module`` is missing."""
    if not has_module(module):
        raise AblateError(
            f"{purpose} needs {module}; install it with: pip install 'ablate-sim[{extra}]'"
        )
