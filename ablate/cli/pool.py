"""``ablate pool init|add|grow|fisher|gram|ls|verify``: build, grow, list and check a pool of members."""

from __future__ import annotations

import argparse
import sys
from typing import Any, get_args

from ablate.cli.common import (
    add_backend_args,
    add_command,
    add_device_arg,
    add_gpus_arg,
    add_output_args,
    add_pool_arg,
    add_text_field_arg,
    emit_json,
    emit_table,
    usage_error,
    version,
)
from ablate.pool import Pool, grow_with_ray, torchrun_group
from ablate.pool.cluster import ClusterOn, add_clustered, summary
from ablate.pool.fisher import DEFAULT_BATCHES
from ablate.pool.gram import DEFAULT_BATCHES as GRAM_BATCHES
from ablate.pool.method import new_pool_recipe
from ablate.pool.prepare import prepare_merge
from ablate.pool.recipe import LoraSpec, Recipe, TinyModelSpec
from ablate.pool.storage import PoolManifest
from ablate.present.tables import Column


def _flags(model: type, *fields: str, prefix: str = "") -> dict[str, tuple[type, str]]:
    """CLI flag -> (model, field), the flag spelt ``PREFIX-FIELD-NAME``."""
    return {prefix + name.replace("_", "-"): (model, name) for name in fields}


# Help text and choices come from the field, defined once.
RECIPE_FLAGS = {
    **_flags(Recipe, "method", "unit_tokens", "seq_len", "batch_size", "lr", "seed"),
    **_flags(
        Recipe,
        "member_seed_share",
        "member_schedule",
        "member_lr",
        "member_preconditioner",
        "member_order_seed",
    ),
    **_flags(LoraSpec, "rank", "alpha", prefix="lora-"),
}
MANIFEST_FLAGS = _flags(PoolManifest, "merge", "proxy_level")
TINY_FLAGS = _flags(TinyModelSpec, "vocab_size", "seed_tokens", "hidden_size", "layers", "heads")
_NAME_WIDTH = 32  # partition names longer than this end in an ellipsis in the table
_TERMS_WIDTH = 40  # a cluster's top terms, cut to this width in the table
_REUSE = 0  # a bare --clusters (K is at least 1): assign to the clusters the pool already has


def _cluster_count(text: str) -> int:
    """``--clusters K``: a whole number >= 1."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of clusters, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1 cluster, got {k}")
    return k


# Defaults that depend on other flags, as --help states them.
_DEFAULT_HELP = {
    "member_preconditioner": "seed with --seed-data and --method full, else fresh",
    "member_order_seed": "--seed",
    "merge": (
        "fisher_damped where members start from the seed's second moments, fisher for "
        "--method lora, else average"
    ),
    "proxy_level": "specialisation where full-weight members start from the seed's second "
    "moments, else none",
}


def _add_model_flags(p: argparse.ArgumentParser, flags: dict[str, tuple[type, str]]) -> None:
    for flag, (model, name) in flags.items():
        info = model.model_fields[name]
        annotation = info.annotation
        if type(None) in get_args(annotation):  # an optional field: its flag takes the type
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        choices = get_args(annotation) or None
        kind = None if choices else annotation
        p.add_argument(
            f"--{flag}",
            dest=flag.replace("-", "_"),
            type=kind,
            choices=choices,
            default=None,
            help=f"{info.description} (default: {_DEFAULT_HELP.get(name, info.default)})",
        )


def _model_from_flags(
    args: argparse.Namespace, flags: dict[str, tuple[type, str]], model: type
) -> dict[str, Any]:
    return {
        name: getattr(args, flag.replace("-", "_"))
        for flag, (m, name) in flags.items()
        if m is model and getattr(args, flag.replace("-", "_")) is not None
    }


def _names(text: str) -> tuple[str, ...]:
    """``a,b`` -> ``("a", "b")``: a comma-separated list of names (``--lora-targets``)."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _recipe(args: argparse.Namespace) -> Recipe:
    fields = _model_from_flags(args, RECIPE_FLAGS, Recipe)
    lora = _model_from_flags(args, RECIPE_FLAGS, LoraSpec)
    if getattr(args, "lora_targets", None):
        lora["target_modules"] = args.lora_targets
    if lora:
        fields["lora"] = LoraSpec(**lora)
    return new_pool_recipe(getattr(args, "seed_data", None), **fields)


