"""The race's design: sampling units, schedule, where the error budget is spent, the shuffle.

Decided before any unit is scored, so that the tests' levels do not depend on the data.

* **Units.** The units are what is shuffled and sampled: ``ablate.racing.policy`` races on the
  eval set's token windows (each window is scored on its own, so a window's NLL is the same
  whichever windows it is batched with), 40-60 per demo domain instead of 8-9 documents,
  and of nearly equal length (a document's length no longer weights one draw).
* **Schedule.** Stage 0 holds ``FIRST_UNITS`` units per stratum, then each stage doubles
  the units per stratum (``GROWTH``), the last takes the rest (``engine.RaceOrder``).
* **Spending.** The error budget ``1 - confidence`` is split equally over the race's
  ``S - 1`` looks (Bonferroni over a number of looks fixed before the race) and over the
  ``K`` best that ``--top K`` keeps (family-wise). A test against an incumbent uses only
  units scored after the incumbent was chosen (``bounds``), so it has no selection bias.
  At the first look no such incumbent exists yet (unless the store seeded one): there the
  leader is tested against on the very units that chose it, and the look's share is split
  again over every mixture that could have become the incumbent (a union bound: whichever
  was chosen, the test of the best against it holds). That share buys little power against
  near-ties but drops the far-off majority after stage 0, where the old equal split was
  spent on a test that was not valid.
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


def look_level(confidence: float, n_stages: int, top: int, rivals: int = 1) -> float:
    """One-sided level of a test: ``1 - (1 - confidence) / (top * looks * rivals)``, with
    ``rivals`` the mixtures that could have been the incumbent (1: one chosen before the
    units the test samples)."""
    looks = max(1, n_stages - 1)
    return 1 - (1 - confidence) / (top * looks * max(1, rivals))


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
]
