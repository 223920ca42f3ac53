"""What makes proxies good: decision fidelity against seed strength and unit size.

Builds the ``ablate demo`` pool (Python's standard library, 6 partitions) once per setting
of seed tokens x base-unit tokens, validates a fixed-budget Dirichlet sample of mixtures on
each, and prints one row per setting: median per-domain Spearman, macro Spearman, the
largest regret over targets and the macro regret (``ablate.validation.decisions``), for the
plain average and for each ``--extrapolate`` setting. Pools and real models are kept under
``--out`` and reused, so a rerun only scores.

    python benchmarks/bench_fidelity.py --out runs/fidelity            # 3 x 2 settings
    python benchmarks/bench_fidelity.py --seed-tokens 150000 --unit-tokens 60000

Costly: each setting trains a seed, 6 members and ``--sample`` real models. On a busy
machine set ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/fidelity", help="where pools are built and kept")
    ap.add_argument("--seed-tokens", type=int, nargs="+", default=[50_000, 150_000, 450_000])
    ap.add_argument("--unit-tokens", type=int, nargs="+", default=[30_000, 60_000])
    ap.add_argument("--sample", type=int, default=16, help="Dirichlet mixtures per setting")
    ap.add_argument("--alpha", type=float, default=1.0, help="Dirichlet alpha")
    ap.add_argument("--repeats", type=int, default=1, help="real models per mixture")
    ap.add_argument(
        "--extrapolate", nargs="+", default=["1"], help="merge settings: 1 (average), norm, LAMBDA"
    )
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import numpy as np

    from ablate import Evaluator
    from ablate.demo import FULL, build_pool
    from ablate.validation import validate

    rows = []
    for seed_tokens in args.seed_tokens:
        for unit_tokens in args.unit_tokens:
            settings = dataclasses.replace(FULL, seed_tokens=seed_tokens, unit_tokens=unit_tokens)
            folder = Path(args.out) / f"seed{seed_tokens}-unit{unit_tokens}"
            start = time.perf_counter()
            pool, eval_file = build_pool(folder, settings, progress=False, device=args.device)
            ev = Evaluator(pool, eval_file, by="domain", device=args.device, progress=False)
            for lam in args.extrapolate:
                report = validate(
                    ev,
                    sample=args.sample,
                    weights=f"dirichlet:{args.alpha}",
                    budget="fixed",
                    repeats=args.repeats,
                    extrapolate=lam if lam == "norm" else float(lam),
                    bootstrap=0,
                    progress=False,
                )
                d = report.decisions
                domains = d.drop(index="macro")
                rows.append(
                    {
                        "seed tokens": seed_tokens,
                        "unit tokens": unit_tokens,
                        "merge": "average" if lam == "1" else f"extrapolate {lam}",
                        "median domain Spearman": float(np.median(domains["spearman"])),
                        "macro Spearman": float(d.loc["macro", "spearman"]),
                        "max regret": float(d["regret"].max()),
                        "macro regret": float(d.loc["macro", "regret"]),
                        "noise ceiling (macro)": float(d.loc["macro", "noise_ceiling"]),
                        "minutes": (time.perf_counter() - start) / 60,
                    }
                )
                print(rows[-1], flush=True)
    print()
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [
            f"{v:.3f}"
            if isinstance(v, float) and k != "minutes"
            else f"{v:.1f}"
            if k == "minutes"
            else str(v)
            for k, v in r.items()
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
