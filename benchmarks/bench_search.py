"""Benchmark the search strategies: how many evaluations each needs to reach the optimum.

The exhaustive strategy scores every subset of the pool's partitions and gives the optimum
(the best subset for the target). Every other strategy then runs from several seeds with
a budget of as many evaluations as there are subsets, and the benchmark reports the first
evaluation at which it matched the optimum (median over seeds; "-" when fewer than half of
the seeds got there), how many seeds got there, the best score and the wall time. Strategies
that also search weights on the simplex run there too (``--spaces``), where "reached" means
as good as the best subset or better.

Scores go through the pool's results store, so a mixture is scored once however many
strategies and seeds propose it: wall times after the first strategy mostly measure the
strategies' own overhead. Counts of evaluations do not depend on the store.

Run: ``python benchmarks/bench_search.py --quick`` (builds the quick demo pool in
``ablate-demo-quick`` when missing) or ``--pool POOL --eval-data EVAL.jsonl``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ablate import Evaluator  # noqa: E402  (after the path tweak, so the repo's package is found)
from ablate.strategies import STRATEGIES, search  # noqa: E402

EXACT = 1e-9  # relative slack for "matched the optimum" (scores come from the same store)


def demo_pool(out: Path, quick: bool) -> tuple[Path, Path]:
    """The demo's pool and eval file, built with ``ablate.demo.run_demo`` when missing."""
    if not (out / "pool" / "pool.json").is_file() or not (out / "eval.jsonl").is_file():
        from ablate.demo import run_demo

        run_demo(out, quick=quick, progress=False)
    return out / "pool", out / "eval.jsonl"


def first_reach(study, optimum: float) -> int | None:
    """1-based evaluation at which the study first scored ``<= optimum`` (None: never)."""
    for t in study.trials:
        if t.score <= optimum * (1 + EXACT):
            return t.evaluation
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, help="pool folder (default: the demo pool)")
    ap.add_argument("--eval-data", type=Path, help="eval file (default: the demo's eval.jsonl)")
    ap.add_argument("--eval-by", default="domain")
    ap.add_argument(
        "--demo-dir", type=Path, default=None, help="where the demo pool lives or is built"
    )
    ap.add_argument("--quick", action="store_true", help="use (or build) the quick demo pool")
    ap.add_argument("--target", default="macro")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--strategies", nargs="+", default=sorted(STRATEGIES), choices=sorted(STRATEGIES)
    )
    ap.add_argument(
        "--spaces", default="subsets,weights", help="subsets, weights or both (comma-separated)"
    )
    ap.add_argument(
        "--weight-budget",
        type=int,
        default=None,
        help="budget in weight spaces (default: as subsets)",
    )
    args = ap.parse_args()

    if args.pool is None:
        out = args.demo_dir or Path("ablate-demo-quick" if args.quick else "ablate-demo")
        args.pool, default_eval = demo_pool(out, args.quick)
        args.eval_data = args.eval_data or default_eval
    if args.eval_data is None:
        ap.error("--eval-data is required with --pool")
    ev = Evaluator(args.pool, args.eval_data, by=args.eval_by, progress=False)
    t0 = time.perf_counter()
    truth = search(ev, target=args.target, strategy="exhaustive", heldout=0)
    truth_secs = time.perf_counter() - t0
    optimum, n = truth.best.score, truth.evaluations
    wbudget = args.weight_budget or n
    print(
        f"pool {args.pool}: {len(ev.partitions)} partitions, {n} subsets; target {args.target}; "
        f"optimum {truth.best.mixture} = {optimum:.4f}; {args.seeds} seeds"
    )
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    head = ("strategy", "space", "budget", "evals to optimum (median)", "reached", "best (median)",
            "evals used", "wall s (median)")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head), flush=True)
    for name in args.strategies:
        for space in spaces:
            if space not in STRATEGIES[name].spaces:
                continue
            budget = n if space == "subsets" else wbudget
            seeds = (
                [0] if name in ("exhaustive", "greedy", "gradient") else range(args.seeds)
            )  # deterministic
            reach, best, evals, secs = [], [], [], []
            for seed in seeds:
                if name == "exhaustive" and space == "subsets":
                    # the same run as ``truth`` (budget n, seed 0): reuse it, don't run it twice
                    study, took = truth, truth_secs
                else:
                    t0 = time.perf_counter()
                    study = search(
                        ev, target=args.target, strategy=name, continuous=space == "weights",
                        budget=budget, heldout=0, seed=seed, progress=False,
                    )  # fmt: skip
                    took = time.perf_counter() - t0
                secs.append(took)
                reach.append(first_reach(study, optimum))
                best.append(study.best.score)
                evals.append(study.evaluations)
            got = [r for r in reach if r is not None]
            # median over seeds, a miss counting as infinitely many evaluations
            med = statistics.median([math.inf if r is None else r for r in reach])
            row = (name, space, str(budget), "-" if math.isinf(med) else f"{med:g}", f"{len(got)}/{len(reach)}",
                   f"{statistics.median(best):.4f}", f"{statistics.median(evals):g}", f"{statistics.median(secs):.1f}")  # fmt: skip
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
