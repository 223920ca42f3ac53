"""What every ``ablate`` command shares: argument helpers, output formats, errors, exit codes.

Help text is written once, here, for every option that more than one command takes
(``--device``, ``--text-field``, ``--json``/``--csv``, the Ray backend options, ``--seed``,
``--out``, ``--max-size``), so the same option means the same thing, with the same choices,
everywhere.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import json
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.engine.merges import POOL_MERGES
from ablate.evaluator import Evaluator
from ablate.pool.errors import AblateError
from ablate.pool.storage import PROXY_LEVELS
from ablate.present.heatmap import figure_formats
from ablate.present.tables import format_csv, format_table
from ablate.racing.policy import DEFAULT_CONFIDENCE
from ablate.version import __version__

if TYPE_CHECKING:
    from ablate.engine.levels import LevelShift

EXIT_OK = 0
EXIT_USER = 2
EXIT_INTERRUPTED = 130
# The reader of our output went away (`ablate pool ls POOL | head`): stop quietly with the
# status a process killed by SIGPIPE has in a shell, 128 + 13, as coreutils tools do.
EXIT_BROKEN_PIPE = 141

DEVICES = ("cpu", "cuda")  # what every --device accepts

# OS errors that describe the machine, not a bug: one line and how to fix it, no traceback.
# Writes are atomic (pool.atomic), so whatever was written before the failure is intact.
DISK_FIXES = {
    errno.ENOSPC: "free some disk space and run the same command again",
    errno.EDQUOT: "free some space within your disk quota and run the same command again",
    errno.EROFS: "the filesystem is read-only; use a writable location",
    errno.EACCES: "check the permissions of that path",
    errno.EPERM: "check the permissions of that path",
    errno.EIO: "the disk reported an I/O error; check it (e.g. `ablate pool verify`)",
}


def version() -> str:
    """The installed ablate's version (``ablate.__version__``)."""
    return __version__


def usage_error(msg: str) -> Exception:
    """An error the user caused: ``main`` prints it as one line and exits with status 2."""
    return AblateError(msg)


