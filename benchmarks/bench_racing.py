"""Racing's promise, checked by simulation: how often does a race break it?

Drives the shipped racer (``ablate.racing.engine.Racer`` through its array seam: per-unit
losses in, outcomes out, no models) over many races per setting and counts the failures the
product promises against, with Clopper-Pearson 95% Monte Carlo intervals:

* ``top 1``: the returned mixture is more than ``EPS`` (relative) worse than the best on the
  full eval set (``--margin EPS``; ``EPS = 0``: the best itself was dropped);
* ``top K``: one of the true K best was dropped while fewer than K kept mixtures are within
  ``EPS`` of it (with ``EPS = 0``: the K kept are not the K best).

Per-unit losses are synthetic: units with heavy-tailed (log-normal) or equal lengths, strata
of 9-60 units, per-unit noise with Student-t(3) tails, candidates within 1-3% of the best
(near-ties), macro-like crowds (20 within 3%), and a best mixture that is 1% worse on
almost every unit but much better on one unit per stratum (a document that one pool member
has seen). ``--replay FILE.npz`` adds real per-unit losses (``values (M, U)``, ``tokens``,
``strata``), shuffled afresh for each race.

The racer is whatever ``ablate`` imports: run it once on this tree and once with
``PYTHONPATH`` at a checkout of an older racer to compare (docs/racing.md has both).

    python benchmarks/bench_racing.py --races 1000 --out racing.json
    python benchmarks/bench_racing.py --races 200 --settings docs-9-lognormal --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.racing.engine import RaceOrder, Racer


@dataclass(frozen=True)
class Setting:
    """One simulated design: ``units`` per stratum drawn in ``[lo, hi]``; ``scenario``:
    ``near_ties`` (10 within 1-3%), ``crowd`` (20 within 3%, macro-like), ``one_unit`` (the
    best is 1% worse on almost every unit, much better on one per stratum)."""

    name: str
    candidates: int
    strata: int
    units: tuple[int, int]
    lengths: str  # "equal" | "lognormal"
    scenario: str
    top: int = 1
    margin: float = 0.0
    target: str = "macro"  # "macro" (equal weights) | "one" (stratum 0 alone: a domain)


SETTINGS = [
    Setting("docs-9-equal", 63, 6, (9, 9), "equal", "near_ties"),
    Setting("docs-9-lognormal", 63, 6, (9, 9), "lognormal", "near_ties"),
    Setting("docs-9-one-unit", 63, 6, (9, 9), "lognormal", "one_unit"),
    Setting("windows-40-60", 63, 6, (40, 60), "equal", "near_ties"),
    Setting("windows-one-unit", 63, 6, (40, 60), "equal", "one_unit"),
    Setting("domain-windows", 63, 6, (40, 60), "equal", "near_ties", target="one"),
    Setting("domain-windows-one-unit", 63, 6, (40, 60), "equal", "one_unit", target="one"),
    Setting("domain-docs-9", 63, 6, (9, 9), "lognormal", "one_unit", target="one"),
    Setting("crowd-margin", 63, 6, (40, 60), "equal", "crowd", margin=0.005),
    Setting("c255-8x9-60", 255, 8, (9, 60), "lognormal", "near_ties"),
    Setting("c255-crowd-margin", 255, 8, (9, 60), "lognormal", "crowd", margin=0.005),
    Setting("top5-windows", 63, 6, (40, 60), "equal", "near_ties", top=5),
    Setting("top5-docs-9", 63, 6, (9, 9), "lognormal", "near_ties", top=5),
]
PER_UNIT_TOKENS = 512  # a full window (the demo pool's context)


def draw(s: Setting, rng: np.random.Generator):
    """One eval set and its candidates: ``values (M, U)`` summed NLL per unit, ``tokens
    (U,)``, ``strata (U,)``."""
    sizes = rng.integers(s.units[0], s.units[1] + 1, s.strata)
    strata = np.repeat(np.arange(s.strata), sizes)  # (U,)
    u = len(strata)
    if s.lengths == "equal":
        tokens = np.full(u, PER_UNIT_TOKENS)
    else:  # log-normal, sigma 1: a few documents carry much of a domain's tokens
        tokens = np.clip(np.exp(rng.normal(math.log(300), 1.0, u)), 16, 20_000).astype(int)
    level = rng.normal(3.0, 0.3, s.strata)[strata] * np.exp(rng.normal(0, 0.15, u))  # (U,)
    m = s.candidates
    g = np.empty(m)  # each candidate's relative offset from the best
    g[0] = 0.0
    if s.scenario == "crowd":
        g[1:20] = rng.uniform(0.0, 0.03, 19)
        g[20:] = rng.uniform(0.03, 0.3, m - 20)
    else:
        g[1:11] = rng.uniform(0.01, 0.03, 10)
        g[11:] = rng.uniform(0.03, 0.3, m - 11)
    g_d = g[:, None] + rng.normal(0, 0.003, (m, s.strata))  # domains differ a little
    noise = 0.01 * rng.standard_t(3, (m, u)) * np.sqrt(PER_UNIT_TOKENS / tokens)
    rel = g_d[:, strata] + np.clip(noise, -0.5, 0.5)  # (M, U)
    if s.scenario == "one_unit":  # a new best: worse by 1% on most units, better on a few
        weight = tokens * level
        rel_b = np.full(u, 0.01) + np.clip(noise[0], -0.5, 0.5) * 0.2
        for d in range(s.strata):
            idx = np.flatnonzero(strata == d)
            special = rng.choice(idx, max(1, len(idx) // 9), replace=False)
            rest = np.setdiff1d(idx, special)
            # 1% better than candidate 0's level over the stratum, all of it on `special`
            need = -0.01 * weight[idx].sum() - (rel_b[rest] * weight[rest]).sum()
            rel_b[special] = max(-0.6, need / weight[special].sum())
        rel = np.vstack([rel_b, rel])[:m]
    values = tokens * level * (1 + rel)
    return values, tokens, strata


def targets(values, tokens, strata, weights) -> np.ndarray:
    """Each candidate's exact target on the full eval set, ``(M,)``."""
    n = len(weights)
    mu = np.stack([np.bincount(strata, v, n) for v in values]) / np.bincount(strata, tokens, n)
    return np.exp(mu) @ weights


