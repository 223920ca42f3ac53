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
import sys
import time
from pathlib import Path

import numpy as np

from ablate.racing.simulate import Setting, simulate

SETTINGS = [
    Setting("docs-9-equal", 63, 6, (9, 9), "equal", "near_ties"),
    Setting("docs-9-lognormal", 63, 6, (9, 9), "lognormal", "near_ties"),
    Setting("docs-9-one-unit", 63, 6, (9, 9), "lognormal", "one_unit"),
    Setting("windows-40-60", 63, 6, (40, 60), "equal", "near_ties"),
    Setting("windows-one-unit", 63, 6, (40, 60), "equal", "one_unit"),
    Setting("domain-windows", 63, 6, (40, 60), "equal", "near_ties", target="one"),
    Setting("domain-windows-one-unit", 63, 6, (40, 60), "equal", "one_unit", target="one"),
    Setting("domain-docs-9", 63, 6, (9, 9), "lognormal", "one_unit", target="one"),
    Setting("docs-9-one-stratum", 63, 6, (9, 9), "lognormal", "one_stratum", margin=0.005),
    Setting("windows-one-stratum", 63, 6, (40, 60), "equal", "one_stratum", margin=0.005),
    Setting("crowd-margin", 63, 6, (40, 60), "equal", "crowd", margin=0.005),
    Setting("c255-8x9-60", 255, 8, (9, 60), "lognormal", "near_ties"),
    Setting("c255-crowd-margin", 255, 8, (9, 60), "lognormal", "crowd", margin=0.005),
    Setting("top5-windows", 63, 6, (40, 60), "equal", "near_ties", top=5),
    Setting("top5-docs-9", 63, 6, (9, 9), "lognormal", "near_ties", top=5),
    Setting("subsets", 63, 6, (40, 60), "equal", "subsets", margin=0.005),
    Setting("subsets-control", 63, 6, (40, 60), "equal", "subsets", margin=0.005, control=True),
    Setting("subsets-one-unit", 63, 6, (40, 60), "equal", "subsets_one_unit", margin=0.005),
    Setting(
        "subsets-one-unit-control",
        63,
        6,
        (40, 60),
        "equal",
        "subsets_one_unit",
        margin=0.005,
        control=True,
    ),
    Setting(
        "subsets-one-stratum-control",
        63,
        6,
        (40, 60),
        "equal",
        "subsets_one_stratum",
        margin=0.005,
        control=True,
    ),
    Setting("top5-subsets", 63, 6, (40, 60), "equal", "subsets", top=5, margin=0.005),
    Setting(
        "top5-subsets-control",
        63,
        6,
        (40, 60),
        "equal",
        "subsets",
        top=5,
        margin=0.005,
        control=True,
    ),
]


def dump_replay(pool: Path, eval_data: str, eval_by: str, out: Path) -> None:
    """Per-window NLL of every subset of ``pool`` on the search split of ``eval_data`` (what
    ``search`` races with its default held-out split and seed; ``Race.unit_scores``), saved
    as ``--replay`` input."""
    from ablate import Evaluator, Race
    from ablate.strategies.driver import split_evaluators

    ev = Evaluator(pool, eval_data, by=eval_by, store=False, progress=False)
    ev = split_evaluators(ev, None, 0)[0]
    race = Race(ev, "macro", seed=0)
    subsets = ev.all_subsets()
    values = race.unit_scores(subsets)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(
        tmp,
        values=values,
        tokens=race.racer.tokens,
        strata=race.racer.doc_domain,
        mixtures=np.array([str(m) for m in subsets]),
        weights=np.array([json.dumps(m.as_dict()) for m in subsets]),
    )
    tmp.replace(out)


def _weights(name: str) -> dict[str, float]:
    if ":" in name:
        return {n: float(w) for n, w in (p.split(":") for p in name.split())}
    parts = name.split("+")
    return {n: 1 / len(parts) for n in parts}