# ---------------------------------------------------------------------- commands
def cmd_pool_init(args: argparse.Namespace) -> int:
    """start a pool from a seed model ('tiny' or a local Hugging Face folder)

    Create a pool: train a byte-level BPE tokenizer and a small Llama-style seed
    model (--base tiny), or use a local Hugging Face causal-LM folder. The training
    options are fixed for the pool's lifetime; --merge is the pool's default merge
    and --proxy-level how its proxies' perplexities are read (eval, search and
    validate take --merge and --proxy-level to use others).

    Examples:
        ablate pool init runs/pool --base tiny --seed-data seed.jsonl
        ablate pool init runs/pool --base path/to/hf-model --method lora --lora-rank 16
        ablate pool init runs/pool --base path/to/hf-model --method lora --lora-targets all-linear
        ablate pool init runs/pool --base path/to/pythia --method lora --lora-targets query_key_value,dense
        ablate pool init runs/pool --base tiny --seed-data s.jsonl --member-seed-share 0.5 --member-schedule constant --member-lr 1e-4
    """
    tiny_fields = _model_from_flags(args, TINY_FLAGS, TinyModelSpec)
    tiny = TinyModelSpec(**tiny_fields) if args.base == "tiny" else None
    if args.base != "tiny" and tiny_fields:
        raise usage_error(
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
        merge=args.merge,
        proxy_level=args.proxy_level,
    )
    print(
        f"created pool {pool.path} (base {pool.manifest.base}, method "
        f"{pool.manifest.recipe.method}, merge {pool.merge}, proxy level {pool.proxy_level})"
    )
    return 0


def cmd_pool_add(args: argparse.Namespace) -> int:
    """tokenize new data partitions into the pool

    Read JSONL (.jsonl, .jsonl.gz), Parquet, folders of text files or
    datasets.save_to_disk folders; partition them; tokenize once. Re-adding
    identical data is a no-op.

    --clusters K clusters unlabeled text into partitions c00, c01, ... (hashed
    TF-IDF or the seed model's hidden states, k-means) and stores the clusterer in
    the pool; a later bare --clusters assigns new documents to the same clusters.

    Examples:
        ablate pool add runs/pool corpus.jsonl --partition-by domain
        ablate pool add runs/pool s2orc.jsonl --partition-by field,period
        ablate pool add runs/pool texts/ --by-folder
        ablate pool add runs/pool web.jsonl --clusters 64 --cluster-seed 0
        ablate pool add runs/pool more-web.jsonl --clusters
    """
    pool = Pool.open(args.pool)
    cluster_flags = args.cluster_on is not None or args.cluster_seed is not None
    if cluster_flags and args.clusters is None:
        raise usage_error("--cluster-on and --cluster-seed apply only with --clusters [K]")
    if args.clusters is not None:
        added = add_clustered(
            pool,
            args.files,
            clusters=None if args.clusters == _REUSE else args.clusters,
            on=args.cluster_on,
            seed=args.cluster_seed,
            text_field=args.text_field,
            device=args.device,
            progress=not args.quiet,
        )
    else:
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
    """train every member that is missing (resumes after an interrupt)

    Train every base unit that has no finished member. Interrupted runs resume;
    two runs on one pool never train a member twice. --backend ray trains one
    member per Ray task. Where the pool's merge reads a statistic of each member
    (fisher_damped: its Fisher), it is computed with the member.

    Examples:
        ablate pool grow runs/pool
        ablate pool grow runs/pool --backend ray --address HEAD:6379 --gpus-per-member 1
    """
    pool = Pool.open(args.pool)
    if args.backend == "ray":
        trained = grow_with_ray(
            pool,
            only=args.only,
            address=args.address,
            gpus_per_member=args.gpus_per_member,
            progress=not args.quiet,
        )
    else:
        with torchrun_group(args.device) as main_rank:  # a no-op unless started by torchrun
            trained = pool.grow(args.only, progress=not args.quiet, device=args.device)
        if not main_rank:
            return 0  # rank 0 reports
        # What the pool's merge reads of each member (its Fisher for fisher_damped), on
        # rank 0 once the group is gone; Ray tasks computed it with their members.
        prepare_merge(pool, progress=not args.quiet, device=args.device)
    for rec in trained:
        print(
            f"trained {rec.member_id}: loss {rec.final_loss:.4f}, {rec.tokens_seen} tokens, {rec.wall_time_s:.1f}s"
        )
    left = pool.missing(args.only)
    print(f"{len(trained)} member(s) trained; {len(pool.members)} in the pool; {len(left)} missing")
    return 0 if not left else 1


def ls_columns(clustered: bool = False) -> list:
    """The ``pool ls`` table; a clustered pool adds each cluster's top terms (on its unit 0)."""
    cols = [
        Column("partition", align="<", max_width=_NAME_WIDTH),
        Column("unit"),
        Column("docs"),
        Column("tokens"),
        Column("status", align="<"),
        Column("final_loss", "loss", fmt=".4f"),
        Column("tokens_seen", "seen"),
        Column("wall_time_s", "time s", fmt=".1f"),
    ]
    if clustered:
        cols.append(Column("top_terms", "top terms", align="<", max_width=_TERMS_WIDTH))
    return cols