def failed(true: np.ndarray, kept: np.ndarray, top: int, eps: float) -> bool:
    """One of the true ``top`` best dropped while fewer than ``top`` kept mixtures are
    within ``eps`` of it (``top`` 1: the returned mixture is more than ``eps`` worse)."""
    best = np.argsort(true, kind="stable")[:top]
    kept_t = true[kept]
    return any(
        not kept[j] and (kept_t <= (1 + eps) * true[j] + 1e-12).sum() < top for j in best
    )


def race_once(values, tokens, strata, *, confidence, top, margin, seed, target, first=None):
    """Race every candidate through the shipped ``Racer``; ``(kept, tokens_scored)``."""
    first_kw = {} if first is None else {"first": first}  # default: the shipped schedule
    n_strata = int(strata.max()) + 1
    weights = np.full(n_strata, 1 / n_strata)  # macro
    if target == "one":
        weights = (np.arange(n_strata) == 0).astype(float)
    raced = np.flatnonzero(weights > 0).tolist()
    order = RaceOrder.build(strata, raced, seed=seed, **first_kw)
    kw = {"margin": margin} if margin else {}  # a racer without --margin cannot take it
    racer = Racer(order, tokens, strata, weights, confidence=confidence, top=top, **kw)

    def score(keys, units):
        return values[np.asarray(keys, dtype=np.int64)][:, units]

    out = racer.run(list(range(len(values))), score)
    kept = np.array([out[k].full for k in range(len(values))])
    return kept, racer.tokens_scored, weights


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def run_setting(
    s: Setting, races: int, confidence: float, seed: int, replay=None, first=None
) -> dict:
    rng = np.random.default_rng(seed)
    fails, savings = 0, []
    for _ in range(races):
        if replay is None:
            values, tokens, strata = draw(s, rng)
        else:
            values, tokens, strata = replay
        kept, scored, weights = race_once(
            values,
            tokens,
            strata,
            confidence=confidence,
            top=s.top,
            margin=s.margin,
            seed=int(rng.integers(2**62)),
            target=s.target,
            first=first,
        )
        true = targets(values, tokens, strata, weights)
        fails += failed(true, kept, s.top, s.margin)
        savings.append(len(values) * tokens.sum() / scored)  # as RaceStats.saving counts
    lo, hi = clopper_pearson(fails, races)
    return {
        **dataclasses.asdict(s),
        "races": races,
        "nominal": round(1 - confidence, 6),
        "failures": fails,
        "rate": fails / races,
        "ci95": [lo, hi],
        "saving_mean": float(np.mean(savings)),
        "above_nominal": lo > 1 - confidence,
    }


def load_replay(path: Path):
    z = np.load(path)
    return z["values"].astype(np.float64), z["tokens"].astype(np.int64), z["strata"]


def table(rows: list[dict], label: str) -> str:
    lines = [
        f"| setting ({label}) | cand | strata x units | K | eps | nominal | failures / races "
        "| rate [95% CI] | tokens saved |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ci95"]
        flag = " **over**" if r["above_nominal"] else ""
        lines.append(
            f"| {r['name']} | {r['candidates']} | {r['strata']} x {r['units'][0]}-{r['units'][1]} "
            f"| {r['top']} | {r['margin']} | {r['nominal']:.3f} | {r['failures']} / {r['races']} "
            f"| {r['rate']:.3f} [{lo:.3f}, {hi:.3f}]{flag} | {r['saving_mean']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--races", type=int, default=1000, help="races per setting")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--settings", nargs="*", help="names to run (default: all)")
    p.add_argument("--margin", type=float, help="override every setting's EPS")
    p.add_argument("--replay", type=Path, help="npz of real per-unit losses")
    p.add_argument("--label", default="this tree", help="names the racer in the table")
    p.add_argument("--seed", type=int, default=27)
    p.add_argument("--first", type=int, help="units per stratum in stage 0 (default: shipped)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    a = p.parse_args(argv)
    chosen = [s for s in SETTINGS if not a.settings or s.name in a.settings]
    if a.margin is not None:
        chosen = [dataclasses.replace(s, margin=a.margin) for s in chosen]
    jobs = [(s, None) for s in chosen]
    if a.replay:
        rep = load_replay(a.replay)
        n_strata = int(rep[2].max()) + 1
        sizes = np.bincount(rep[2])
        rs = Setting(
            f"replay:{a.replay.stem}",
            len(rep[0]),
            n_strata,
            (int(sizes.min()), int(sizes.max())),
            "real",
            "replay",
            margin=a.margin or 0.0,
        )
        jobs.append((rs, rep))
    rows = []
    for s, rep in jobs:
        t0 = time.perf_counter()
        rows.append(run_setting(s, a.races, a.confidence, a.seed, rep, a.first))
        print(f"{s.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(table(rows, a.label))
    if a.out:
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"label": a.label, "rows": rows}, indent=1, sort_keys=True))
        tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
