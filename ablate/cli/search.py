"""``ablate search``: search mixtures for the one that minimises a target perplexity."""

from __future__ import annotations

import argparse
from typing import Any

from ablate.cli.common import (
    add_command,
    add_eval_args,
    add_max_size_arg,
    add_output_args,
    add_race_args,
    add_seed_arg,
    check_figure_path,
    emit_json,
    emit_table,
    evaluator,
    level_line,
    race_confidence,
    race_margin,
)
from ablate.cli.evaluate import DOMAIN_WIDTH, MIXTURE_WIDTH
from ablate.present.tables import Column
from ablate.strategies import STRATEGIES, search


def search_table(frame: Any, domains: list[str]) -> tuple[list[dict], list]:
    """Rows (best first) and columns of the ``ablate search`` table."""
    accs = [c for c in frame.columns if c.startswith("acc:")]  # one per --task
    rows = [
        {"rank": rank, **{k: row[k] for k in ("mixture", "score")}}
        | {f"ppl:{d}": row[f"ppl:{d}"] for d in domains}
        | {c: row[c] for c in accs}
        for rank, row in frame.iterrows()
    ]
    cols = [
        Column("rank"),
        Column("mixture", align="<", max_width=MIXTURE_WIDTH),
        Column("score", fmt=".3f"),
    ]
    cols += [Column(f"ppl:{d}", d, fmt=".3f", max_width=DOMAIN_WIDTH) for d in domains]
    cols += [Column(c, f"{c[4:]} acc", fmt=".3f", max_width=DOMAIN_WIDTH) for c in accs]
    return rows, cols


def cmd_search(args: argparse.Namespace) -> int:
    """search mixtures for the one that minimises a target perplexity

    Search subsets (or, with --continuous, weights) for the mixture that minimises
    the target perplexity. Every score goes through the results store, so a mixture
    scored before, by any search or `ablate eval`, is never scored twice.

    Examples:
        ablate search runs/pool --eval-data eval.jsonl --eval-by domain --target macro --strategy tpe --evaluations 200
        ablate search runs/pool --eval-data eval.jsonl --eval-by domain --target weighted:code=2,wiki=1 \\
            --continuous --strategy gradient
        ablate search runs/pool --eval-data eval.jsonl --eval-by domain --strategy tpe --storage sqlite:///study.db
        ablate search runs/pool --eval-data eval.jsonl --eval-by domain --strategy exhaustive --race
        ablate search runs/pool --eval-data eval.jsonl --eval-by domain --strategy regression \\
            --also runs/pool/validation/validation.csv
    """
    if args.plot:
        check_figure_path(args.plot, "--plot")
    confidence = race_confidence(args)
    if args.merge is None and args.strategy == "gradient":
        args.merge = "average"  # what the gradient differentiates, whatever the pool's default
    with evaluator(args) as ev:
        study = search(
            ev,
            target=args.target,
            strategy=args.strategy,
            budget=args.evaluations,
            max_size=args.max_size,
            require=args.require or (),
            exclude=args.exclude or (),
            continuous=args.continuous,
            storage=args.storage,
            study_name=args.study_name,
            heldout=args.heldout,
            seed=args.seed,
            race=args.race,
            confidence=confidence,
            also=args.also,
            margin=race_margin(args),
            race_seed=args.race_seed,
        )
        shift = ev.level_shift
    if args.plot:
        study.plot(args.plot)
    if args.json:
        # No version here: the record's keys are pinned (tests/ablate/test_search.py).
        emit_json(study.to_json())
        return 0
    frame, domains = study.frame, list(study.domains)
    if args.csv:  # every evaluated mixture: --top is for people
        emit_table(args, *search_table(frame, domains))
        return 0
    emit_table(args, *search_table(frame.head(args.top), domains))
    b = study.best
    if b is not None:
        held = "" if b.heldout_score is None else f", held-out {b.heldout_score:.3f}"
        print(f"best ({args.target}): {b.mixture}  score {b.score:.3f}{held}")
    dropped = len(study.raced_out)
    raced = f" ({dropped} dropped early by --race, not ranked)" if dropped else ""
    print(f"{study.evaluations + dropped} mixture(s) evaluated by {study.strategy}{raced}")
    for note in study.notes:
        print(f"note: {note}")
    if line := level_line(shift):
        print(line)
    return 0


def add_search_command(sub: Any) -> None:
    p = add_command(sub, "search", cmd_search)
    strategies = (f"  {k:<11} {v.summary}" for k, v in sorted(STRATEGIES.items()))
    p.description += "\n\nstrategies:\n" + "\n".join(strategies)
    add_eval_args(p)
    p.add_argument(
        "--target",
        default="macro",
        metavar="TARGET",
        help="macro (default), DOMAIN[,DOMAIN...] or weighted:DOMAIN=W,...",
    )
    p.add_argument(
        "--strategy",
        default="tpe",
        choices=sorted(STRATEGIES),
        help="how to propose mixtures (default: tpe; see the list above)",
    )
    add_seed_arg(p, of="the strategy")
    p.add_argument(
        "--evaluations",
        type=int,
        default=None,
        metavar="N",
        help="most mixtures to score, store hits included (default: 50; exhaustive: all)",
    )
    add_max_size_arg(p)
    add_race_args(p)
    p.add_argument(
        "--also",
        nargs="+",
        default=None,
        metavar="RUNS",
        help="with --strategy regression: a table of really trained runs (a mixture column, "
        "and a column named as the target or one per eval domain; validation.csv works) "
        "the surrogate learns from beside the proxies (several files are joined)",
    )
    p.add_argument(
        "--require", nargs="+", metavar="NAME", help="partitions every mixture must contain"
    )
    p.add_argument("--exclude", nargs="+", metavar="NAME", help="partitions no mixture may contain")
    p.add_argument(
        "--continuous", action="store_true", help="search weights on the simplex, not subsets"
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna RDB storage shared by workers, e.g. sqlite:///study.db",
    )
    p.add_argument(
        "--study-name",
        default=None,
        metavar="NAME",
        help="Optuna study name (default: derived from pool, eval data, target)",
    )
    p.add_argument(
        "--heldout",
        type=float,
        default=None,
        metavar="F",
        help="fraction of eval docs kept out of the search (default: 0.25 if enough)",
    )
    p.add_argument(
        "--top",
        type=int,
        default=10,
        metavar="N",
        help="rows of the ranked table to print (default: 10; --csv has every mixture)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="write the search plot here (.png, .svg, .pdf, ... by suffix; the folder must exist)",
    )
    add_output_args(
        p, json_help="print the best mixture, its scores and the number of evaluations as JSON"
    )
