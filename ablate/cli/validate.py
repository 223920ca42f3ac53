"""``ablate validate``: really train mixtures and correlate proxy with real perplexity."""

from __future__ import annotations

import argparse
from typing import Any

from ablate.cli.common import (
    add_command,
    add_eval_args,
    add_out_arg,
    add_output_args,
    add_seed_arg,
    check_out_folder,
    emit_json,
    emit_table,
    evaluator,
    usage_error,
    version,
)
from ablate.mixture import Mixture
from ablate.present.tables import Column
from ablate.validation import validate
from ablate.validation.decisions import MARGIN

_STATS = ("pearson", "spearman", "kendall")


def validate_table(table: Any) -> tuple[list[dict], list]:
    """Rows (one per eval domain and ``pooled``) and columns of the ``ablate validate`` table.

    ``table`` is ``ValidationReport.table()``: correlations, their intervals, mean gaps.
    """
    rows = [{"domain": str(d), **{k: v for k, v in r.items()}} for d, r in table.iterrows()]
    cols = [Column("domain", align="<", max_width=24), Column("n", fmt=".0f")]
    for s in _STATS:
        cols += [Column(s, fmt=".3f"), Column(f"{s}_lo", "lo", fmt=".3f")]
        cols += [Column(f"{s}_hi", "hi", fmt=".3f")]
    cols += [Column("mean_gap", "mean gap", fmt=".3f")]
    return rows, [c for c in cols if c.key in table.columns or c.key == "domain"]


def cmd_validate(args: argparse.Namespace) -> int:
    """really train models on mixtures; correlate proxy and real perplexity

    Really train a model per mixture (stored in POOL/validation/, reused on reruns)
    and compare its perplexity with the merged proxy's, per eval domain: correlations,
    and decisions per target (rank agreement beside the noise ceiling, regret of the
    proxy's pick and the probability that it is within 1% / --margin of the best,
    top-3 recall; two-way bootstrap over mixtures and documents, see
    docs/validation-statistics.md). --budget fixed trains every real model on the
    same tokens, split by the mixture's weights (what a mixture optimizer decides);
    proportional trains k units of tokens for k units (Na et al.). Writes
    validation.csv, report.md and scatter.png into --out.

    Examples:
        ablate validate runs/pool --eval-data eval.jsonl --eval-by domain --budget fixed --weights dirichlet --sample 16 --repeats 2
        ablate validate runs/pool --eval-data eval.jsonl --eval-by domain --budget fixed --sample 16 --weights dirichlet --check-search tpe
        ablate validate runs/pool --eval-data eval.jsonl --eval-by domain --sample 12 --sizes 2,3,4 --out runs/validation
        ablate validate runs/pool --eval-data eval.jsonl --eval-by domain --mixture code,wiki --mixture code=1,math=3
    """
    try:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    except ValueError:
        raise usage_error(
            f"--sizes takes comma-separated integers like 2,3,4, got {args.sizes!r}"
        ) from None
    check_out_folder(args.out, "--out")
    mixtures = [Mixture.parse(s) for s in args.mixture] if args.mixture else None
    extrapolate: float | str = args.extrapolate
    if extrapolate != "norm":
        try:
            extrapolate = float(extrapolate)
        except ValueError:
            raise usage_error(
                f"--extrapolate takes a number > 0 or 'norm', got {args.extrapolate!r}"
            ) from None
    if args.merge is None and extrapolate != 1.0:
        args.merge = "average"  # what --extrapolate scales, whatever the pool's default merge
    with evaluator(args) as ev:
        report = validate(
            ev,
            mixtures=mixtures,
            sample=args.sample,
            sizes=sizes,
            weights=args.weights,
            budget=args.budget,
            budget_tokens=args.budget_tokens,
            repeats=args.repeats,
            check_search=args.check_search,
            search_targets=tuple(args.search_target or ("macro",)),
            search_budget=args.search_evaluations,
            extrapolate=extrapolate,
            seed=args.seed,
            bootstrap=args.bootstrap,
            margin=args.margin,
            keep_weights=args.keep_weights,
        )
    files = report.write(args.out)
    if args.json:
        emit_json({"ablate_version": version(), **report.json()})
        return 0
    rows, cols = validate_table(report.table())
    if args.csv:
        emit_table(args, rows, cols)
        return 0
    print(
        f"{report.mixtures} mixture(s) x {report.repeats} seed(s) validated at a {report.budget} "
        f"budget ({report.trained} trained now, the rest reused)"
        + (
            f"; proxies read at the {report.proxy_level} level (--proxy-level none: as scored)"
            if report.proxy_level != "none"
            else ""
        )
    )
    emit_table(args, rows, cols)
    print()
    print(report.decisions_text())
    print(report.verdict())
    print(f"report: {files.markdown}\nscatter: {files.scatter}\npairs: {files.csv}")
    return 0


