"""The ablate command line: build a pool, score mixtures, search them, check the proxy.

Each command parses, validates, calls one public function, prints (a table for people,
``--json`` or ``--csv`` for machines) and returns an exit code. Errors the user caused print
one line and exit 2; an interrupt exits 130 and says how to resume; a reader that stops
early (``ablate pool ls POOL | head``) ends the command quietly with status 141, as it
would any coreutils tool. The commands live one group per module: ``pool``, ``evaluate``
(``ablate eval``), ``search``, ``fit``, ``validate``, ``demo``; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from ablate.cli.common import (
    DISK_FIXES,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_USER,
    HelpFormatter,
    version,
)
from ablate.cli.demo import add_demo_command
from ablate.cli.evaluate import add_eval_command
from ablate.cli.export import add_export_command
from ablate.cli.fit import add_fit_command
from ablate.cli.pool import add_pool_commands
from ablate.cli.search import add_search_command
from ablate.cli.validate import add_validate_command
from ablate.pool.errors import AblateError

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
ablate: a data-ablation simulator for language models. Train one model per data
partition (the pool), merge any mixture of them by parameter averaging, and score the
merge's perplexity instead of training a model on every mixture.
`ablate COMMAND --help` describes each command."""

_EXAMPLES = """\
examples:
  ablate demo --out ablate-demo                                  # no download needed
  ablate pool init runs/pool --base tiny --seed-data seed.jsonl
  ablate pool add  runs/pool corpus.jsonl --partition-by domain
  ablate pool grow runs/pool
  ablate eval runs/pool --eval-data eval.jsonl --eval-by domain --all-subsets
  ablate pool ls runs/pool | head                                # stops quietly (exit 141)"""


def build_parser() -> argparse.ArgumentParser:
    """The ``ablate`` parser: global options and one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="ablate",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-V", "--version", action="version", version=f"ablate {version()}", help="print the version"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    add_pool_commands(sub)
    add_eval_command(sub)
    add_validate_command(sub)
    add_search_command(sub)
    add_fit_command(sub)
    add_export_command(sub)
    add_demo_command(sub)
    return parser


def _quiet_broken_pipe() -> int:
    """The reader closed our stdout: point it at /dev/null so the exit flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. captured in a test)
        pass
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # --help, --version or a usage error: flush now, so a closed pipe is quiet
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _quiet_broken_pipe()
        raise
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # ours are enough; HF's shard bars are noise here
    except ImportError:
        pass
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
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
        fix = DISK_FIXES.get(e.errno)
        if fix is None:  # not the machine's state: a bug, keep the traceback
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"ablate: error: {e.strerror}{where}; {fix} - finished work is kept", file=sys.stderr)
        return EXIT_USER
