"""The study-level speedup: answering an ablation study with ablate vs really training it.

Measured on one pool (the demo pool it builds, or ``--pool``):

* member training time (from the members' records; the pool is built once per study);
* per-mixture scoring time, full and with racing (``ablate.racing.policy``): exhaustive search
  over every subset, for the macro target and every eval domain, with and without
  ``race=True`` - the best mixture of each, and the eval tokens each scored;
* ``eval --all-subsets --race --top 10`` against full scoring's ten best;
* the time to really train a small sample of mixtures (``ablate.validation``'s trainer,
  proportional budget: k units of tokens for k partitions), and of one fixed-budget model.

It then prints the time to answer "all 2^n - 1 subsets" and "N weighted mixtures at a
fixed budget" with ablate vs really training them, as ratios. Rows say which numbers were
measured and which were extrapolated (real training of every mixture: from the sample's
seconds per unit of tokens; scoring N weighted mixtures: from the ones scored here).

Run (heavy: tens of minutes on 2 CPU cores; one thread is fairest on a shared machine):
    OMP_NUM_THREADS=1 python benchmarks/bench_study.py --pool COPY_OF_POOL \\
        --eval-data eval.jsonl --eval-by domain --train 3
Without ``--pool`` it builds the full demo pool under ``--work`` first (member times are
then measured here). Really trained models are stored in the pool's ``validation/`` folder:
pass a copy of a pool you care about.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ablate import Evaluator, Mixture, Race, search  # noqa: E402
from ablate.racing.policy import PartialResult  # noqa: E402

TOP = 10  # the eval --race --top K check


def member_seconds(pool) -> list[float]:
    """Wall time of every member's training, from its record."""
    out = []
    for f in sorted((pool.path / "members").glob("*/*/member.json")):
        out.append(float(json.loads(f.read_text())["wall_time_s"]))
    return out


