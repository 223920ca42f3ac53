"""The race's design: sampling units, schedule, where the error budget is spent, the shuffle.

Decided before any unit is scored, so that the tests' levels do not depend on the data.

* **Units.** The units are what is shuffled and sampled: ``ablate.racing.policy`` races on the
  eval set's token windows (each window is scored on its own, so a window's NLL is the same
  whichever windows it is batched with), 40-60 per demo domain instead of 8-9 documents,
  and of nearly equal length (a document's length no longer weights one draw).
* **Schedule.** Stage 0 holds ``FIRST_UNITS`` units per stratum, then each stage doubles
  the units per stratum (``GROWTH``) until a stage would add more than ``late_step`` units
  (``max(FIRST_UNITS, N / LATE_LOOKS)`` for the largest stratum's ``N`` units); from there
  each stage adds ``late_step``, and the last takes the rest (``engine.RaceOrder``). Near-best
  candidates are decided in the second half of a stratum, where doubling jumps from 50% to
  100% and a candidate that could be dropped at 60% is scored nearly in full; more looks
  cost a smaller level per look (Bonferroni), which the finer steps more than repay
  (``benchmarks/bench_racing.py``: demo replay, macro 2.5x -> 2.8x; one domain on 40-60
  windows 7.1x -> 10.1x; error rates unchanged within Monte Carlo error). Strata of 9
  documents keep the doubling schedule (the step never drops below ``FIRST_UNITS``): there,
  looks close to the end are where the CLT bound fails (``bounds.UNSEEN``).
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

import math
import secrets

from ablate.pool.errors import AblateError

DEFAULT_CONFIDENCE = 0.95
FIRST_UNITS = 4  # units per stratum in stage 0: the pilot that chooses the first incumbent
GROWTH = 2  # each stage doubles the units per stratum (a geometric race schedule)
LATE_LOOKS = 16  # past the doubling, a stage adds 1/LATE_LOOKS of the largest stratum
# Control variates pay when a batch has this many new candidates per partition that must be
# scored in full first (the demo's 63 subsets of 6 partitions: 10.5; macro replay 2.4x ->
# 2.9x, docs/racing.md)
CONTROL_RATIO = 4
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


def late_step(most: int, first: int = FIRST_UNITS) -> int:
    """Units per stratum a stage adds once doubling would add more (``most``: units in the
    largest raced stratum)."""
    return max(first, math.ceil(most / LATE_LOOKS))


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
    "CONTROL_RATIO",
    "DEFAULT_CONFIDENCE",
    "FIRST_UNITS",
    "GROWTH",
    "LATE_LOOKS",
    "RACE_SEED",
    "check_confidence",
    "check_margin",
    "fresh_seed",
    "late_step",
    "look_level",
]
