"""``ablate fit``: fit a mixture law on a table of runs; predict, check and propose mixtures."""

from __future__ import annotations

import argparse
from typing import Any

from ablate.cli.common import (
    add_command,
    add_seed_arg,
    emit_json,
    emit_table,
    usage_error,
    version,
)
from ablate.laws import Constraints, MixtureLaw, read_runs
from ablate.present.tables import Column

_SHOWN_WEIGHTS = 4  # heaviest partitions a table row shows of a mixture
_SHOWN_PREDICTIONS = 10  # rows of the --predict table for people (--json has every row)


def brief(partitions: tuple[str, ...], row: Any, parts: int = _SHOWN_WEIGHTS) -> str:
    """The ``parts`` heaviest weights of a row, ``name:0.31 ...`` (+ how many more)."""
    nz = sorted(((w, p) for p, w in zip(partitions, row, strict=True) if w > 5e-5), reverse=True)
    text = " ".join(f"{p}:{w:.3g}" for w, p in nz[:parts])
    return text + (f" (+{len(nz) - parts} more)" if len(nz) > parts else "")


def cmd_fit(args: argparse.Namespace) -> int:
    """fit a mixture law on a table of runs; predict, check and propose mixtures

    Read a runs table (CSV, TSV or Parquet; several files are joined on their shared
    columns): one row per run, its mixture as weight columns named by partition or a
    `mixture` column (a=0.25,b=0.75), and numeric targets. For each --target, fit the
    surrogate family of the regression search strategy (ridge on weights, with pairwise
    products, boosted trees, Ye et al.'s exponential law; `auto` keeps the lowest k-fold
    error), report its cross-validated Spearman with a 90% interval, then predict the
    mixtures of --predict (checked against its target column when it has one) and propose
    the N best mixtures under --max-weight caps.

    Examples:
        ablate fit runs.csv --target loss --propose 5
        ablate fit train_mixture_1m.csv train_pile_loss_1m.csv --weights 'train_*' \\
            --target metric/the_pile_pile_cc_val_loss --predict test_mixture_1B.csv test_pile_loss_1B.csv
        ablate fit runs.parquet --target acc --higher-is-better --features trees --propose 3 \\
            --max-weight web=0.5,code=0.1 --json
    """

    constraints = Constraints.parse(args.max_weight)
    if args.propose is not None and args.propose < 1:
        raise usage_error(f"--propose must be at least 1, got {args.propose}")
    if args.max_weight and not args.propose:
        raise usage_error("--max-weight caps the proposals; add --propose N or drop --max-weight")
    targets = list(dict.fromkeys(args.target))
    runs = read_runs(args.runs, targets, weights=args.weights)
    candidates = None
    if args.predict:
        candidates = read_runs(
            args.predict,
            targets,
            weights=args.weights,
            partitions=runs.partitions,
            need_targets=False,
        )
    if constraints.max_weight:
        constraints.caps(runs.partitions)  # unknown names fail before any fitting
    docs = []
    for t in targets:
        law = MixtureLaw.fit(
            runs,
            t,
            features=args.features,
            higher_is_better=args.higher_is_better,
            seed=args.seed,
        )
        doc: dict[str, Any] = {"law": law.to_json()}
        if candidates is not None:
            pred = law.predict(candidates)
            doc["predictions"] = [
                {"row": i + 1, "mixture": m, "predicted": float(p)}
                | ({"actual": float(candidates.targets[t][i])} if t in candidates.targets else {})
                for i, (m, p) in enumerate(zip(candidates.mixture_keys(), pred, strict=True))
            ]
            if t in candidates.targets:
                doc["check"] = law.holdout(candidates)
        if args.propose:
            doc["proposals"] = law.propose(args.propose, constraints)
        docs.append((law, doc))
    if args.json:
        emit_json(
            {
                "format_version": 1,
                "ablate_version": version(),
                "runs": len(runs),
                "source": runs.source,
                "caps": dict(constraints.max_weight),
                "targets": [
                    d | {"proposals": _proposal_rows(d["proposals"])} if "proposals" in d else d
                    for _, d in docs
                ],
            }
        )
        return 0
    for i, (law, doc) in enumerate(docs):
        if i:
            print()
        _print_law(args, law, doc, candidates)
    return 0


def _proposal_rows(frame: Any) -> list[dict]:
    parts = [c for c in frame.columns if c not in ("rank", "mixture", "predicted")]
    return [
        {
            "rank": int(r["rank"]),
            "mixture": r["mixture"],
            "predicted": float(r["predicted"]),
            "weights": {p: float(r[p]) for p in parts if r[p] > 0},
        }
        for _, r in frame.iterrows()
    ]