def racing_section(args, pool_path: Path, work: Path) -> dict:
    """Exhaustive search with and without racing for macro and each domain; top-K check."""
    ev_full = Evaluator(
        pool_path, args.eval_data, by=args.eval_by, store=work / "full.sqlite", progress=False
    )
    targets = ["macro", *ev_full.domains]
    rows, per_mixture = [], {}
    start = time.perf_counter()
    plain = {t: search(ev_full, target=t, strategy="exhaustive", progress=False) for t in targets}
    full_seconds = time.perf_counter() - start  # the first target scores, the rest are hits
    n_mix = plain["macro"].evaluations
    search_tokens = None
    for t in targets:
        ev = Evaluator(pool_path, args.eval_data, by=args.eval_by, store=False, progress=False)
        start = time.perf_counter()
        st = search(
            ev, target=t, strategy="exhaustive", race=True, margin=args.margin, progress=False
        )
        took = time.perf_counter() - start
        r = st.race
        search_tokens = r.tokens_full // max(1, r.full + r.dropped)
        # the promise: the returned mixture is within --margin of full scoring's best
        gap = st.best.score / plain[t].best.score - 1
        # the same mixture, its windows summed in another order: -1e-16 is 0, not "-0.00%"
        gap = 0.0 if abs(gap) < 1e-9 else gap
        same = gap <= args.margin + 1e-12
        rows.append((t, str(plain[t].best.mixture), str(st.best.mixture), same, r, took, gap))
        per_mixture[t] = took / n_mix
    print(
        f"\nracing: exhaustive search over {n_mix} subsets, search split of {args.eval_data}, "
        f"--margin {args.margin}"
    )
    print(
        f"{'target':<16} {'best (full)':<28} {'best (race)':<28} {'gap':>7} {'ok':<3} "
        f"{'tokens full':>12} {'tokens race':>12} {'fewer':>6} {'full/drop':>9} {'s':>6} seed"
    )
    for t, a, b, same, r, took, gap in rows:
        print(
            f"{t:<16} {a[:28]:<28} {b[:28]:<28} {gap:>7.2%} {'yes' if same else 'NO':<3} "
            f"{r.tokens_full:>12,} {r.tokens_scored:>12,} {r.saving:>5.1f}x "
            f"{r.full:>4}/{r.dropped:<4} {took:>6.0f} {r.seed}"
        )
    total_full = sum(r[4].tokens_full for r in rows)
    total_race = sum(r[4].tokens_scored for r in rows)
    print(
        f"{'all targets':<16} {'':<28} {'':<28} {'':<5} {total_full:>12,} {total_race:>12,} "
        f"{total_full / total_race:>5.1f}x"
    )
    if args.racing_only:
        return {}

    # eval --all-subsets --race --top K on the whole eval set, against full scoring
    ev_all = Evaluator(pool_path, args.eval_data, by=args.eval_by, store=False, progress=False)
    subsets = ev_all.all_subsets()
    start = time.perf_counter()
    full_results = ev_all.run_many(subsets, progress=False)
    score_full = (time.perf_counter() - start) / len(subsets)
    best_full = [str(r.mixture) for r in sorted(full_results, key=lambda r: r.macro_ppl)[:TOP]]
    ev_race = Evaluator(pool_path, args.eval_data, by=args.eval_by, store=False, progress=False)
    start = time.perf_counter()
    race = Race(ev_race, "macro", top=TOP, margin=args.margin)
    raced = [r for r in race.run(subsets) if not isinstance(r, PartialResult)]
    race_seconds = time.perf_counter() - start
    best_race = [str(r.mixture) for r in sorted(raced, key=lambda r: r.macro_ppl)[:TOP]]
    s = race.stats
    print(
        f"\neval --all-subsets --race --top {TOP}: same {TOP} as full scoring, same order: "
        f"{'yes' if best_race == best_full else 'NO'}; {s.tokens_scored:,} of "
        f"{s.tokens_full:,} tokens ({s.saving:.1f}x fewer), {s.full} full / {s.dropped} dropped"
    )
    if best_race != best_full:
        print(f"  full: {best_full}\n  race: {best_race}")
    return {
        "n_subsets": len(subsets),
        "score_full": score_full,
        "race_all_subsets": race_seconds,
        "race_macro_search_per_mixture": per_mixture["macro"],
        "search_full_seconds": full_seconds,
        "search_tokens": search_tokens,
        "ev": ev_all,
    }


def weighted_scoring(ev: Evaluator, n: int, seed: int = 0) -> float:
    """Seconds per weighted mixture (merged from scratch, scored in full)."""
    rng = np.random.default_rng(seed)
    names = ev.partitions
    mixes = [Mixture.of(dict(zip(names, rng.dirichlet(np.ones(len(names))), strict=True)))]
    mixes += [
        Mixture.of(dict(zip(names, rng.dirichlet(np.ones(len(names))), strict=True)))
        for _ in range(n - 1)
    ]
    start = time.perf_counter()
    ev.run_many(mixes, progress=False)
    return (time.perf_counter() - start) / n


