"""Check that the top-level ``kernels`` and ``pool`` packages are ablate's own.

Another PyPI package is also called ``kernels``; if it shadows ours, every later error
would be baffling, so ``import ablate`` fails early and names the culprit. The check reads
a marker line from the package's ``__init__.py`` instead of importing it (keeps
``import ablate`` fast: no torch).
"""

from __future__ import annotations

import importlib.util
from functools import cache

_MARKER = "ablate-room:"


@cache
def check_not_shadowed() -> None:
    for name in ("kernels", "pool"):
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        text = ""
        if origin and origin.endswith("__init__.py"):
            with open(origin, encoding="utf-8", errors="replace") as f:
                text = f.read(4096)
        if spec is None:
            raise ImportError(
                f"ablate's '{name}' package is not installed; reinstall ablate (pip install ablate)"
            )
        if f"{_MARKER} {name}" not in text:
            where = origin or "nowhere"
            raise ImportError(
                f"the '{name}' package found at {where} is not ablate's own (another package named "
                f"'{name}' shadows it); uninstall that package (pip uninstall {name}) and reinstall ablate"
            )
