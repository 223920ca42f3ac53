"""The ``ablate`` command line: ``pool init|add|grow|ls|verify``, ``eval``, ``search``, ``validate``, ``demo``.

Each command parses, validates, calls one public function, prints (a table for people,
``--json`` for machines) and returns an exit code. Errors the user caused print one line
and exit 2; an interrupt exits 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pool.recipe import LoraSpec, Recipe, TinyModelSpec

EXIT_USER = 2
EXIT_INTERRUPTED = 130

# OS errors that describe the machine, not a bug: one line and how to fix it, no traceback.
# Writes are atomic (pool.atomic), so whatever was written before the failure is intact.
_DISK_FIXES = {
    errno.ENOSPC: "free some disk space and run the same command again",
    errno.EDQUOT: "free some space within your disk quota and run the same command again",
    errno.EROFS: "the filesystem is read-only; use a writable location",
    errno.EACCES: "check the permissions of that path",
    errno.EPERM: "check the permissions of that path",
    errno.EIO: "the disk reported an I/O error; check it (e.g. `ablate pool verify`)",
}

# CLI flag -> (model, field). Help text and choices come from the field, defined once.
_RECIPE_FLAGS = {
    "method": (Recipe, "method"),
    "unit-tokens": (Recipe, "unit_tokens"),
    "seq-len": (Recipe, "seq_len"),
    "batch-size": (Recipe, "batch_size"),
    "lr": (Recipe, "lr"),
    "seed": (Recipe, "seed"),
    "lora-rank": (LoraSpec, "rank"),
    "lora-alpha": (LoraSpec, "alpha"),
}
_TINY_FLAGS = {
    "vocab-size": (TinyModelSpec, "vocab_size"),
    "seed-tokens": (TinyModelSpec, "seed_tokens"),
    "hidden-size": (TinyModelSpec, "hidden_size"),
    "layers": (TinyModelSpec, "layers"),
    "heads": (TinyModelSpec, "heads"),
}


def _add_model_flags(p: argparse.ArgumentParser, flags: dict[str, tuple[type, str]]) -> None:
    from typing import get_args

    for flag, (model, name) in flags.items():
        info = model.model_fields[name]
        choices = get_args(info.annotation) or None
        kind = None if choices else info.annotation
        p.add_argument(
            f"--{flag}",
            dest=flag.replace("-", "_"),
            type=kind,
            choices=choices,
            default=None,
            help=f"{info.description} (default: {info.default})",
        )


def _model_from_flags(
    args: argparse.Namespace, flags: dict[str, tuple[type, str]], model: type
) -> dict[str, Any]:
    return {
        name: getattr(args, flag.replace("-", "_"))
        for flag, (m, name) in flags.items()
        if m is model and getattr(args, flag.replace("-", "_")) is not None
    }


def _recipe(args: argparse.Namespace) -> Recipe:
    fields = _model_from_flags(args, _RECIPE_FLAGS, Recipe)
    lora = _model_from_flags(args, _RECIPE_FLAGS, LoraSpec)
    if lora:
        fields["lora"] = LoraSpec(**lora)
    return Recipe(**fields)


# ---------------------------------------------------------------------- commands
def cmd_pool_init(args: argparse.Namespace) -> int:
    from pool import Pool

    tiny_fields = _model_from_flags(args, _TINY_FLAGS, TinyModelSpec)
    tiny = TinyModelSpec(**tiny_fields) if args.base == "tiny" else None
    if args.base != "tiny" and tiny_fields:
        raise _usage(
            "--vocab-size/--seed-tokens/--hidden-size/--layers/--heads apply only to --base tiny"
        )
    pool = Pool.create(
        args.pool,
        base=args.base,
        seed_data=args.seed_data,
        recipe=_recipe(args),
        tiny=tiny,
        text_field=args.text_field,
        progress=not args.quiet,
        device=args.device,
    )
    print(
        f"created pool {pool.path} (base {pool.manifest.base}, method {pool.manifest.recipe.method})"
    )
    return 0


def cmd_pool_add(args: argparse.Namespace) -> int:
    from pool import Pool

    pool = Pool.open(args.pool)
    added = pool.add(
        args.files,
        by=args.partition_by,
        by_folder=args.by_folder,
        units=args.units,
        name=args.name,
        text_field=args.text_field,
        progress=not args.quiet,
    )
    parts = pool.partitions
    for name in added:
        idx = parts[name].index
        print(f"added {name}: {idx.n_docs} docs, {idx.n_tokens} tokens, {len(idx.units)} unit(s)")
    if not added:
        print("nothing new: every partition is already in the pool with the same data")
    print(f"{len(pool.missing())} member(s) to train: run `ablate pool grow {args.pool}`")
    return 0


def cmd_pool_grow(args: argparse.Namespace) -> int:
    from pool import Pool

    pool = Pool.open(args.pool)
    if args.backend == "ray":
        from ablate.distributed import grow_with_ray

        trained = grow_with_ray(
            pool,
            only=args.only,
            address=args.address,
            gpus_per_member=args.gpus_per_member,
            progress=not args.quiet,
        )
    else:
        from ablate.distributed import torchrun_group

        with torchrun_group(args.device) as main_rank:  # a no-op unless started by torchrun
            trained = pool.grow(args.only, progress=not args.quiet, device=args.device)
        if not main_rank:
            return 0  # rank 0 reports
    for rec in trained:
        print(
            f"trained {rec.member_id}: loss {rec.final_loss:.4f}, {rec.tokens_seen} tokens, {rec.wall_time_s:.1f}s"
        )
    left = pool.missing(args.only)
    print(f"{len(trained)} member(s) trained; {len(pool.members)} in the pool; {len(left)} missing")
    return 0 if not left else 1


def cmd_pool_ls(args: argparse.Namespace) -> int:
    from pool import Pool

    pool = Pool.open(args.pool)
    done = {(m.partition, m.unit): m for m in pool.members}
    rows = []
    for name, part in pool.partitions.items():
        for u in range(len(part.index.units)):
            m = done.get((name, u))
            rows.append(
                {
                    "partition": name,
                    "unit": u,
                    "docs": part.index.units[u][1] - part.index.units[u][0],
                    "trained": m is not None,
                    "final_loss": None if m is None else m.final_loss,
                    "tokens_seen": None if m is None else m.tokens_seen,
                    "wall_time_s": None if m is None else m.wall_time_s,
                }
            )
    if args.json:
        out = {
            "pool": str(pool.path),
            "base": pool.manifest.base,
            "method": pool.manifest.recipe.method,
            "recipe": pool.manifest.recipe.model_dump(mode="json"),
            "members": rows,
        }
        print(json.dumps(out, indent=2))
        return 0
    m = pool.manifest
    print(
        f"pool {pool.path}: base {m.base}, method {m.recipe.method}, {m.recipe.unit_tokens} tokens/unit"
    )
    print(f"{'partition':<24} {'unit':>4} {'docs':>6} {'status':>8} {'loss':>8} {'time':>8}")
    for r in rows:
        status = "trained" if r["trained"] else "missing"
        loss = f"{r['final_loss']:.4f}" if r["trained"] else "-"
        t = f"{r['wall_time_s']:.1f}s" if r["trained"] else "-"
        print(f"{r['partition']:<24} {r['unit']:>4} {r['docs']:>6} {status:>8} {loss:>8} {t:>8}")
    return 0


def cmd_pool_verify(args: argparse.Namespace) -> int:
    from pool import Pool

    pool = Pool.open(args.pool)
    report = pool.verify()
    for item in report.corrupt:
        print(f"CORRUPT  {item}")
    for item in report.missing:
        print(f"MISSING  {item}")
    print(
        f"checked {report.checked} item(s): {len(report.corrupt)} corrupt, {len(report.missing)} missing"
    )
    if report.corrupt:
        print("fix: delete the corrupt member folders and run `ablate pool grow`", file=sys.stderr)
    return 0 if report.ok else 1


def _mixtures_from_args(args: argparse.Namespace, ev: Any) -> list:
    from ablate.mixture import Mixture

    if args.all_subsets:
        return ev.all_subsets(args.max_size)
    specs = [Mixture.parse(s) for s in (args.mixture or [])] + [
        Mixture.parse(s) for s in (args.weights or [])
    ]
    if not specs:
        raise _usage("say what to score: --mixture a,b, --weights a=0.25,b=0.75 or --all-subsets")
    return specs


def cmd_eval(args: argparse.Namespace) -> int:
    ev = _evaluator(args, ray=args.backend == "ray")
    mixtures = _mixtures_from_args(args, ev)
    results = ev.run_many(mixtures)
    if args.json:
        print(json.dumps([row for r in results for row in r.rows()], indent=1))
        return 0
    ranked = sorted(results, key=lambda r: r.macro_ppl)
    domains = list(ev.domains)
    head = f"{'rank':>4}  {'mixture':<40} " + " ".join(f"{d[:12]:>12}" for d in domains)
    head += f" {'macro ppl':>10} {'macro bpb':>10}" if len(domains) > 1 else f" {'bpb':>10}"
    print(head)
    for i, r in enumerate(ranked, 1):
        line = f"{i:>4}  {str(r.mixture)[:40]:<40} " + " ".join(
            f"{r.ppl[d]:>12.3f}" for d in domains
        )
        line += (
            f" {r.macro_ppl:>10.3f} {r.macro_bpb:>10.4f}"
            if len(domains) > 1
            else f" {r.macro_bpb:>10.4f}"
        )
        print(line)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ablate.mixture import Mixture
    from ablate.validation import validate

    try:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    except ValueError:
        raise _usage(
            f"--sizes takes comma-separated integers like 2,3,4, got {args.sizes!r}"
        ) from None
    _check_out_folder(args.out, "--out")
    mixtures = [Mixture.parse(s) for s in args.mixture] if args.mixture else None
    ev = _evaluator(args)
    report = validate(
        ev,
        mixtures=mixtures,
        sample=args.sample,
        sizes=sizes,
        seed=args.seed,
        bootstrap=args.bootstrap,
    )
    files = report.write(args.out)
    if args.json:
        print(
            json.dumps({"correlations": report.json_rows(), "mixtures": report.mixtures}, indent=1)
        )
        return 0
    print(f"{report.mixtures} mixture(s) validated ({report.trained} trained now, the rest reused)")
    print(report.summary())
    print(f"report: {files.markdown}\nscatter: {files.scatter}\npairs: {files.csv}")
    return 0


def _evaluator(args: argparse.Namespace, *, ray: bool = False):
    """The evaluator for ``_add_eval_args``'s arguments: local, or Ray actors when ``ray``."""
    common = dict(
        by=args.eval_by, text_field=args.text_field, device=args.device, progress=not args.quiet
    )
    if ray:
        from ablate.distributed import RayEvaluator

        return RayEvaluator(
            args.pool, args.eval_data, workers=args.workers, address=args.address, **common
        )
    from ablate.evaluator import Evaluator

    return Evaluator(args.pool, args.eval_data, **common)


