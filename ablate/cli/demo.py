"""``ablate demo``: the whole loop on Python's own standard library, with no download."""

from __future__ import annotations

import argparse
from typing import Any

from ablate.cli.common import add_command, add_device_arg


def cmd_demo(args: argparse.Namespace) -> int:
    from ablate.demo import run_demo

    run_demo(args.out, quick=args.quick, progress=not args.quiet, device=args.device)
    return 0


def add_demo_command(sub: Any) -> None:
    p = add_command(
        sub,
        "demo",
        help="the whole loop on Python's own standard library (no download)",
        description=(
            "Build a pool on the running interpreter's standard library (a few packages and\n"
            "the help topics' prose), score every subset, write report.md and heatmap.png, and\n"
            "really train a few mixtures to check the proxy. Reruns reuse everything built."
        ),
        examples="""
ablate demo --out ablate-demo
ablate demo --quick
""",
    )
    p.add_argument(
        "--out",
        default="ablate-demo",
        metavar="DIR",
        help="folder for the pool, report.md and heatmap.png (default: ablate-demo)",
    )
    p.add_argument("--quick", action="store_true", help="smaller settings (tests, a first look)")
    add_device_arg(p, "train and score")
    p.set_defaults(func=cmd_demo)