def real_training(ev: Evaluator, n_train: int) -> tuple[float, list[tuple[str, int, float]]]:
    """Really train ``n_train`` new mixtures (proportional budget) and one fixed-budget model;
    returns (seconds per unit of tokens, [(mixture, units, seconds)])."""
    from ablate.validation.models import ensure_trained, plan_for, read_validation

    names = list(ev.partitions)
    rng = np.random.default_rng(1)
    sizes = np.linspace(1, min(3, len(names)), n_train).round().astype(int)
    measured = []
    for k in sizes:
        for _ in range(50):  # a mixture not trained before (the sample must really train)
            m = Mixture.uniform(sorted(rng.choice(names, size=k, replace=False).tolist()))
            plan = plan_for(ev, m, repeat=7)  # its own key: never a model trained earlier
            if read_validation(ev.pool, plan.key) is None:
                break
        start = time.perf_counter()
        ensure_trained(ev, [plan], progress=False)
        measured.append((str(m), plan.k, time.perf_counter() - start))
    per_unit = sum(s for *_, s in measured) / sum(k for _, k, _ in measured)
    return per_unit, measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, help="an existing pool (default: build the demo pool)")
    ap.add_argument("--eval-data", help="eval file (default: the demo's)")
    ap.add_argument("--eval-by", default="domain")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--train", type=int, default=3, help="mixtures really trained (sample)")
    ap.add_argument("--weighted", type=int, default=1000, help="N for the weighted row")
    ap.add_argument("--weighted-sample", type=int, default=10, help="weighted mixtures scored")
    ap.add_argument("--margin", type=float, default=0.0, help="racing's --margin EPS")
    ap.add_argument(
        "--racing-only", action="store_true", help="stop after the racing searches' table"
    )
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-study-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.pool is None:
        from ablate.demo import FULL, build_pool

        pool, eval_file = build_pool(work / "demo", FULL, progress=False)
        args.pool, args.eval_data = pool.path, str(eval_file)
    if args.eval_data is None:
        ap.error("--eval-data is needed with --pool")
    from ablate.pool import Pool

    pool = Pool.open(args.pool)
    members = member_seconds(pool)
    n = len(pool.partitions)
    print(
        f"pool {args.pool}: {n} partitions, {len(members)} members, "
        f"{pool.manifest.recipe.unit_tokens:,} tokens per unit; torch threads "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    r = racing_section(args, args.pool, work)
    if args.racing_only:
        print(f"total {time.perf_counter() - t0:.0f} s")
        return
    ev = r["ev"]
    t_weighted = weighted_scoring(ev, args.weighted_sample)
    per_unit, sample = real_training(ev, args.train)
    # Members are one-unit trainings by the same trainer: cost them at the sample's measured
    # seconds per unit, so both sides are timed on this machine with these threads (the
    # members' records may come from another machine or thread count).
    grow = len(members) * per_unit

    # ------------------------------------------------------------------ the study table
    n_sub = 2**n - 1
    units_all = sum(math.comb(n, k) * k for k in range(1, n + 1))  # n 2^(n-1) units in all
    real_all = units_all * per_unit
    ablate_all = grow + n_sub * r["score_full"]
    ablate_all_race = grow + r["race_all_subsets"] * n_sub / r["n_subsets"]
    budget_units = n  # a fixed budget as large as the pool's data
    real_w = args.weighted * budget_units * per_unit
    ablate_w = grow + args.weighted * t_weighted
    rows = [
        (
            "member training, per member",
            f"{per_unit:.1f} s",
            "",
            "",
            f"= real training per unit, measured (members' records: {np.mean(members):.1f} s)",
        ),
        ("score one subset, full", f"{r['score_full']:.2f} s", "", "", "measured"),
        (
            "score one subset, racing (exhaustive, macro)",
            f"{r['race_macro_search_per_mixture']:.2f} s",
            "",
            "",
            "measured",
        ),
        ("score one weighted mixture, full", f"{t_weighted:.2f} s", "", "", "measured"),
    ]
    for m, k, s in sample:
        rows.append((f"really train {m} ({k} unit(s))", "", f"{s:.0f} s", "", "measured"))
    rows += [
        (
            f"all {n_sub} subsets (grow + score)",
            f"{ablate_all:.0f} s",
            f"{real_all:.0f} s",
            f"{real_all / ablate_all:.0f}x",
            f"ablate measured; real extrapolated ({units_all} units x {per_unit:.1f} s/unit)",
        ),
        (
            f"all {n_sub} subsets, top {TOP} by racing",
            f"{ablate_all_race:.0f} s",
            f"{real_all:.0f} s",
            f"{real_all / ablate_all_race:.0f}x",
            "ablate measured; real extrapolated",
        ),
        (
            f"{args.weighted} weighted mixtures, {budget_units}-unit budget",
            f"{ablate_w:.0f} s",
            f"{real_w:.0f} s",
            f"{real_w / ablate_w:.0f}x",
            f"both extrapolated (scoring from {args.weighted_sample} mixtures, training "
            f"from {per_unit:.1f} s/unit)",
        ),
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    head = ("", "ablate", "real training", "ratio", "how")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    print("\nstudy-level speedup")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