def cmd_search(args: argparse.Namespace) -> int:
    from ablate.search import search

    if args.plot:
        _check_figure_path(args.plot, "--plot")
    ev = _evaluator(args)
    study = search(
        ev,
        target=args.target,
        strategy=args.strategy,
        budget=args.budget,
        max_size=args.max_size,
        require=args.require or (),
        exclude=args.exclude or (),
        continuous=args.continuous,
        storage=args.storage,
        study_name=args.study_name,
        heldout=args.heldout,
        seed=args.seed,
    )
    if args.plot:
        study.plot(args.plot)
    if args.json:
        print(json.dumps(study.to_json(), indent=1))
        return 0
    frame, domains = study.frame, list(study.domains)
    print(
        f"{'rank':>4}  {'mixture':<40} {'score':>10} " + " ".join(f"{d[:12]:>12}" for d in domains)
    )
    for rank, row in frame.head(args.top).iterrows():
        cells = " ".join(f"{row[f'ppl:{d}']:>12.3f}" for d in domains)
        print(f"{rank:>4}  {row['mixture'][:40]:<40} {row['score']:>10.3f} {cells}")
    b = study.best
    if b is not None:
        held = "" if b.heldout_score is None else f", held-out {b.heldout_score:.3f}"
        print(f"best ({args.target}): {b.mixture}  score {b.score:.3f}{held}")
    print(f"{study.evaluations} mixture(s) evaluated by {study.strategy}")
    for note in study.notes:
        print(f"note: {note}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ablate.demo import run_demo

    run_demo(args.out, quick=args.quick, progress=not args.quiet, device=args.device)
    return 0


# ---------------------------------------------------------------------- parser
def _usage(msg: str) -> Exception:
    from pool.errors import AblateError

    return AblateError(msg)


# Output paths are checked before any work, so a typo fails in a second, not after an hour.
def _check_out_folder(path: str, flag: str) -> None:
    """``path`` must be a folder or creatable as one: nothing on the way may be a file."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is an existing file" if q == p else f"is inside {q}, which is a file"
                raise _usage(f"{flag} {path} {what}; name a folder (new or existing) instead")
            return


def _check_figure_path(path: str, flag: str) -> None:
    """``path`` must name a file in an existing folder, with a suffix matplotlib can write."""
    from ablate.report import figure_formats

    p = Path(path)
    fmt = p.suffix[1:].lower()
    formats = figure_formats()
    if fmt and fmt not in formats:
        raise _usage(
            f"{flag} {path}: cannot write a {p.suffix} image; "
            f"end the name with one of {', '.join('.' + f for f in sorted(formats))}"
        )
    if p.is_dir():
        raise _usage(f"{flag} {path} is a folder; name an image file such as {p / 'search.png'}")
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise _usage(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not parent.exists():
        raise _usage(
            f"{flag} {path}: folder {parent} does not exist; create it (mkdir -p {parent}) "
            "or choose another path"
        )


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    """The pool and eval-set arguments shared by eval, search and validate."""
    p.add_argument("pool")
    p.add_argument(
        "--eval-data", nargs="+", required=True, help="eval files (same formats as corpora)"
    )
    p.add_argument(
        "--eval-by", default=None, metavar="FIELD", help="metadata field naming each doc's domain"
    )
    p.add_argument("--text-field", default="text")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--device",
        default=None,
        choices=("cpu", "cuda"),
        help="cpu or cuda (default: cuda when available)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pool = sub.add_parser("pool", help="build and grow the model pool").add_subparsers(
        dest="pool_command", required=True, metavar="POOL_COMMAND"
    )
    p = pool.add_parser("init", help="start a pool from a seed model ('tiny' or a local HF folder)")
    p.add_argument("pool", help="pool folder to create")
    p.add_argument(
        "--base",
        default="tiny",
        help="'tiny' (train a small seed) or a local Hugging Face model folder",
    )
    p.add_argument("--seed-data", nargs="+", help="corpus for the tiny tokenizer and seed model")
    p.add_argument("--text-field", default="text", help="field that holds the text (default: text)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_model_flags(p, _RECIPE_FLAGS)
    _add_model_flags(p, _TINY_FLAGS)
    p.set_defaults(func=cmd_pool_init)

    p = pool.add_parser("add", help="tokenize new data partitions into the pool")
    p.add_argument("pool")
    p.add_argument(
        "files", nargs="+", help="JSONL/Parquet files, text folders or save_to_disk datasets"
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--partition-by", metavar="FIELD", help="partition by a metadata field")
    mode.add_argument(
        "--by-folder", action="store_true", help="partition by first-level folder name"
    )
    mode.add_argument(
        "--units", type=int, metavar="K", help="deal documents at random into K partitions"
    )
    mode.add_argument("--name", help="add all documents as one partition with this name")
    p.add_argument("--text-field", default="text")
    p.set_defaults(func=cmd_pool_add)

    p = pool.add_parser(
        "grow", help="train every member that is missing (resumes after an interrupt)"
    )
    p.add_argument("pool")
    p.add_argument("--only", nargs="+", metavar="NAME", help="train only these partitions")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="train here or on a Ray cluster",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: start a local one)"
    )
    p.add_argument("--gpus-per-member", type=float, default=0.0, help="GPU share per Ray task")
    p.set_defaults(func=cmd_pool_grow)

    p = pool.add_parser("ls", help="list partitions and members")
    p.add_argument("pool")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pool_ls)

    p = pool.add_parser(
        "verify", help="re-hash every member and name any that is corrupt or missing"
    )
    p.add_argument("pool")
    p.set_defaults(func=cmd_pool_verify)

    p = sub.add_parser("eval", help="score mixtures by merging pool members")
    _add_eval_args(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--mixture", action="append", metavar="A,B,C", help="uniform subset (repeatable)"
    )
    what.add_argument(
        "--weights", action="append", metavar="A=W,B=W", help="weighted mixture (repeatable)"
    )
    what.add_argument("--all-subsets", action="store_true", help="every subset of partitions")
    p.add_argument("--max-size", type=int, default=None, help="largest subset with --all-subsets")
    p.add_argument(
        "--backend", choices=("local", "ray"), default="local", help="score here or on Ray actors"
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: start a local one)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="Ray actors, each holding the stacked pool (default: 2)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "validate", help="really train models on mixtures; correlate proxy and real perplexity"
    )
    _add_eval_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--sample", type=int, default=None, metavar="N", help="validate N random uniform subsets"
    )
    what.add_argument(
        "--mixture",
        action="append",
        metavar="A,B",
        help="a mixture to validate: a,b or a=1,b=3 (repeatable)",
    )
    p.add_argument(
        "--sizes", default="2,3,4", help="subset sizes to sample with --sample (default: 2,3,4)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the sample and the bootstrap (default: 0)"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples of eval documents (default: 1000)",
    )
    p.add_argument(
        "--out",
        default="ablate-validation",
        help="folder for validation.csv, report.md, scatter.png",
    )
    p.set_defaults(func=cmd_validate)

    from ablate.search import STRATEGIES

    p = sub.add_parser(
        "search", help="search mixtures for the one that minimises a target perplexity"
    )
    _add_eval_args(p)
    p.add_argument(
        "--target",
        default="macro",
        help="macro (default), DOMAIN[,DOMAIN...] or weighted:DOMAIN=W,...",
    )
    p.add_argument(
        "--strategy",
        default="tpe",
        choices=sorted(STRATEGIES),
        help="; ".join(f"{k}: {v.summary}" for k, v in sorted(STRATEGIES.items())),
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="most mixtures to evaluate (default: 50; exhaustive: all)",
    )
    p.add_argument("--max-size", type=int, default=None, help="most partitions per mixture")
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
        help="Optuna study name (default: derived from pool, eval data, target)",
    )
    p.add_argument(
        "--heldout",
        type=float,
        default=None,
        metavar="F",
        help="eval docs kept out of the search (default: 0.25 if enough)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=10, help="rows of the ranked table to print")
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="write the search plot here (.png, .svg, .pdf, ... by suffix; the folder must exist)",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("demo", help="the whole loop on Python's own standard library (no download)")
    p.add_argument(
        "--out", default="ablate-demo", help="folder for the pool, report.md and heatmap.png"
    )
    p.add_argument("--quick", action="store_true", help="smaller settings (tests, a first look)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    from pool.errors import AblateError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # ours are enough; HF's shard bars are noise here
    except ImportError:
        pass
    try:
        return args.func(args)
    except AblateError as e:
        print(f"ablate: error: {e}", file=sys.stderr)
        return EXIT_USER
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "value"
        print(f"ablate: error: invalid {field.replace('_', '-')}: {first['msg']}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print(
            "ablate: interrupted; finished work is saved - run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except OSError as e:
        fix = _DISK_FIXES.get(e.errno)
        if fix is None:  # not the machine's state: a bug, keep the traceback
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"ablate: error: {e.strerror}{where}; {fix} - finished work is kept", file=sys.stderr)
        return EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