# ---------------------------------------------------------------------- parsers
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and example epilogs keep their line breaks; option help is wrapped."""


def add_command(
    sub: Any, name: str, doc: Callable[[argparse.Namespace], int] | str
) -> argparse.ArgumentParser:
    """A subcommand described by a docstring: ``doc``'s, when it is the command function to
    run, or ``doc`` itself (a group of subcommands runs nothing of its own).

    The docstring's first line is the one-line help; the paragraphs after it, line breaks
    kept, the description; the shell lines under ``Examples:`` (as in docs/cli.md's
    reference) the examples epilog.
    """
    text = inspect.cleandoc(doc) if isinstance(doc, str) else inspect.getdoc(doc) or ""
    summary, _, rest = text.partition("\n")
    description, _, examples = rest.partition("Examples:\n")
    p = sub.add_parser(
        name,
        help=summary,
        description=description.strip(),
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=HelpFormatter,
    )
    if callable(doc):
        p.set_defaults(func=doc)
    return p


def add_pool_arg(p: argparse.ArgumentParser, help: str = "pool folder") -> None:
    p.add_argument("pool", metavar="POOL", help=help)


def add_device_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--device",
        default=None,
        choices=DEVICES,
        help=f"where to {what}: cpu or cuda (default: cuda when available)",
    )


def add_text_field_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--text-field",
        default="text",
        metavar="FIELD",
        help="field of each record that holds the text (default: text)",
    )


def add_output_args(p: argparse.ArgumentParser, *, json_help: str) -> None:
    """``--json`` and ``--csv``: machine-readable output instead of the table (one of them)."""
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help=json_help)
    out.add_argument(
        "--csv", action="store_true", help="print the table as CSV (full names, full precision)"
    )


def add_backend_args(p: argparse.ArgumentParser, *, local: str, ray: str) -> None:
    """``--backend local|ray`` and the Ray ``--address``; ``local`` and ``ray`` say what each
    backend does (``"train"``, ``"one member per Ray task"``)."""
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help=f"{local} here (local) or {ray} (ray) (default: local)",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="Ray cluster address, e.g. HEAD:6379 (default: RAY_ADDRESS, else start a local one)",
    )


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """The evaluation backend, as ``eval``, ``search`` and ``validate`` all take it."""
    add_backend_args(p, local="score mixtures", ray="on Ray actors")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="K",
        help="Ray actors, each holding the stacked pool (--backend ray; default: 2)",
    )
    add_gpus_arg(p, "worker", "Ray actor; 0 keeps actors on CPU")


def add_gpus_arg(p: argparse.ArgumentParser, unit: str, per: str) -> None:
    """``--gpus-per-UNIT G``: the Ray GPU resource each ``per`` (actor, task) asks for."""
    p.add_argument(
        f"--gpus-per-{unit}",
        type=float,
        default=0.0,
        metavar="G",
        help=f"GPUs (or a fraction) per {per} (default: 0)",
    )


def add_seed_arg(p: argparse.ArgumentParser, *, of: str) -> None:
    """``--seed S`` (default 0): the seed ``of`` what, as in "seed of the strategy"."""
    p.add_argument("--seed", type=int, default=0, metavar="S", help=f"seed of {of} (default: 0)")


def add_out_arg(p: argparse.ArgumentParser, *, default: str, holds: str) -> None:
    """``--out DIR``: the folder a command writes ``holds`` into (checked before any work)."""
    p.add_argument(
        "--out", default=default, metavar="DIR", help=f"folder for {holds} (default: {default})"
    )


def add_max_size_arg(p: argparse.ArgumentParser, when: str = "") -> None:
    """``--max-size K``: the most partitions per mixture (default: no limit)."""
    p.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="K",
        help=f"most partitions per mixture{when} (default: all)",
    )


def add_race_args(
    p: argparse.ArgumentParser, target: str = "target", *, top_k: bool = False
) -> None:
    """``--race``, ``--confidence``, ``--margin`` and ``--race-seed``: the racing scoring
    policy (``ablate.racing.policy``; what is bounded: docs/racing.md)."""
    p.add_argument(
        "--race",
        action="store_true",
        help=f"stop scoring a mixture once part of the eval set proves its {target} worse "
        "than a kept mixture's; survivors are scored in full (every printed score is a "
        "full score)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=None,
        metavar="P",
        help="with --race: probability that the returned mixture is within --margin of the "
        "best raced mixture on the whole eval set raced"
        + (
            " (with --top K: that each of the K best is kept or K kept mixtures are within "
            "--margin of it, all at once)"
            if top_k
            else " (the search split)"
        )
        + " (default: 0.95)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        metavar="EPS",
        help="with --race: relative indifference on the target, e.g. 0.005 = 0.5%%; a "
        "mixture may be dropped once a kept one is proven within EPS of it (default: 0)",
    )
    p.add_argument(
        "--race-seed",
        type=int,
        default=None,
        metavar="N",
        help="with --race: seed of the eval-unit order (default: a fresh one, printed)",
    )


def race_confidence(args: argparse.Namespace) -> float:
    """``--confidence`` (default 0.95); refused without ``--race``, where it would do nothing."""
    for flag, value in (("--confidence", args.confidence), ("--margin", args.margin)):
        if value is not None and not args.race:
            raise usage_error(f"{flag} applies to racing; add --race or drop {flag}")
    if args.race_seed is not None and not args.race:
        raise usage_error("--race-seed applies to racing; add --race or drop --race-seed")
    return DEFAULT_CONFIDENCE if args.confidence is None else args.confidence


def race_margin(args: argparse.Namespace) -> float:
    """``--margin`` (default 0), checked with ``race_confidence``."""
    return 0.0 if args.margin is None else args.margin


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """The pool, eval-set, device and backend arguments shared by eval, search and validate."""
    add_pool_arg(p, "pool folder (made by `ablate pool init`)")
    p.add_argument(
        "--eval-data",
        nargs="+",
        required=True,
        metavar="FILE",
        help="eval files (JSONL, Parquet, text folders, as for `pool add`)",
    )
    p.add_argument(
        "--eval-by",
        default=None,
        metavar="FIELD",
        help="metadata field naming each eval doc's domain (default: all docs are one domain)",
    )
    add_text_field_arg(p)
    p.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="FILE",
        help="multiple-choice task (JSONL: context, choices, gold) scored with every mixture; "
        "NAME=FILE names it (default name: the file's stem) (repeatable)",
    )
    p.add_argument(
        "--merge",
        choices=POOL_MERGES,
        default=None,
        help="how a mixture's members become one model: average (weighted average), fisher "
        "(Fisher-weighted, Matena & Raffel; run `ablate pool fisher` first) "
        "fisher_tensor (the same with each member's Fisher scaled to mean 1 per tensor), "
        "fisher_damped (that plus 1: half of every weight is the average's) "
        "or regmean (each linear layer fitted to every member's outputs on its own inputs, "
        "Jin et al.; run `ablate pool gram` first) "
        "(default: the pool's, which `ablate pool ls` shows: fisher_damped for pools whose "
        "members start from the seed's second moments, else average)",
    )
    p.add_argument(
        "--proxy-level",
        choices=PROXY_LEVELS,
        default=None,
        help="how each eval domain's proxy perplexity is read: none (as scored) or "
        "specialisation (lowered where the domain's best partition gains most over the seed, "
        "which the merged proxies overstate; scores the seed and each partition once per "
        "eval set) (default: the pool's, which `ablate pool ls` shows: specialisation for "
        "full-weight pools whose members start from the seed's second moments, else none)",
    )
    add_device_arg(p, "score")
    add_ray_args(p)


def evaluator(args: argparse.Namespace):
    """The ``Evaluator`` for ``add_eval_args``'s arguments; use it as a context manager."""
    return Evaluator(
        args.pool,
        args.eval_data,
        by=args.eval_by,
        text_field=args.text_field,
        device=args.device,
        progress=not args.quiet,
        executor=args.backend,
        workers=args.workers,
        address=args.address,
        gpus_per_worker=args.gpus_per_worker,
        tasks=args.task or (),
        merge=args.merge,
        proxy_level=args.proxy_level,
    )