def cmd_pool_ls(args: argparse.Namespace) -> int:
    """list partitions, units and members

    One row per base unit: its documents and tokens, and its member if trained.

    Examples:
        ablate pool ls runs/pool
        ablate pool ls runs/pool --csv > members.csv
    """
    pool = Pool.open(args.pool)
    rows = pool.status()
    m = pool.manifest
    clusters = summary(pool)
    if args.json:
        doc = {
            "ablate_version": version(),
            "pool": str(pool.path),
            "base": m.base,
            "method": m.recipe.method,
            "merge": m.merge,
            "proxy_level": m.proxy_level,
            "recipe": m.recipe.model_dump(mode="json"),
            "members": rows,
        }
        if clusters is not None:
            doc["clusters"] = clusters
        emit_json(doc)
        return 0
    terms = {} if clusters is None else clusters["top_terms"]
    table = [
        {
            **r,
            "status": "trained" if r["trained"] else "missing",
            "top_terms": " ".join(terms.get(r["partition"], [])) if r["unit"] == 0 else "",
        }
        for r in rows
    ]
    if args.csv:
        emit_table(args, table, ls_columns(clusters is not None))
        return 0
    print(
        f"pool {pool.path}: base {m.base}, method {m.recipe.method}, merge {m.merge}, "
        f"proxy level {m.proxy_level}, {m.recipe.unit_tokens} tokens/unit"
    )
    if clusters is not None:
        print(
            f"clustered: {clusters['k']} clusters on {clusters['on']} (seed {clusters['seed']}, "
            f"fitted on {clusters['sample_docs']} documents)"
        )
    emit_table(args, table, ls_columns(clusters is not None))
    done = sum(r["trained"] for r in rows)
    print(
        f"{len({r['partition'] for r in rows})} partition(s), {len(rows)} unit(s): "
        f"{done} trained, {len(rows) - done} missing"
    )
    return 0


def cmd_pool_verify(args: argparse.Namespace) -> int:
    """re-hash every member and name any that is corrupt or missing

    Re-hash the seed, the token files and every member (and each member's Fisher
    where `pool fisher` wrote one); name anything corrupt or missing (exit status 1).

    Examples:
        ablate pool verify runs/pool
    """
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


def cmd_pool_fisher(args: argparse.Namespace) -> int:
    """compute each member's diagonal Fisher, for --merge fisher (resumes)

    Compute every member's diagonal Fisher information (mean squared gradient of
    its own loss, one gradient per sequence, over --batches batches of the data it
    trained on) and store it beside its weights (fisher.safetensors, fisher.json),
    for `--merge fisher` in eval, search and validate. Members that have one for
    their current weights are skipped, so an interrupted run resumes; nothing
    else in the pool changes. LoRA pools: of the adapted weights as merged
    (seed plus adapter), one gradient pass per member too. A pool whose own merge
    reads it (fisher, fisher_tensor, fisher_damped: `pool ls`) computes it while
    growing: run this for other pools, or to recompute with other --batches.

    Examples:
        ablate pool fisher runs/pool
        ablate pool fisher runs/pool --batches 32 --force
    """
    from ablate.pool.fisher import ensure_fisher

    return _compute_statistic(
        args,
        ensure_fisher,
        lambda r: f"fisher {r.member}: {r.sequences} sequences, mean {r.mean:.3g}",
    )


def cmd_pool_gram(args: argparse.Namespace) -> int:
    """compute each member's input Grams, for --merge regmean (resumes)

    Compute, for every member, the Gram matrix of each linear layer's inputs (the
    mean of x x^T over --batches batches of the data it trained on, forward passes
    only) and its input-embedding token frequencies, and store them beside its
    weights (gram.safetensors, gram.json), for `--merge regmean` in eval, search
    and validate. Members that have them for their current weights are skipped, so
    an interrupted run resumes; nothing else in the pool changes. Full-weight and
    LoRA pools (LoRA: the adapted layers).

    Examples:
        ablate pool gram runs/pool
        ablate pool gram runs/pool --batches 32 --force
    """
    from ablate.pool.gram import ensure_gram

    return _compute_statistic(args, ensure_gram, lambda r: f"gram {r.member}: {r.tokens} tokens")


def _compute_statistic(args: argparse.Namespace, ensure, describe) -> int:
    """``pool fisher`` / ``pool gram``: compute what members lack, one line each, then a count."""
    pool = Pool.open(args.pool)
    done = ensure(
        pool, batches=args.batches, force=args.force, progress=not args.quiet, device=args.device
    )
    for rec in done:
        print(describe(rec))
    print(f"{len(done)} member(s) computed now; {len(pool.members) - len(done)} had it already")
    return 0


