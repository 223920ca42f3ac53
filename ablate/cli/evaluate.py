"""``ablate eval``: score mixtures by merging pool members."""

from __future__ import annotations

import argparse
from typing import Any

from ablate.cli.common import (
    add_command,
    add_eval_args,
    add_max_size_arg,
    add_output_args,
    add_race_args,
    emit_json,
    emit_table,
    evaluator,
    level_line,
    race_confidence,
    race_margin,
    usage_error,
)
from ablate.mixture import Mixture
from ablate.present.tables import Column, task_rows
from ablate.racing.policy import PartialResult, Race

MIXTURE_WIDTH = 40  # mixture names longer than this end in an ellipsis in tables
DOMAIN_WIDTH = 12  # domain column headers likewise


def _mixtures_from_args(args: argparse.Namespace, ev: Any) -> list:
    if args.all_subsets:
        return ev.all_subsets(args.max_size)
    specs = [Mixture.parse(s) for s in (args.mixture or [])] + [
        Mixture.parse(s) for s in (args.weights or [])
    ]
    if not specs:
        raise usage_error(
            "say what to score: --mixture a,b, --weights a=0.25,b=0.75 or --all-subsets"
        )
    return specs


def eval_table(results: list, domains: list[str]) -> tuple[list[dict], list]:
    """Rows (best macro perplexity first) and columns of the ``ablate eval`` table."""
    ranked = sorted(results, key=lambda r: r.macro_ppl)
    rows = [
        {
            "rank": i,
            "mixture": str(r.mixture),
            **{f"ppl:{d}": r.ppl[d] for d in domains},
            "macro_ppl": r.macro_ppl,
            "macro_bpb": r.macro_bpb,
            **{f"acc:{t}": s.acc for t, s in getattr(r, "tasks", {}).items()},
        }
        for i, r in enumerate(ranked, 1)
    ]
    cols = [Column("rank"), Column("mixture", align="<", max_width=MIXTURE_WIDTH)]
    cols += [Column(f"ppl:{d}", d, fmt=".3f", max_width=DOMAIN_WIDTH) for d in domains]
    if len(domains) > 1:
        cols += [Column("macro_ppl", "macro ppl", fmt=".3f")]
    cols += [Column("macro_bpb", "macro bpb" if len(domains) > 1 else "bpb", fmt=".4f")]
    tasks = list(getattr(ranked[0], "tasks", {})) if ranked else []
    cols += [Column(f"acc:{t}", f"{t} acc", fmt=".3f", max_width=DOMAIN_WIDTH) for t in tasks]
    return rows, cols


def cmd_eval(args: argparse.Namespace) -> int:
    """score mixtures by merging pool members

    Score mixtures: merge the members of each mixture by the pool's merge (a
    weighted parameter average, Fisher-weighted for pools whose members start from
    the seed's second moments; --merge picks another) and measure its perplexity
    per eval domain. Scores are stored in POOL/results.sqlite and never computed
    twice. At the proxy level specialisation (the default of such pools;
    --proxy-level) each domain's perplexity is read lower where one partition's
    member gains most over the seed there (docs/validation.md).

    Examples:
        ablate eval runs/pool --eval-data eval.jsonl --eval-by domain --all-subsets
        ablate eval runs/pool --eval-data eval.jsonl --eval-by domain --weights code=0.25,wiki=0.75
        ablate eval runs/pool --eval-data eval.jsonl --eval-by domain --all-subsets --race --top 10
        ablate eval runs/pool --eval-data eval.jsonl --eval-by domain --all-subsets \\
            --backend ray --address HEAD:6379 --workers 8
    """
    if args.top is not None and args.top < 1:
        raise usage_error(f"--top must be at least 1, got {args.top}")
    confidence = race_confidence(args)
    note = None
    with evaluator(args) as ev:
        mixtures = _mixtures_from_args(args, ev)
        if args.race:
            race = Race(
                ev,
                "macro",
                confidence=confidence,
                top=args.top or 1,
                margin=race_margin(args),
                seed=args.race_seed,
            )
            raced = race.run(mixtures)  # survivors: full scores only in the table
            results = [r for r in raced if not isinstance(r, PartialResult)]
            note = race.stats.describe()
        else:
            results = ev.run_many(mixtures)
        domains = list(ev.domains)
        shift = ev.level_shift if results else None
    if args.top is not None:
        results = sorted(results, key=lambda r: r.macro_ppl)[: args.top]

    if args.json:
        # one object per mixture x domain, a macro object, then a "task" object per task
        emit_json([row for r in results for row in r.rows() + task_rows([r])])
        return 0
    rows, cols = eval_table(results, domains)
    emit_table(args, rows, cols)
    if note and not args.csv:
        print(f"note: {note}")
    if (line := level_line(shift)) and not args.csv:
        print(line)
    return 0


def add_eval_command(sub: Any) -> None:
    p = add_command(sub, "eval", cmd_eval)
    add_eval_args(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--mixture", action="append", metavar="A,B,C", help="uniform subset (repeatable)"
    )
    what.add_argument(
        "--weights", action="append", metavar="A=W,B=W", help="weighted mixture (repeatable)"
    )
    what.add_argument("--all-subsets", action="store_true", help="every subset of partitions")
    add_max_size_arg(p, ", with --all-subsets")
    add_race_args(p, target="macro perplexity", top_k=True)
    p.add_argument(
        "--top",
        type=int,
        default=None,
        metavar="K",
        help="print the K best mixtures by macro perplexity; with --race, race to keep "
        "the K best (family-wise at --confidence; default: all; racing: the best)",
    )
    add_output_args(
        p,
        json_help="print a JSON array: one object per mixture x domain, plus a macro object",
    )