def _print_law(args: argparse.Namespace, law: Any, doc: dict, candidates: Any) -> None:

    scale = "log scale" if law.transform == "log" else "raw scale"
    goal = "higher is better" if law.higher_is_better else "lower is better"
    print(f"law of {law.target} ({goal}) on {law.runs} runs: {law.surrogate.kind} ({scale})")
    errs = "  ".join(
        f"{k} {v**0.5:.4g}{'*' if k == law.surrogate.kind else ''}"
        for k, v in law.kfold_mse.items()
    )
    print(f"  k-fold RMSE ({scale}): {errs}")
    lo, hi = law.cv_spearman_interval
    print(f"  cross-validated Spearman {law.cv_spearman:.3f} [{lo:.3f}, {hi:.3f}] (90% bootstrap)")
    if candidates is not None:
        rows = sorted(
            doc["predictions"], key=lambda r: r["predicted"], reverse=law.higher_is_better
        )
        shown = [
            r | {"mixture": brief(candidates.partitions, candidates.weights[r["row"] - 1])}
            for r in rows[:_SHOWN_PREDICTIONS]
        ]
        cols = [Column("row"), Column("mixture", align="<", max_width=60)]
        cols += [Column("predicted", fmt=".4g")]
        if "check" in doc:
            cols.append(Column("actual", fmt=".4g"))
        print(f"predictions for {candidates.source} ({len(rows)} mixtures, best first):")
        emit_table(args, shown, cols)
        c = doc.get("check")
        if c is not None:
            regret = "n/a" if c["regret"] is None else f"{100 * c['regret']:.2f}%"
            print(
                f"  check against its {law.target} column: Spearman {c['spearman']:.3f}; "
                f"the predicted best (row {c['pick']}) is really #{c['pick_rank']} of {c['n']} "
                f"(regret {regret})"
            )
    if "proposals" in doc:
        frame = doc["proposals"]
        caps = f" (caps: {args.max_weight})" if args.max_weight else ""
        print(f"proposed mixtures{caps}:")
        rows = [
            {
                "rank": int(r["rank"]),
                "mixture": brief(law.partitions, r[list(law.partitions)].to_numpy(float), 6),
                "predicted": float(r["predicted"]),
            }
            for _, r in frame.iterrows()
        ]
        emit_table(
            args,
            rows,
            [
                Column("rank"),
                Column("mixture", align="<", max_width=100),
                Column("predicted", fmt=".4g"),
            ],
        )
        for _, r in frame.iterrows():
            print(f"  {int(r['rank'])}: {r['mixture']}")


def add_fit_command(sub: Any) -> None:
    p = add_command(sub, "fit", cmd_fit)
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUNS",
        help="runs table(s): .csv, .tsv or .parquet; several are joined on their shared columns",
    )
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="COL",
        help="column to fit a law on (repeatable: one law per target)",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        default=None,
        metavar="COL",
        help="weight columns, by name or glob pattern ('train_*') (default: a `mixture` column, "
        "else every other numeric column but id-like ones, each within [0, 1])",
    )
    p.add_argument(
        "--higher-is-better",
        action="store_true",
        help="the targets are maximised (accuracy); default: minimised (loss, perplexity)",
    )
    p.add_argument(
        "--features",
        default="auto",
        choices=("weights", "weights+pairs", "trees", "exp", "auto"),
        help="surrogate: ridge on weights, ridge with pairwise products, boosted trees, "
        "Ye et al.'s exponential law, or auto (lowest k-fold error; default)",
    )
    p.add_argument(
        "--predict",
        nargs="+",
        default=None,
        metavar="FILE",
        help="mixtures to predict (same weight columns; joined like RUNS); a target column "
        "there is checked: Spearman, real rank of the predicted best",
    )
    p.add_argument(
        "--propose",
        type=int,
        default=None,
        metavar="N",
        help="propose the N best distinct mixtures the law predicts on the simplex",
    )
    p.add_argument(
        "--max-weight",
        default=None,
        metavar="P=W,...",
        help="with --propose: cap partitions' weights, e.g. web=0.5,code=0.1 (0 excludes one)",
    )
    add_seed_arg(p, of="the folds, the trees and --propose")
    p.add_argument(
        "--json", action="store_true", help="print the laws, checks and proposals as JSON"
    )