# ---------------------------------------------------------------------- output
def level_line(shift: LevelShift | None) -> str | None:
    """The line that says how the proxy level read the scores above (None at ``none``)."""
    return None if shift is None else f"{shift.describe()} (--proxy-level none: as scored)"


def emit_json(doc: Any) -> None:
    print(json.dumps(doc, indent=1))


def emit_table(
    args: argparse.Namespace, rows: Sequence[Mapping[str, Any]], columns: Sequence[Any]
) -> None:
    """``rows`` as CSV with ``--csv``, else as an aligned table (``ablate.present.tables``)."""
    if getattr(args, "csv", False):
        sys.stdout.write(format_csv(rows, columns))
    else:
        print(format_table(rows, columns))


# ---------------------------------------------------------------------- paths
# Output paths are checked before any work, so a typo fails in a second, not after an hour.
def check_out_folder(path: str, flag: str) -> None:
    """``path`` must be a folder or creatable as one: nothing on the way may be a file."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is an existing file" if q == p else f"is inside {q}, which is a file"
                raise usage_error(f"{flag} {path} {what}; name a folder (new or existing) instead")
            return


def check_figure_path(path: str, flag: str) -> None:
    """``path`` must name a file in an existing folder, with a suffix matplotlib can write."""
    p = Path(path)
    fmt = p.suffix[1:].lower()
    formats = figure_formats()
    if fmt and fmt not in formats:
        raise usage_error(
            f"{flag} {path}: cannot write a {p.suffix} image; "
            f"end the name with one of {', '.join('.' + f for f in sorted(formats))}"
        )
    if p.is_dir():
        raise usage_error(
            f"{flag} {path} is a folder; name an image file such as {p / 'search.png'}"
        )
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise usage_error(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not parent.exists():
        raise usage_error(
            f"{flag} {path}: folder {parent} does not exist; create it (mkdir -p {parent}) "
            "or choose another path"
        )
