"""A pool: one seed model, tokenized partitions, and one trained member per base unit.

Growing is incremental: ``grow`` trains only the units that have no finished member, so the
cost of new data is linear in the new data. Members are written atomically (staged folder,
then rename) and a member's ``member.json`` marks it finished, so an interrupted ``grow``
loses at most the member it was training. A lock file per member keeps two concurrent
``grow`` runs (local or on a cluster) from training the same member twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from ablate.pool import seed as seedlib
from ablate.pool.architectures import check_head
from ablate.pool.atomic import remove_stale_temporaries, sha256_file, staged_dir, write_json
from ablate.pool.corpus import read_documents
from ablate.pool.ensure import SeedModel, Target, ensure_trained
from ablate.pool.errors import CorruptMemberError, DataError, PoolError
from ablate.pool.method import (
    FULL,
    Method,
    method_of,
    new_pool_merge,
    new_pool_proxy_level,
    new_pool_recipe,
)
from ablate.pool.partition import partition_documents
from ablate.pool.preconditioner import (
    load_preconditioner,
    preconditioner_problem,
    write_preconditioner,
)
from ablate.pool.recipe import Recipe, TinyModelSpec
from ablate.pool.storage import (
    MEMBER_STATISTICS,
    MemberRecord,
    MemberStatistic,
    PoolManifest,
    PoolMerge,
    ProxyLevel,
    check_merge,
    check_proxy_level,
    member_id,
    read_record,
    utc_now,
)
from ablate.pool.tokens import (
    TokenizedPartition,
    content_hash,
    encode_documents,
    token_dtype_for,
    write_partition,
)
from ablate.pool.train import (
    broadcast_from_main,
    continue_pretraining,
    is_main_rank,
    pick_device,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MANIFEST = "pool.json"
# The tokenized seed data: what member_seed_share mixes in and the preconditioner reads.
SEED_DATA = "seed_data"
ADD_LOCK = ".add.lock"  # in data/: the file every writer of data/ locks (see Pool.add_lock)


@contextlib.contextmanager
def _add_lock(data_folder: Path) -> Iterator[None]:
    """Hold the pool's add lock, saying so when another ``pool add`` makes us wait."""
    lock = FileLock(str(data_folder / ADD_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another `ablate pool add` is writing to this pool; waiting for it to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _bar(total: int, desc: str, enabled: bool, **kw: object):
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, **kw)


def member_seed(recipe_seed: int, ident: str) -> int:
    """Per-member seed: fixed by the recipe seed and the member's name, not by run order."""
    return (recipe_seed * 1_000_003 + zlib.crc32(ident.encode())) % (2**31)


class UnitRef(NamedTuple):
    """A base unit that should have a member."""

    partition: str
    unit: int
    data_hash: str

    @property
    def member_id(self) -> str:
        return member_id(self.partition, self.unit)


@dataclass
class VerifyReport:
    """What ``Pool.verify`` found; ``ok`` when nothing is missing or corrupt."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


class Pool:
    """A folder of trained members; see ``ablate.pool.storage`` for the layout."""

    def __init__(self, path: Path, manifest: PoolManifest):
        self.path = path
        self.manifest = manifest
        self._preconditioner: dict[str, torch.Tensor] | None = None  # _second_moments

    # ----------------------------------------------------------------- create / open
    @classmethod
    def open(cls, path: str | os.PathLike) -> Pool:
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise PoolError(
                f"{path} is not a pool (no {MANIFEST}); create one with `ablate pool init {path}`"
            )
        return cls(path, read_record(path / MANIFEST, PoolManifest))

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        base: str = "tiny",
        seed_data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        recipe: Recipe | None = None,
        tiny: TinyModelSpec | None = None,
        text_field: str = "text",
        progress: bool = True,
        device: str | None = None,
        merge: PoolMerge | None = None,
        proxy_level: ProxyLevel | None = None,
    ) -> Pool:
        """Start a pool from ``base`` ("tiny" trains a seed on ``seed_data``; else a local HF folder).

        ``recipe`` None: ``method.new_pool_recipe(seed_data)`` (members start from the seed's
        estimated AdamW second moments where there is seed data). ``merge`` None:
        ``method.new_pool_merge(recipe)`` (``fisher_damped`` for such members, ``fisher``
        for LoRA members, else the plain average; what it reads of each member:
        ``ablate.pool.prepare``). ``proxy_level`` None: ``method.new_pool_proxy_level(recipe)``
        (``specialisation`` for full-weight members that start from the seed's second
        moments, else ``none``; ``ablate.engine.levels``).
        """
        path = Path(path)
        recipe = recipe or new_pool_recipe(seed_data)
        merge = check_merge(merge or new_pool_merge(recipe))
        proxy_level = check_proxy_level(proxy_level or new_pool_proxy_level(recipe))
        if (path / MANIFEST).exists():
            raise PoolError(f"{path} is already a pool; add data with `ablate pool add` instead")
        if path.exists() and not path.is_dir():
            raise PoolError(f"{path} exists and is not a folder; choose another pool path")
        if path.is_dir() and any(
            not p.name.startswith(".") and p.name != "base" for p in path.iterdir()
        ):
            raise PoolError(f"{path} is not empty and not a pool; choose an empty or new folder")
        if recipe.member_seed_share > 0 and seed_data is None:
            raise DataError(
                "--member-seed-share mixes seed data into every member and needs --seed-data FILE"
            )
        preconditioned = recipe.member_preconditioner == "seed"
        if preconditioned and seed_data is None:
            raise DataError(
                "--member-preconditioner seed estimates the members' optimizer state on the "
                "seed data and needs --seed-data FILE"
            )
        if preconditioned and not method_of(recipe).trains_in_place:
            raise PoolError(
                "--member-preconditioner seed starts each member from the seed's optimizer "
                f"state, and a {recipe.method} adapter is new in every member (it has none): "
                "drop the flag or use --method full"
            )
        keep_seed_data = recipe.member_seed_share > 0 or preconditioned
        seed_docs = None  # read once: the tiny seed trains on it, members may mix it in
        if seed_data is not None and (base == "tiny" or keep_seed_data):
            paths = [seed_data] if isinstance(seed_data, (str, os.PathLike)) else list(seed_data)
            seed_docs = read_documents(paths, text_field=text_field)
        if base == "tiny":
            if seed_docs is None:
                raise DataError("--base tiny trains a seed model and needs --seed-data FILE")
            tiny = tiny or TinyModelSpec()
            texts = [d.text for d in seed_docs]
            # LoRA targets are checked (on the seed's structure) before anything is written.
            recipe = method_of(recipe).fit_recipe(recipe, seedlib.tiny_skeleton(tiny, context=8))
            path.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
            base_path, context = "base", recipe.seq_len
            cls._train_tiny_seed(path / base_path, texts, tiny, recipe, progress, device)
            base_folder = path / base_path
        else:
            if tiny is not None:
                raise PoolError(
                    "tiny-model options (--vocab-size, --seed-tokens) apply only to --base tiny"
                )
            base_folder = seedlib.check_base_folder(base)
            model, _ = seedlib.load_base(base_folder)
            recipe = method_of(recipe).fit_recipe(recipe, model)  # refused before any write
            limit = seedlib.model_context(model, cap=1 << 30)
            if recipe.seq_len > limit:
                raise PoolError(
                    f"--seq-len {recipe.seq_len} exceeds the model's context of {limit} tokens"
                )
            check_head(model)  # a forward pass, after the cheap checks: the scorer's logits
            base, base_path, context = str(base_folder), str(base_folder), recipe.seq_len
            del model
            path.mkdir(parents=True, exist_ok=True)
        model_config = _read_config(base_folder)
        if keep_seed_data:
            # The members' general data: the seed data, tokenized once with the pool's tokenizer.
            write_partition(
                path / SEED_DATA,
                name=SEED_DATA,
                texts=[d.text for d in seed_docs],
                sources=[d.source for d in seed_docs],
                tokenizer=seedlib.load_tokenizer(base_folder),
                token_dtype=token_dtype_for(int(model_config["vocab_size"])),
                unit_tokens=recipe.unit_tokens,
            )
        base_sha256 = seedlib.weights_fingerprint(base_folder)
        if preconditioned:  # before pool.json: a pool is complete or not there at all
            import torch

            seed_part = TokenizedPartition.open(path / SEED_DATA)
            with _bar(1, "member preconditioner", progress, unit="estimate") as bar:
                write_preconditioner(
                    path,
                    seedlib.load_base(base_folder, dtype=torch.float32)[0],
                    seed_part.tokens,
                    recipe,
                    base_sha256=base_sha256,
                    seed_data_sha256=seed_part.index.tokens_sha256,
                    device=pick_device(device),
                )
                bar.update(1)
        manifest = PoolManifest(
            base=base,
            base_path=base_path,
            base_sha256=base_sha256,
            vocab_size=int(model_config["vocab_size"]),
            context=context,
            token_dtype=token_dtype_for(int(model_config["vocab_size"])),
            recipe=recipe,
            tiny=tiny,
            created_at=utc_now(),
            merge=merge,
            proxy_level=proxy_level,
        )
        write_json(path / MANIFEST, manifest.model_dump(mode="json"))
        log.info("created pool %s from %s", path, base)
        return cls(path, manifest)

    @staticmethod
    def _train_tiny_seed(
        folder: Path,
        texts: list[str],
        spec: TinyModelSpec,
        recipe: Recipe,
        progress: bool,
        device: str | None,
    ) -> None:
        tokenizer = seedlib.train_tiny_tokenizer(texts, spec.vocab_size)
        model = seedlib.build_tiny_model(spec, len(tokenizer), recipe.seq_len, recipe.seed)

        stream = np.concatenate(encode_documents(tokenizer, texts))
        # The seed is plain pre-training: full weights, whatever the members' method, and
        # none of the member-only levers.
        seed_recipe = recipe.real().model_copy(update={"method": FULL.name})
        with _bar(seed_recipe.steps_for(spec.seed_tokens), "seed model", progress) as bar:
            model, _ = continue_pretraining(
                model,
                seed_recipe,
                [stream],
                [1.0],
                spec.seed_tokens,
                seed=recipe.seed,
                device=device,
                progress=bar,
            )
        with staged_dir(folder) as tmp:
            seedlib.save_pretrained(model.cpu(), tokenizer, tmp)

    @property
    def method(self) -> Method:
        """How members train, what they save and how they merge (``ablate.pool.method``)."""
        return method_of(self.manifest.recipe)

    @property
    def merge(self) -> PoolMerge:
        """The merge eval, search and validate use unless told otherwise (pool.json)."""
        return self.manifest.merge

    @property
    def proxy_level(self) -> ProxyLevel:
        """How eval, search and validate read each domain's proxy perplexity unless told
        otherwise (pool.json; ``ablate.engine.levels``)."""
        return self.manifest.proxy_level

    # ----------------------------------------------------------------- base model
    @property
    def base_folder(self) -> Path:
        p = Path(self.manifest.base_path)
        return p if p.is_absolute() else self.path / p

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return seedlib.load_tokenizer(self.base_folder)

    def load_base_model(self, *, check: bool = False) -> PreTrainedModel:
        """A fresh copy of the seed model (fp32 on CPU so training and merging are exact)."""
        import torch

        if check and seedlib.weights_fingerprint(self.base_folder) != self.manifest.base_sha256:
            raise PoolError(
                f"the seed model in {self.base_folder} changed since the pool was created; "
                "members no longer share it - restore the original seed weights"
            )
        model, _ = seedlib.load_base(self.base_folder, dtype=torch.float32)
        return model.eval()

    # ----------------------------------------------------------------- data
    @property
    def data_folder(self) -> Path:
        return self.path / "data"

    @property
    def partitions(self) -> dict[str, TokenizedPartition]:
        """Tokenized partitions by name (sorted)."""
        if not self.data_folder.is_dir():
            return {}
        out = {}
        for d in sorted(self.data_folder.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / "index.json").is_file():
                out[d.name] = TokenizedPartition.open(d)
        return out

    def add(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        by: str | None = None,
        by_folder: bool = False,
        units: int | None = None,
        name: str | None = None,
        text_field: str = "text",
        progress: bool = True,
    ) -> list[str]:
        """Tokenize new partitions into the pool; returns the names that were new.

        Re-adding identical data is a no-op; different data under an existing name is an
        error raised before anything is written.
        """
        docs = read_documents(paths, text_field=text_field)
        groups = partition_documents(
            docs, by=by, by_folder=by_folder, units=units, seed=self.manifest.recipe.seed, name=name
        )
        # Hashed once: compared with existing partitions (twice) and recorded for new ones.
        hashes = {pname: content_hash([d.text for d in pdocs]) for pname, pdocs in groups.items()}
        # Checked before the lock: a refusal writes nothing.
        if not self._new_partitions(groups, hashes):
            return []
        self.data_folder.mkdir(exist_ok=True)
        # One add at a time per pool: a second add would otherwise race the name checks and
        # sweep the first one's staging folders as stale leftovers.
        with _add_lock(self.data_folder):
            # Again: another add may have landed meanwhile.
            todo = self._new_partitions(groups, hashes)
            remove_stale_temporaries(self.data_folder)
            total = sum(len(v) for v in todo.values())
            with _bar(total, "tokenize", progress, unit="doc") as bar:
                for pname, pdocs in todo.items():
                    write_partition(
                        self.data_folder / pname,
                        name=pname,
                        texts=[d.text for d in pdocs],
                        sources=[d.source for d in pdocs],
                        tokenizer=self.tokenizer,
                        token_dtype=self.manifest.token_dtype,
                        unit_tokens=self.manifest.recipe.unit_tokens,
                        progress=bar,
                        text_hash=hashes[pname],
                    )
        return list(todo)

    def add_lock(self) -> contextlib.AbstractContextManager[None]:
        """The lock every writer of ``data/`` holds (``add``, ``ablate.pool.cluster.add_clustered``)."""
        self.data_folder.mkdir(exist_ok=True)
        return _add_lock(self.data_folder)

    def _new_partitions(self, groups: dict[str, list], hashes: dict[str, str]) -> dict[str, list]:
        """Groups not yet in the pool; identical re-adds are skipped, conflicting ones refused.

        ``groups`` come from ``partition_documents`` (which validates every name) and
        ``hashes`` holds each group's ``content_hash``.
        """
        existing = self.partitions
        todo: dict[str, list] = {}
        for pname, pdocs in groups.items():
            if pname in existing:
                if existing[pname].index.content_hash != hashes[pname]:
                    raise DataError(
                        f"partition {pname!r} already exists with different data; "
                        "add the new data under another name (or start a new pool)"
                    )
                log.info("partition %s is already in the pool with the same data; skipped", pname)
                continue
            todo[pname] = pdocs
        return todo

    # ----------------------------------------------------------------- members
    def units(self) -> list[UnitRef]:
        """Every base unit of every partition, in (partition, unit) order."""
        return _unit_refs(self.partitions)

    def member_folder(self, partition: str, unit: int) -> Path:
        return self.path / "members" / partition / f"{unit:04d}"

    def member(self, partition: str, unit: int) -> MemberRecord | None:
        """The finished member of a unit, or None if it has not been trained."""
        f = self.member_folder(partition, unit) / "member.json"
        return read_record(f, MemberRecord) if f.is_file() else None

    @property
    def members(self) -> list[MemberRecord]:
        """Finished members, in (partition, unit) order."""
        out = []
        for ref in self.units():
            rec = self.member(ref.partition, ref.unit)
            if rec is not None and rec.data_hash == ref.data_hash:
                out.append(rec)
        return out

    def missing(self, only: Sequence[str] | None = None) -> list[UnitRef]:
        """Units without a finished member (restricted to partitions ``only`` if given).

        A member trained on older data of its unit (``data_hash`` differs) is not finished.
        """
        refs = self.units()
        if only:
            known = {u.partition for u in refs}
            for n in only:
                if n not in known:
                    raise DataError(
                        f"unknown partition {n!r}; known: {', '.join(sorted(known)) or 'none'}"
                    )
        out = []
        for u in refs:
            if only and u.partition not in only:
                continue
            rec = self.member(u.partition, u.unit)
            if rec is None or rec.data_hash != u.data_hash:
                out.append(u)
        return out

    def weights_path(self, rec: MemberRecord) -> Path:
        return self.member_folder(rec.partition, rec.unit) / rec.weights_file

    def grow(
        self, only: Sequence[str] | None = None, *, progress: bool = True, device: str | None = None
    ) -> list[MemberRecord]:
        """Train every missing member (one after another); returns the ones trained now."""
        # Under torchrun all ranks must walk the same list: rank 0's.
        todo = broadcast_from_main(self.missing(only))
        if not todo:
            return []
        trained: list[MemberRecord] = []
        base = self.load_base_model(check=True)
        # A full member trains ``base`` in place, so each one restarts from a copy of the
        # seed; a LoRA member trains a copy and leaves ``base`` as it was.
        base_state = (
            {k: v.clone() for k, v in base.state_dict().items()}
            if self.method.trains_in_place
            else None
        )
        with _bar(len(todo), "members", progress and is_main_rank(), unit="member") as overall:
            for ref in todo:
                rec = self.grow_one(
                    ref, base, base_state=base_state, progress=progress, device=device
                )
                if rec is not None:
                    trained.append(rec)
                overall.update(1)
        return trained

    def grow_one(
        self,
        ref: UnitRef,
        base: PreTrainedModel,
        *,
        base_state: dict | None = None,
        progress: bool = True,
        device: str | None = None,
    ) -> MemberRecord | None:
        """Train one member under its lock; None if another run holds it or has finished it.

        The one path for every backend (local ``grow``, Ray tasks), so that two runs on one
        pool never train a member twice. ``base_state`` restores ``base`` first (a local
        ``grow`` reuses one base model whose weights the previous full member changed).
        """
        done = ensure_trained(
            self._target(ref),
            SeedModel(lambda: base, state=base_state),
            self.manifest.recipe,
            base_sha256=self.manifest.base_sha256,
            # A concurrent grow holds this member: it trains it, we move on to the next.
            if_locked="skip",
            progress=progress,
            device=device,
        )
        return done.record if done.trained else None

    def _target(self, ref: UnitRef) -> Target[MemberRecord]:
        """What the member of ``ref`` is, where it lives and what it trains on."""
        recipe = self.manifest.recipe

        def finished() -> MemberRecord | None:
            # A member left from older data under the same name is not finished: it is replaced.
            rec = self.member(ref.partition, ref.unit)
            return rec if rec is not None and rec.data_hash == ref.data_hash else None

        share = recipe.member_seed_share

        return Target(
            folder=self.member_folder(ref.partition, ref.unit),
            label=ref.member_id,
            read=finished,
            record=partial(
                MemberRecord, partition=ref.partition, unit=ref.unit, data_hash=ref.data_hash
            ),
            record_file="member.json",
            sources=lambda: self.member_sources(ref.partition, ref.unit),
            source_weights=self.member_source_weights(),
            tokens=recipe.unit_tokens,
            seed=member_seed(recipe.member_rng_seed, ref.member_id),
            # Each member trains on exactly its share of seed data, not a random draw of it.
            exact_mix=share > 0,
            second_moments=(
                self._second_moments if recipe.member_preconditioner == "seed" else None
            ),
        )

    def _second_moments(self) -> dict[str, torch.Tensor]:
        """The members' shared AdamW second moments (``ablate.pool.preconditioner``): read
        and checked once per ``Pool`` (a model-sized file; ``grow`` trains many members)."""
        if self._preconditioner is None:
            self._preconditioner = load_preconditioner(self.path, self.manifest.base_sha256)
        return self._preconditioner

    def member_sources(self, partition: str, unit: int) -> list[np.ndarray]:
        """The token streams a unit's member trains on: its unit, then the seed data when
        the recipe mixes it in (weights: ``member_source_weights``)."""
        part = TokenizedPartition.open(self.data_folder / partition)
        if self.manifest.recipe.member_seed_share == 0:
            return [part.unit_stream(unit)]
        return [part.unit_stream(unit), self.seed_tokens()]

    def member_source_weights(self) -> tuple[float, ...]:
        """Sampling weights of ``member_sources`` (the recipe's seed-data share)."""
        share = self.manifest.recipe.member_seed_share
        return (1.0,) if share == 0 else (1.0 - share, share)

    def seed_tokens(self) -> np.ndarray:
        """The seed data's tokens that members mix in (``Recipe.member_seed_share``)."""
        folder = self.path / SEED_DATA
        if not (folder / "index.json").is_file():
            raise PoolError(
                f"{folder} is missing: this pool mixes seed data into its members "
                "(member_seed_share) but lost the tokenized seed data; restore it from a backup "
                "or start a new pool"
            )
        return TokenizedPartition.open(folder).tokens

    # ----------------------------------------------------------------- checks
    def verify(self) -> VerifyReport:
        """Re-hash the seed (and the members' preconditioner), every partition's tokens and
        every member's weights (and its Fisher and Grams, where ``ablate pool fisher`` /
        ``gram`` wrote them)."""
        report = VerifyReport()
        try:
            if seedlib.weights_fingerprint(self.base_folder) != self.manifest.base_sha256:
                report.corrupt.append(f"seed model {self.base_folder}")
        except PoolError:
            report.missing.append(f"seed model {self.base_folder}")
        report.checked += 1
        if self.manifest.recipe.member_preconditioner == "seed":
            report.checked += 1
            if (
                problem := preconditioner_problem(self.path, self.manifest.base_sha256)
            ) is not None:
                report.corrupt.append(problem)
        parts = self.partitions
        for name, part in parts.items():
            report.checked += 1
            tokens = part.folder / "tokens.bin"
            if not tokens.is_file() or sha256_file(tokens) != part.index.tokens_sha256:
                report.corrupt.append(f"data/{name}/tokens.bin")
        for ref in _unit_refs(parts):
            report.checked += 1
            folder = self.member_folder(ref.partition, ref.unit)
            try:
                rec = self.member(ref.partition, ref.unit)
            except PoolError:
                report.corrupt.append(f"{ref.member_id} (member.json unreadable)")
                continue
            # The record's cheap checks first; the weights are hashed last.
            if rec is None:
                report.missing.append(ref.member_id)
            elif rec.data_hash != ref.data_hash:  # as in `missing()`: grow replaces it
                report.missing.append(
                    f"{ref.member_id} (trained on older data; run `ablate pool grow`)"
                )
            elif rec.base_sha256 != self.manifest.base_sha256:
                report.corrupt.append(f"{ref.member_id} (trained from a different seed model)")
            elif not (folder / rec.weights_file).is_file():
                report.corrupt.append(f"{ref.member_id} ({rec.weights_file} missing)")
            elif sha256_file(folder / rec.weights_file) != rec.weights_sha256:
                report.corrupt.append(f"{ref.member_id} ({rec.weights_file} sha256 mismatch)")
            else:
                for stat in MEMBER_STATISTICS:  # each one `pool fisher` / `pool gram` wrote
                    if (folder / stat.record_file).is_file():
                        report.checked += 1
                        if (problem := _stat_problem(self, rec, stat)) is not None:
                            report.corrupt.append(f"{ref.member_id} ({problem})")
        return report

    def check_member(self, rec: MemberRecord) -> None:
        """Refuse a member that was trained from another seed or another recipe."""
        if rec.base_sha256 != self.manifest.base_sha256:
            raise CorruptMemberError(
                f"member {rec.member_id} was trained from a different seed model; "
                "delete it and run `ablate pool grow`"
            )
        if rec.method != self.manifest.recipe.method:
            raise CorruptMemberError(
                f"member {rec.member_id} is a {rec.method} member in a {self.manifest.recipe.method} pool"
            )

    def __repr__(self) -> str:
        return f"Pool({str(self.path)!r}, partitions={len(self.partitions)}, members={len(self.members)})"

    def status(self) -> list[dict[str, object]]:
        """One record per base unit, in (partition, unit) order: what ``ablate pool ls`` lists.

        Keys: ``partition``, ``unit``, ``docs`` and ``tokens`` (the unit's data),
        ``trained`` (a finished member on the unit's current data exists), and the member's
        ``final_loss``, ``tokens_seen`` and ``wall_time_s`` (None while it is missing).
        """
        done = {(m.partition, m.unit): m for m in self.members}
        rows: list[dict[str, object]] = []
        for name, part in self.partitions.items():
            offsets = part.offsets  # (n_docs + 1,) token offset of each document
            for u, (a, b) in enumerate(part.index.units):
                m = done.get((name, u))
                rows.append(
                    {
                        "partition": name,
                        "unit": u,
                        "docs": b - a,
                        "tokens": int(offsets[b] - offsets[a]),
                        "trained": m is not None,
                        "final_loss": None if m is None else m.final_loss,
                        "tokens_seen": None if m is None else m.tokens_seen,
                        "wall_time_s": None if m is None else m.wall_time_s,
                    }
                )
        return rows


def _stat_problem(pool: Pool, rec: MemberRecord, stat: MemberStatistic) -> str | None:
    """What is wrong with a member's Fisher or Grams (``ablate.pool.statistics``), if it has
    them (none is not a fault: only the merges that read them need them)."""
    folder = pool.member_folder(rec.partition, rec.unit)
    tensors, record = folder / stat.file, folder / stat.record_file
    if not record.is_file():
        return None
    fix = f"run {stat.command(pool.path, force=True)}"
    try:
        got = read_record(record, stat.record_cls)
    except PoolError:
        return f"{record.name} unreadable; {fix}"
    if got.weights_sha256 != rec.weights_sha256:
        return f"its {stat.what} belongs to other weights; {fix}"
    if not tensors.is_file() or sha256_file(tensors) != stat.sha(got):
        return f"{tensors.name} missing or sha256 mismatch; {fix}"
    return None


def _unit_refs(parts: dict[str, TokenizedPartition]) -> list[UnitRef]:
    """Every base unit of ``parts``, in (partition, unit) order."""
    return [
        UnitRef(name, i, h)
        for name, part in parts.items()
        for i, h in enumerate(part.index.unit_hashes)
    ]


def _read_config(folder: Path) -> dict:
    cfg = json.loads((folder / "config.json").read_text())
    if "vocab_size" not in cfg and "text_config" in cfg:
        cfg = cfg["text_config"]
    return cfg