def load_replay(path: Path):
    """``(values, tokens, strata, basis, coef)`` of a ``--dump-replay`` file: the control
    variates' basis is the singletons' rows, ``coef`` each mixture's weights over them."""
    z = np.load(path)
    if "weights" in z.files:
        mixtures = [json.loads(str(w)) for w in z["weights"]]
    else:  # an older dump: str(mixture), "a+b" (a subset) or "a:0.25 b:0.75"
        mixtures = [_weights(str(m)) for m in z["mixtures"]]
    basis = np.array([i for i, m in enumerate(mixtures) if len(m) == 1], dtype=np.int64)
    names = [next(iter(mixtures[i])) for i in basis]
    coef = np.array([[m.get(n, 0.0) for n in names] for m in mixtures])
    if not np.allclose(coef.sum(1), 1.0):
        raise SystemExit(f"{path}: a mixture uses a partition that has no singleton row")
    values = z["values"].astype(np.float64)
    return values, z["tokens"].astype(np.int64), z["strata"], basis, coef


def table(rows: list[dict], label: str) -> str:
    """The rows as a markdown table (docs/racing.md)."""
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


def compare(before: dict, after: dict) -> str:
    """One row per setting: nominal, then each racer's failures, interval and saving."""

    def cell(r: dict | None) -> str:
        if r is None:
            return "not run | |"
        lo, hi = r["ci95"]
        flag = " **over**" if r["above_nominal"] else ""
        return (
            f"{r['failures']}/{r['races']} = {r['rate']:.3f} [{lo:.3f}, {hi:.3f}]{flag} "
            f"| {r['saving_mean']:.1f}x |"
        )

    old = {r["name"]: r for r in before["rows"]}
    lines = [
        "| setting | cand | strata x units | lengths | K | nominal | "
        f"{before['label']}: failures [95% CI] | saved | {after['label']}: EPS | "
        "failures [95% CI] | saved |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in after["rows"]:
        b = old.get(r["name"])
        lines.append(
            f"| {r['name']} | {r['candidates']} | {r['strata']} x {r['units'][0]}-"
            f"{r['units'][1]} | {r['lengths']} | {r['top']} | {r['nominal']:.2f} | {cell(b)} "
            f"{r['margin']} | {cell(r)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--races", type=int, default=1000, help="races per setting")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--settings", nargs="*", help="names to run (default: all)")
    p.add_argument("--margin", type=float, help="override every setting's EPS")
    p.add_argument(
        "--level", type=float, help="override every setting's mean per-token NLL (default 3.0)"
    )
    p.add_argument("--replay", type=Path, help="npz of real per-unit losses")
    p.add_argument("--label", default="this tree", help="names the racer in the table")
    p.add_argument("--seed", type=int, default=27)
    p.add_argument("--first", type=int, help="units per stratum in stage 0 (default: shipped)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument(
        "--dump-replay",
        nargs=3,
        metavar=("POOL", "EVAL", "OUT"),
        help="score every subset of POOL per eval window (EVAL by domain) into OUT.npz, exit",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="print one before/after table from two --out files, exit",
    )
    a = p.parse_args(argv)
    if a.compare:
        print(compare(*(json.loads(f.read_text()) for f in a.compare)))
        return 0
    if a.dump_replay:
        pool, eval_data, out = a.dump_replay
        dump_replay(Path(pool), eval_data, "domain", Path(out))
        return 0
    chosen = [s for s in SETTINGS if not a.settings or s.name in a.settings]
    if a.margin is not None:
        chosen = [dataclasses.replace(s, margin=a.margin) for s in chosen]
    if a.level is not None:
        chosen = [dataclasses.replace(s, level=a.level) for s in chosen]
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
        name = f"{rs.name}-control"
        jobs.append((dataclasses.replace(rs, name=name, control=True), rep))
    rows = []
    for s, rep in jobs:
        t0 = time.perf_counter()
        rows.append(simulate(s, a.races, a.confidence, a.seed, rep, a.first))
        print(f"{s.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if a.out:  # after each setting: a long run interrupted keeps what it measured
            tmp = a.out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"label": a.label, "rows": rows}, indent=1, sort_keys=True))
            tmp.replace(a.out)
    print(table(rows, a.label))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
