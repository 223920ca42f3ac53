"""Each eval domain's proxy level: how much a pool's merged proxies are read lower than
scored, per token, where the pool (or ``--proxy-level``) says ``specialisation``.

``macro`` is the arithmetic mean of the domains' perplexities, so a domain whose level the
proxies overstate weighs more in their macro than in real training's, and tips the pick
toward mixtures that lower it. Against real runs the proxies overstate a domain the more,
the more one partition's member gains there over the seed: Pearson -0.71 to -0.99 between
each domain's offset ``mean log(real / proxy)`` and that gain on every full-weight cell of
the fidelity suite (docs/accuracy.md, "The proxy's level per domain"). So, with no real
run, each domain's log perplexity is lowered by ``SCALE * gain ** POWER`` (a domain where
no member beats the seed is raised by the same form). A constant per domain: it never
changes a ranking on one domain, only how domains add up (``macro``, weighted targets).

The stored scores stay as scored; ``ResultsCache`` applies the shift on reading, so a pool
can change its level without rescoring anything. The seed's and each partition's scores it
rests on are stored too, once per eval set (``Evaluator.level_shift``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ablate.engine.scores import DocScores, DomainScore

# Chosen on the development corpora and ``polyglot`` (the pooled slope of offset on gain
# there, with the power that straightened it) before the held-out ``shellman`` corpus was
# built; measured with ``benchmarks/probe_calibration.py --gain 0.127 --gain-power 1.5``.
SCALE = 0.127
POWER = 1.5


def specialisation_shift(
    seed: np.ndarray, partitions: np.ndarray, *, scale: float = SCALE, power: float = POWER
) -> np.ndarray:
    """Nats per token to lower each domain by, ``(D,)``, from the seed's log perplexity
    ``(D,)`` and each partition's ``(N, D)``: ``scale * sign(g) * |g| ** power`` with ``g``
    the seed's log perplexity minus the best partition's."""
    gain = np.asarray(seed, dtype=np.float64) - np.asarray(partitions, dtype=np.float64).min(0)
    return scale * np.sign(gain) * np.abs(gain) ** power


@dataclass(frozen=True)
class LevelShift:
    """Nats per token each eval domain's proxy NLL is read lower by (``nats[i]`` for
    ``domains[i]``), and the gains they come from."""

    domains: tuple[str, ...]
    nats: np.ndarray
    gain: np.ndarray

    def of(self, domain: str) -> float:
        return float(self.nats[self.domains.index(domain)])

    def scores(self, scores: Mapping[str, DomainScore]) -> dict[str, DomainScore]:
        """Per-domain totals as read: each domain's NLL lowered by its shift per token."""
        at = {d: i for i, d in enumerate(self.domains)}
        return {
            d: DomainScore(s.tokens, s.nll - float(self.nats[at[d]]) * s.tokens, s.bytes)
            for d, s in scores.items()
        }

    def documents(self, docs: DocScores, doc_domain: np.ndarray) -> DocScores:
        """Per-document sums as read (``doc_domain``: each document's domain index)."""
        return DocScores(docs.nll - self.nats[doc_domain] * docs.tokens, docs.tokens)

    def per_token(self, domain: np.ndarray) -> np.ndarray:
        """The shift per token of items whose domain indices are ``domain``."""
        return self.nats[np.asarray(domain)]

    def describe(self) -> str:
        """One line: how much lower each domain's perplexity is read."""
        lowered = ", ".join(
            f"{d} {100 * (1 - math.exp(-s)):+.1f}%"
            for d, s in zip(self.domains, self.nats, strict=True)
        )
        return f"proxy level specialisation: perplexity read lower by {lowered}"

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{domain: {"gain": ..., "shift": ...}}`` (``--json``)."""
        return {
            d: {"gain": float(self.gain[i]), "shift": float(self.nats[i])}
            for i, d in enumerate(self.domains)
        }


__all__ = ["POWER", "SCALE", "LevelShift", "specialisation_shift"]
