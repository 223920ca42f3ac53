"""The race's design: sampling units, schedule, where the error budget is spent, the shuffle.

Decided before any unit is scored, so that the tests' levels do not depend on the data.

* **Units.** The units are what is shuffled and sampled: ``ablate.racing.policy`` races on the
  eval set's token windows (each window is scored on its own, so a window's NLL is the same
  whichever windows it is batched with), 40-60 per demo domain instead of 8-9 documents,
  and of nearly equal length (a document's length no longer weights one draw).
* **Schedule.** Stage 0 holds ``FIRST_UNITS`` units per stratum, then each stage doubles
  the units per stratum (``GROWTH``), the last takes the rest (``engine.RaceOrder``).
* **Spending.** A test against an incumbent uses only units scored after the incumbent was
  chosen (``bounds``): the incumbent chosen after stage 0 can first be tested against before
  stage 2, so a race with ``S`` stages has ``S - 2`` looks with power (``S - 1`` when every
  incumbent it starts with came from the store, chosen without reading the race). The error
  budget ``1 - confidence`` is split equally over those looks only, and over the ``K`` best
  that ``--top K`` keeps (Bonferroni: family-wise).
* **Shuffle.** Each race draws a fresh seed (``fresh_seed``) and reports it, so that two
  searches do not share one unit order and a race can be replayed with ``--race-seed``.
"""

from __future__ import annotations

import secrets

from ablate.pool.errors import AblateError

DEFAULT_CONFIDENCE = 0.95
FIRST_UNITS = 4  # units per stratum in stage 0: the pilot that chooses the first incumbent
GROWTH = 2  # each stage doubles the units per stratum (a geometric race schedule)
RACE_SEED = 0  # the seed of a race built without one (tests; ``Race`` draws a fresh one)


def check_confidence(confidence: float) -> float:
    """``confidence`` if it is in [0.5, 1), else a one-line ``AblateError``."""
    if not (isinstance(confidence, int | float) and 0.5 <= confidence < 1):
        raise AblateError(f"--confidence must be at least 0.5 and below 1, got {confidence}")
    return float(confidence)


def check_margin(margin: float) -> float:
    """``margin`` if it is in [0, 0.5), else a one-line ``AblateError``."""
    if not (isinstance(margin, int | float) and 0 <= margin < 0.5):
        raise AblateError(
            f"--margin is a relative perplexity in [0, 0.5) (e.g. 0.005), got {margin}"
        )
    return float(margin)


def powered_looks(n_stages: int, store_seeded: bool) -> int:
    """Looks at which a test can run: before stages 2.. (1.. with store incumbents only)."""
    return max(1, n_stages - (1 if store_seeded else 2))


def look_level(confidence: float, n_stages: int, top: int, store_seeded: bool) -> float:
    """One-sided level of each test: ``1 - (1 - confidence) / (top * looks)``."""
    return 1 - (1 - confidence) / (top * powered_looks(n_stages, store_seeded))


def fresh_seed() -> int:
    """A new shuffle seed (63 bits, from the OS), reported so the race can be replayed."""
    return secrets.randbits(63)


__all__ = [
    "DEFAULT_CONFIDENCE",
    "FIRST_UNITS",
    "GROWTH",
    "RACE_SEED",
    "check_confidence",
    "check_margin",
    "fresh_seed",
    "look_level",
    "powered_looks",
]