def add_validate_command(sub: Any) -> None:

    p = add_command(sub, "validate", cmd_validate)
    add_eval_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="validate N sampled mixtures (see --weights)",
    )
    what.add_argument(
        "--mixture",
        action="append",
        metavar="A,B",
        help="a mixture to validate: a,b or a=1,b=3 (repeatable)",
    )
    p.add_argument(
        "--budget",
        choices=("proportional", "fixed"),
        default="proportional",
        help="tokens of each real model: k base units for k units (proportional, Na et al.), "
        "or the same --budget-tokens for every mixture, split by its weights (fixed) "
        "(default: proportional)",
    )
    p.add_argument(
        "--budget-tokens",
        type=int,
        default=None,
        metavar="N",
        help="the fixed budget in tokens (default: one base unit, the members' own budget)",
    )
    p.add_argument(
        "--weights",
        default="subsets",
        metavar="KIND",
        help="what --sample draws: subsets (uniform subsets of --sizes) or dirichlet[:ALPHA] "
        "(weight vectors; ALPHA > 0, default 1) (default: subsets)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="R",
        help="real models per mixture, each with another training seed; R >= 2 reports the "
        "noise ceiling (real-vs-real rank agreement) (default: 1)",
    )
    p.add_argument(
        "--check-search",
        default=None,
        metavar="STRATEGY",
        help="run this search strategy on the proxies (continuous weights) on half of the eval "
        "documents, then train its pick and the sample's really best mixture again with fresh "
        "seeds and compare them on the other half (needs --budget fixed)",
    )
    p.add_argument(
        "--search-target",
        action="append",
        metavar="TARGET",
        help="target of --check-search: macro, a domain, ... (repeatable; default: macro)",
    )
    p.add_argument(
        "--search-evaluations",
        type=int,
        default=None,
        metavar="N",
        help="mixtures --check-search may score (default: the strategy's)",
    )
    p.add_argument(
        "--extrapolate",
        default="1",
        metavar="LAMBDA",
        help="proxies as theta_0 + LAMBDA * sum_i w_i (theta_i - theta_0); 1 is the plain "
        "average, norm rescales each merged update to the members' mean length (default: 1)",
    )
    p.add_argument(
        "--sizes",
        default="2,3,4",
        metavar="K,K,...",
        help="subset sizes to sample with --sample (default: 2,3,4)",
    )
    add_seed_arg(p, of="the sample and the bootstrap")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="B",
        help="bootstrap replicates, each redrawing the mixtures and the eval documents (and, "
        "for the decisions, the seed labels with --repeats) (default: 1000)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=MARGIN,
        metavar="EPS",
        help="indifference margin (relative perplexity) of the decisions' P(within EPS): the "
        "share of bootstrap replicates whose proxy pick is within EPS of the best (default: %(default)s)",
    )
    p.add_argument(
        "--keep-weights",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep each real model's weights after scoring; --no-keep-weights deletes them "
        "once the model's scores are stored in its folder (reruns on the same eval data and "
        "tasks still work; 540 MB per model at 135M parameters) (default: keep)",
    )
    add_out_arg(p, default="ablate-validation", holds="validation.csv, report.md, scatter.png")
    add_output_args(p, json_help="print the correlations per domain (and pooled) as a JSON object")