# ---------------------------------------------------------------------- parser
POOL_GROUP = """build, grow, list and check the model pool

Build and grow the pool: one trained member per base unit of each partition.
`ablate pool POOL_COMMAND --help` describes each subcommand.

Examples:
    ablate pool init runs/pool --base tiny --seed-data seed.jsonl   # or --base path/to/hf-model
    ablate pool add  runs/pool corpus.jsonl --partition-by domain   # tokenize once, cut into base units
    ablate pool grow runs/pool                                      # train one member per base unit
    ablate pool ls   runs/pool
"""


def add_pool_commands(sub: Any) -> None:
    """``ablate pool ...``: the six pool subcommands."""
    group = add_command(sub, "pool", POOL_GROUP)
    pool = group.add_subparsers(
        dest="pool_command",
        required=True,
        metavar="POOL_COMMAND",
        help="what to do with the pool",
    )

    p = add_command(pool, "init", cmd_pool_init)
    add_pool_arg(p, "pool folder to create")
    p.add_argument(
        "--base",
        default="tiny",
        metavar="BASE",
        help="'tiny' (train a small seed) or a local Hugging Face model folder (default: tiny)",
    )
    p.add_argument(
        "--seed-data",
        nargs="+",
        metavar="FILE",
        help="corpus for the tiny tokenizer and seed model (--base tiny), and the general "
        "data members mix in (--member-seed-share)",
    )
    add_text_field_arg(p)
    add_device_arg(p, "train the seed model")
    _add_model_flags(p, RECIPE_FLAGS)
    _add_model_flags(p, MANIFEST_FLAGS)
    p.add_argument(
        "--lora-targets",
        type=_names,
        metavar="NAMES",
        help=f"{LoraSpec.model_fields['target_modules'].description} Comma-separated.",
    )
    _add_model_flags(p, TINY_FLAGS)

    p = add_command(pool, "add", cmd_pool_add)
    add_pool_arg(p)
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="JSONL/Parquet files, text folders or save_to_disk datasets",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--partition-by",
        metavar="FIELD[,FIELD]",
        help="partition by a metadata field; a,b makes one partition per value pair, named A__B",
    )
    mode.add_argument(
        "--by-folder", action="store_true", help="partition by first-level folder name"
    )
    mode.add_argument(
        "--units", type=int, metavar="K", help="deal documents at random into K partitions"
    )
    mode.add_argument("--name", help="add all documents as one partition with this name")
    mode.add_argument(
        "--clusters",
        type=_cluster_count,
        nargs="?",
        const=_REUSE,
        metavar="K",
        help="cluster into K partitions c00, c01, ...; bare: assign to the pool's clusters",
    )
    p.add_argument(
        "--cluster-on",
        choices=get_args(ClusterOn),
        default=None,
        help="what --clusters clusters: hashed TF-IDF or mean-pooled hidden states of the "
        "seed model (default: tfidf)",
    )
    p.add_argument(
        "--cluster-seed",
        type=int,
        default=None,
        metavar="S",
        help="seed of the sample and k-means start: same seed, same clusters (default: 0)",
    )
    add_text_field_arg(p)
    add_device_arg(p, "embed documents (--cluster-on seed)")

    p = add_command(pool, "grow", cmd_pool_grow)
    add_pool_arg(p)
    p.add_argument("--only", nargs="+", metavar="NAME", help="train only these partitions")
    add_device_arg(p, "train (--backend local)")
    add_backend_args(p, local="train", ray="one member per Ray task")
    add_gpus_arg(p, "member", "Ray task")

    for name, cmd, default, what, device in (
        ("fisher", cmd_pool_fisher, DEFAULT_BATCHES, "a Fisher", "compute the gradients"),
        ("gram", cmd_pool_gram, GRAM_BATCHES, "Grams", "run the forward passes"),
    ):
        p = add_command(pool, name, cmd)
        add_pool_arg(p)
        p.add_argument(
            "--batches",
            type=int,
            default=default,
            metavar="N",
            help=f"batches of the pool's batch size per member (default: {default}; one epoch "
            "of a 30K-token unit at sequence length 128)",
        )
        p.add_argument(
            "--force", action="store_true", help=f"recompute members that have {what} already"
        )
        add_device_arg(p, device)

    p = add_command(pool, "ls", cmd_pool_ls)
    add_pool_arg(p)
    add_output_args(
        p, json_help="print the pool's settings and one record per unit as a JSON object"
    )

    p = add_command(pool, "verify", cmd_pool_verify)
    add_pool_arg(p)
