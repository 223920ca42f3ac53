"""``ablate export``: write a mixture's merged proxy as a Hugging Face folder."""

from __future__ import annotations

import argparse
from typing import Any

from ablate.cli.common import add_command, add_pool_arg, usage_error
from ablate.export import DTYPES, export
from ablate.mixture import Mixture
from ablate.pool import Pool
from ablate.pool.storage import POOL_MERGES


def cmd_export(args: argparse.Namespace) -> int:
    """write a mixture's merged proxy as a Hugging Face model folder

    Merge the members of one mixture and write the result as a Hugging Face folder
    (config, safetensors weights, tokenizer, generation config) that
    AutoModelForCausalLM.from_pretrained, lm-evaluation-harness or vLLM load with no
    remote code, plus ablate_merge.json (mixture, members and their sha256, seed
    sha256, ablate version). LoRA pools write merged full weights, or with --adapter
    the plain average's exactly merged adapter (peft) beside the seed in base/ (a LoRA
    pool's own merge, Fisher or RegMean, is not low-rank: add --merge average). Written into a
    temporary folder and renamed; an existing folder is refused unless --overwrite.

    Examples:
        ablate export runs/pool --weights code=0.3,wiki=0.7 out/proxy
        ablate export runs/pool --mixture code,wiki out/proxy --dtype bf16 --overwrite
        ablate export runs/lora-pool --weights code=0.3,wiki=0.7 out/adapter --adapter --merge average
    """
    spec = args.weights or args.mixture
    if not spec:
        raise usage_error("say what to export: --weights a=0.3,b=0.7 or --mixture a,b")
    mixture = Mixture.parse(spec)
    # export() refuses an existing folder and unknown partitions before loading anything.
    path = export(
        Pool.open(args.pool),
        mixture,
        args.out,
        dtype=args.dtype,
        adapter=args.adapter,
        overwrite=args.overwrite,
        merge=args.merge,
        progress=not args.quiet,
    )
    what = "merged adapter" if args.adapter else f"merged {args.dtype} weights"
    print(f"exported {mixture} ({what}) to {path}")
    return 0


def add_export_command(sub: Any) -> None:
    p = add_command(sub, "export", cmd_export)
    add_pool_arg(p, "pool folder (made by `ablate pool init`)")
    p.add_argument("out", metavar="OUT", help="new folder for the exported model")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--weights", default=None, metavar="A=W,B=W", help="weighted mixture")
    what.add_argument("--mixture", default=None, metavar="A,B", help="uniform subset")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="precision of the written weights (default: fp32)",
    )
    p.add_argument(
        "--adapter",
        action="store_true",
        help="LoRA pools: write the plain average's exactly merged adapter (peft) and the "
        "seed in base/ instead of merged full weights (with --merge average on a pool that "
        "merges otherwise, as new LoRA pools do: fisher)",
    )
    p.add_argument(
        "--merge",
        choices=POOL_MERGES,
        default=None,
        help="how the members merge (default: the pool's, which `ablate pool ls` shows)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
