"""Per-member statistics that a merge reads beside each member's weights.

A curvature-aware merge needs something of each member besides its weights: the diagonal
Fisher (``ablate.pool.fisher``, for ``--merge fisher``) or the Gram matrices of each linear
layer's inputs (``ablate.pool.gram``, for ``--merge regmean``). Each is computed once per
member from the data it trained on and stored in its folder as ``<name>.safetensors`` and
``<name>.json`` (a record written last, naming the weights it belongs to). What they share
lives here once: where the files are, when a record counts (the member's current weights),
the atomic, resumable computation and the one-line refusals. The kinds themselves
(``storage.MemberStatistic``: ``FISHER``, ``GRAM``) are plain records, so that ``pool verify``
can check them without importing how they are computed.
Nothing else in the pool changes, so pools without them keep their behaviour and keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ablate.pool.atomic import write_bytes, write_json
from ablate.pool.errors import CorruptMemberError, PoolError
from ablate.pool.storage import MemberRecord, MemberStatistic, read_record, utc_now
from ablate.pool.weights import load_tensors

if TYPE_CHECKING:
    import torch

    from ablate.pool.pool import Pool

# compute(pool, member, batches=, device=) -> (tensors by name, the record's own fields)
Compute = Callable[..., tuple[dict[str, "torch.Tensor"], dict[str, Any]]]


def stat_paths(pool: Pool, rec: MemberRecord, stat: MemberStatistic) -> tuple[Path, Path]:
    """(tensors, record) of a member's statistic."""
    folder = pool.member_folder(rec.partition, rec.unit)
    return folder / stat.file, folder / stat.record_file


def stat_record(pool: Pool, rec: MemberRecord, stat: MemberStatistic):
    """The member's finished record, or None if it has none for its current weights."""
    _, record = stat_paths(pool, rec, stat)
    if not record.is_file():
        return None
    got = read_record(record, stat.record_cls)
    return got if got.weights_sha256 == rec.weights_sha256 else None


def member_model(
    pool: Pool, rec: MemberRecord, device: torch.device | str
) -> tuple[torch.nn.Module, set[str] | None]:
    """The seed model at the member's effective weights (a LoRA member: seed plus its
    adapter, merged), in eval mode (no dropout: the function a merge scores) on ``device``;
    and the weights the member changes (None: all, a full-weight member). Where its
    statistics are measured.

    Raises:
        CorruptMemberError: its tensors do not fit the seed model's architecture.
    """
    import torch

    saved = load_tensors(pool.weights_path(rec), sha256=rec.weights_sha256)
    adapted = pool.method.adapted_weights(saved)
    state = pool.method.full_state(saved, pool.load_base_model, pool.manifest.recipe)
    model = pool.load_base_model()
    params = dict(model.named_parameters())
    if set(state) != set(params):
        raise CorruptMemberError(
            f"member {rec.member_id} does not have the seed model's architecture; "
            "delete it and run `ablate pool grow`"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])
    return model.to(device).eval(), adapted


def require_stats(pool: Pool, members: Sequence[MemberRecord], stat: MemberStatistic) -> list:
    """Every member's finished record, in order.

    Raises:
        PoolError: a member has none (or one of older weights), naming the command to run.
    """
    out, missing = [], []
    for rec in members:
        got = stat_record(pool, rec, stat)
        if got is None:
            missing.append(rec.member_id)
        else:
            out.append(got)
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise PoolError(
            f"the {stat.merge} merge needs each member's {stat.what}, which {shown} lack(s); "
            f"run {stat.command(pool.path)} first"
        )
    return out


def load_stats(pool: Pool, rec: MemberRecord, stat: MemberStatistic) -> dict[str, torch.Tensor]:
    """A member's statistic by tensor name (fp32, checked against its record).

    Raises:
        PoolError: it has not been computed (or belongs to older weights of the member).
    """
    got = stat_record(pool, rec, stat)
    if got is None:
        raise PoolError(
            f"member {rec.member_id} has no {stat.what} for the {stat.merge} merge; "
            f"run {stat.command(pool.path)} first"
        )
    tensors, _ = stat_paths(pool, rec, stat)
    try:
        out = load_tensors(tensors, sha256=stat.sha(got))
    except CorruptMemberError as e:
        raise PoolError(f"{e}; or rerun {stat.command(pool.path, force=True)}") from None
    # Tensors stored once for several names (``GramRecord.shares``): one tensor, each name.
    for name, source in getattr(got, "shares", {}).items():
        out[name] = out[source]
    return out


def ensure_stats(
    pool: Pool,
    stat: MemberStatistic,
    compute: Compute,
    *,
    batches: int,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    members: Sequence[MemberRecord] | None = None,
) -> list:
    """Compute the statistic of every member (or of ``members``) that lacks one (resumable:
    each member's files are written atomically, its record last); returns the records
    computed now."""
    from safetensors.torch import save

    if batches < 1:
        raise PoolError(f"--batches must be at least 1, got {batches}")
    members = pool.members if members is None else members
    if not members:
        raise PoolError("the pool has no trained members; run `ablate pool grow` first")
    todo = [
        r
        for r in members
        if force or (got := stat_record(pool, r, stat)) is None or got.batches != batches
    ]
    done = []
    for rec in tqdm(todo, desc=stat.name, unit="member", disable=not progress):
        tensors, fields = compute(pool, rec, batches=batches, device=device)
        path, record = stat_paths(pool, rec, stat)
        # The old record goes first: until the new one lands the member has none (an
        # interrupted recompute is redone), never a record of other tensors.
        record.unlink(missing_ok=True)
        data = save(tensors, metadata={"format": "pt"})
        write_bytes(path, data)
        got = stat.record_cls(
            member=rec.member_id,
            weights_sha256=rec.weights_sha256,
            batches=batches,
            seq_len=pool.manifest.recipe.seq_len,
            created_at=utc_now(),
            **{f"{stat.name}_sha256": hashlib.sha256(data).hexdigest()},  # the bytes just written
            **fields,
        )
        write_json(record, got.model_dump(mode="json"))
        done.append(got)
    return done


__all__ = [
    "Compute",
    "ensure_stats",
    "load_stats",
    "member_model",
    "require_stats",
    "stat_paths",
    "stat_record",
]
