"""``ablate demo``: the whole loop on Python's own standard library, with no download."""

from __future__ import annotations

import argparse
from typing import Any

from ablate.cli.common import add_command, add_device_arg, add_out_arg
from ablate.demo import run_demo


def cmd_demo(args: argparse.Namespace) -> int:
    """the whole loop on Python's own standard library (no download)

    Build a pool on the running interpreter's standard library (a few packages and
    the help topics' prose), score every subset, write report.md and heatmap.png, and
    really train a few mixtures to check the proxy. Reruns reuse everything built.

    Examples:
        ablate demo --out ablate-demo
        ablate demo --quick
    """
    run_demo(args.out, quick=args.quick, progress=not args.quiet, device=args.device)
    return 0


def add_demo_command(sub: Any) -> None:
    p = add_command(sub, "demo", cmd_demo)
    add_out_arg(p, default="ablate-demo", holds="the pool, report.md and heatmap.png")
    p.add_argument("--quick", action="store_true", help="smaller settings (tests, a first look)")
    add_device_arg(p, "train and score")
