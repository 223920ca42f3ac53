"""Score any mixture of a pool by merging its members and measuring perplexity.

The evaluator loads members once (``ablate.merge``), tokenizes the eval set once
(``ablate.evalset``) and remembers every score (``ablate.results``). Subset walks follow a
Gray code with a running sum, so consecutive subsets cost one member update instead of a
full merge.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ablate.evalset import IGNORE, EvalSet
from ablate.mixture import Mixture, MixtureError
from ablate.results import ResultsStore, Row
from pool import Pool
from pool.atomic import sha256_json
from pool.errors import AblateError, PoolError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ablate.merge import MergedModel

log = logging.getLogger(__name__)

MixtureLike = Mixture | str | Mapping[str, float] | Sequence[str]
MACRO = "macro"
_LN2 = math.log(2)
_MAX_SUBSET_PARTITIONS = 24  # 2^24 subsets is already ~17M evaluations


@dataclass(frozen=True)
class DomainScore:
    """Totals for one eval domain; perplexity and bits per byte derive from them."""

    tokens: int
    nll: float
    bytes: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bpb(self) -> float:
        return self.nll / (_LN2 * self.bytes)


@dataclass(frozen=True)
class EvalResult:
    """A mixture's scores per eval domain."""

    mixture: Mixture
    scores: Mapping[str, DomainScore]
    cached: bool = False

    @property
    def ppl(self) -> dict[str, float]:
        return {d: s.ppl for d, s in self.scores.items()}

    @property
    def bpb(self) -> dict[str, float]:
        return {d: s.bpb for d, s in self.scores.items()}

    @property
    def macro_ppl(self) -> float:
        return float(np.mean([s.ppl for s in self.scores.values()]))

    @property
    def macro_bpb(self) -> float:
        return float(np.mean([s.bpb for s in self.scores.values()]))

    def rows(self) -> list[dict]:
        """One record per domain plus a ``macro`` record (the ``--json`` schema)."""
        mix = self.mixture.as_dict()
        out = [
            {
                "mixture": mix,
                "domain": d,
                "tokens": s.tokens,
                "nll": s.nll,
                "ppl": s.ppl,
                "bpb": s.bpb,
            }
            for d, s in self.scores.items()
        ]
        out.append(
            {
                "mixture": mix,
                "domain": MACRO,
                "tokens": sum(s.tokens for s in self.scores.values()),
                "nll": sum(s.nll for s in self.scores.values()),
                "ppl": self.macro_ppl,
                "bpb": self.macro_bpb,
            }
        )
        return out


def as_mixture(m: MixtureLike) -> Mixture:
    if isinstance(m, Mixture):
        return m
    if isinstance(m, str):
        return Mixture.parse(m)
    if isinstance(m, Mapping):
        return Mixture.of(m)
    return Mixture.uniform(m)


def gray_subsets(n: int, max_size: int | None = None) -> list[tuple[int, ...]]:
    """All non-empty subsets of ``range(n)`` in reflected Gray-code order (size-filtered)."""
    if n > _MAX_SUBSET_PARTITIONS:
        raise MixtureError(
            f"{n} partitions have {2**n - 1} subsets; limit --max-size or use `ablate search`"
        )
    out = []
    for i in range(1, 2**n):
        g = i ^ (i >> 1)
        if max_size is None or g.bit_count() <= max_size:
            out.append(tuple(j for j in range(n) if g >> j & 1))
    return out


def _gray_rank(mask: int) -> int:
    rank = mask
    shift = mask >> 1
    while shift:
        rank ^= shift
        shift >>= 1
    return rank


class Evaluator:
    """Merges pool members into mixtures and scores them on an eval set.

    Args:
        pool: A ``Pool`` or its path.
        eval_data: Eval files (same formats as corpora), or an already loaded ``EvalSet``.
        by: Metadata field that names each eval document's domain (one domain if None).
        device: ``"cpu"``, ``"cuda"``, or None for CUDA when available.
        batch_tokens: Tokens per forward pass; bounds activation memory.
        store: Use the pool's ``results.sqlite`` (True), another path, or no store (False).
    """

    def __init__(
        self,
        pool: Pool | str | os.PathLike,
        eval_data: EvalSet | str | os.PathLike | Sequence[str | os.PathLike],
        *,
        by: str | None = None,
        text_field: str = "text",
        device: str | None = None,
        batch_tokens: int = 8192,
        store: bool | str | os.PathLike = True,
        progress: bool = True,
    ):
        self.pool = pool if isinstance(pool, Pool) else Pool.open(pool)
        self.eval_set = (
            eval_data
            if isinstance(eval_data, EvalSet)
            else EvalSet.load(self.pool, eval_data, by=by, text_field=text_field)
        )
        self.device_name = device
        self.batch_tokens = batch_tokens
        self.progress = progress
        path = self.pool.path / "results.sqlite" if store is True else store
        self.store = ResultsStore(path) if path else None
        members = self.pool.members
        if not members:
            raise PoolError(
                f"pool {self.pool.path} has no trained members; run `ablate pool grow {self.pool.path}`"
            )
        missing = self.pool.missing()
        if missing:
            names = sorted({u.partition for u in missing})
            raise PoolError(
                f"partitions {', '.join(names)} have untrained members; run `ablate pool grow {self.pool.path}`"
            )
        self.members = members
        self.partitions: tuple[str, ...] = tuple(sorted({m.partition for m in members}))
        self._rows_of: dict[str, list[int]] = {p: [] for p in self.partitions}
        for i, m in enumerate(members):
            self._rows_of[m.partition].append(i)

    # ------------------------------------------------------------------ lazy heavy state
    @cached_property
    def device(self) -> torch.device:
        from pool.train import pick_device

        return pick_device(self.device_name)

    @cached_property
    def merged(self) -> MergedModel:
        """Members loaded and stacked on first use (cache hits never pay for it)."""
        from ablate.merge import MergedModel

        return MergedModel(self.pool, self.members, device=self.device, progress=self.progress)

    @cached_property
    def _windows(self):
        import torch

        pad = self.pool.tokenizer.pad_token_id
        pad = pad if pad is not None else 0
        w = self.eval_set.windows(self.pool.manifest.context, pad)
        with torch.inference_mode(False):  # see _batches
            return (
                torch.from_numpy(w.inputs).to(self.device),
                torch.from_numpy(w.targets).to(self.device),
                torch.from_numpy(w.domain).to(self.device),
                w.batches(self.batch_tokens),
            )

    @cached_property
    def _batches(self) -> list[ScoringBatch]:
        """The eval windows cut into batches once; every mixture reuses them as they are.

        Windows are right-padded and the model is causal, so cutting a batch to its longest
        window changes no score and skips the padding's compute; the real targets' positions
        are found once here, not per mixture.
        """
        import torch

        inputs, targets, dom, batches = self._windows
        out = []
        # Plain tensors even when first needed under inference mode: the gradient search
        # runs them through autograd.
        with torch.inference_mode(False):
            for start, stop, length in batches:
                y = targets[start:stop, :length].flatten()  # (B*L,)
                at = (y != IGNORE).nonzero()[:, 0]  # (N,)
                x = inputs[start:stop, :length]
                out.append(ScoringBatch(x, at, y[at], dom[start:stop][at // length]))
        return out

    @cached_property
    def _domain_tokens(self) -> list[int]:
        """Scored targets per domain: the same for every mixture."""
        counts = np.zeros(len(self.domains), dtype=np.int64)
        for b in self._batches:
            counts += np.bincount(b.domain.cpu().numpy(), minlength=len(self.domains))
        return counts.tolist()

    def scoring_batches(self) -> list[ScoringBatch]:
        """Eval windows in batches: ``inputs (B, L)`` plus each real target's place and domain."""
        return self._batches

    @property
    def domains(self) -> tuple[str, ...]:
        return self.eval_set.domains

    # ------------------------------------------------------------------ keys
    def member_weights(self, mixture: Mixture) -> np.ndarray:
        """Weights over members: a partition's weight spread evenly over its units."""
        mixture.check(self.partitions)
        w = np.zeros(len(self.members))
        for name, weight in mixture.weights:
            rows = self._rows_of[name]
            w[rows] = weight / len(rows)
        return w

    def pool_key(self, mixture: Mixture) -> str:
        """Fingerprint of exactly the members this mixture merges (and their weights)."""
        w = self.member_weights(mixture)
        used = [
            (m.member_id, m.weights_sha256, round(float(w[i]), 12))
            for i, m in enumerate(self.members)
            if w[i] > 0
        ]
        return sha256_json(
            {
                "seed": self.pool.manifest.base_sha256,
                "method": self.pool.manifest.recipe.method,
                "members": used,
            }
        )

    def _cached(self, mixture: Mixture, pool_key: str) -> EvalResult | None:
        if self.store is None:
            return None
        hit = self.store.get(pool_key, self.eval_set.fingerprint, mixture.key)
        if hit is None or set(hit) != set(self.domains):
            return None
        return EvalResult(mixture, {d: DomainScore(*hit[d]) for d in self.domains}, cached=True)

    def _remember(
        self, mixture: Mixture, scores: dict[str, DomainScore], pool_key: str
    ) -> EvalResult:
        if self.store is not None:
            rows: dict[str, Row] = {d: (s.tokens, s.nll, s.bytes) for d, s in scores.items()}
            self.store.put(
                pool_key, self.eval_set.fingerprint, mixture.key, mixture.as_dict(), rows
            )
        return EvalResult(mixture, scores)

    # ------------------------------------------------------------------ scoring
    def score_current(self) -> dict[str, DomainScore]:
        """Score whatever weights the skeleton holds now, per eval domain."""
        import torch

        nll = torch.zeros(len(self.domains), dtype=torch.float64, device=self.device)
        with torch.inference_mode():
            for b in self.scoring_batches():
                nll.index_add_(0, b.domain, target_nll(self.merged.model, b).double())
        totals = nll.tolist()  # one device sync per mixture
        nbytes = self.eval_set.domain_bytes
        return {
            d: DomainScore(self._domain_tokens[i], totals[i], int(nbytes[i]))
            for i, d in enumerate(self.domains)
        }

    def evaluate(self, mixture: MixtureLike) -> EvalResult:
        """Scores of one mixture (from the store when it was scored before)."""

        mixture = as_mixture(mixture)
        key = self.pool_key(mixture)
        return self._cached(mixture, key) or self._score(mixture, key)

    def _score(self, mixture: Mixture, pool_key: str) -> EvalResult:
        """Merge and score one mixture (no store lookup), then store the scores."""
        import torch

        self.merged.merge(torch.from_numpy(self.member_weights(mixture)).float())
        return self._remember(mixture, self.score_current(), pool_key)

    def evaluate_many(
        self, mixtures: Iterable[MixtureLike], *, progress: bool | None = None
    ) -> pd.DataFrame:
        """Score many mixtures; uniform subsets are walked in Gray-code order with a running sum."""
        results = self.run_many(mixtures, progress=progress)
        return results_frame(results)

    def run_many(
        self, mixtures: Iterable[MixtureLike], *, progress: bool | None = None
    ) -> list[EvalResult]:
        from tqdm.auto import tqdm

        mixtures, out, todo = self._split_cached(mixtures)
        subsets, others = self._walk_order(list(todo))
        show = self.progress if progress is None else progress
        with tqdm(total=len(todo), desc="mixtures", disable=not show, unit="mix") as bar:
            for m, scores in self._walk_subsets(subsets):
                out[m.key] = self._remember(m, scores, todo[m])
                bar.update(1)
            for m in others:
                out[m.key] = self._score(m, todo[m])
                bar.update(1)
        return [out[m.key] for m in mixtures]  # type: ignore[misc]

    def _split_cached(
        self, mixtures: Iterable[MixtureLike]
    ) -> tuple[list[Mixture], dict[str, EvalResult | None], dict[Mixture, str]]:
        """Checked mixtures, the store's answers by key (None: not stored), and what to score
        once with its pool key."""
        mixtures = [as_mixture(m) for m in mixtures]
        out: dict[str, EvalResult | None] = {}
        todo: dict[Mixture, str] = {}
        for m in mixtures:
            if m.key not in out:
                key = self.pool_key(m)  # checks the mixture's names
                out[m.key] = self._cached(m, key)
                if out[m.key] is None:
                    todo[m] = key
        return mixtures, out, todo

    def _walk_order(self, todo: list[Mixture]) -> tuple[list[Mixture], list[Mixture]]:
        """Uniform subsets of a full-weight pool in Gray-code order (one cheap walk), and the rest."""
        if self.pool.manifest.recipe.method != "full":
            return [], list(todo)
        index = {p: i for i, p in enumerate(self.partitions)}
        subsets = sorted(
            (m for m in todo if m.is_uniform),
            key=lambda m: _gray_rank(sum(1 << index[n] for n in m.names)),
        )
        return subsets, [m for m in todo if not m.is_uniform]

    def _walk_subsets(self, subsets: list[Mixture]):
        """Yield (mixture, scores) keeping R = sum of partition means; each step flips few rows."""
        import torch

        import kernels

        if not subsets:
            return
        merged = self.merged
        running = torch.zeros(merged.flat.numel(), dtype=torch.float32, device=self.device)  # (P,)
        current: set[str] = set()
        for m in subsets:
            target = set(m.names)
            flips = current ^ target
            if len(flips) >= len(target):  # cheaper to rebuild than to patch
                running.zero_()
                flips, current = target, set()
            for p in flips:
                sign = 1.0 if p not in current else -1.0
                rows = self._rows_of[p]
                for r in rows:
                    merged.add_member_(running, r, alpha=sign / len(rows))  # streams when chunked
            current = target
            kernels.weighted_average(running.unsqueeze(0), [1.0 / len(target)], out=merged.flat)
            yield m, self.score_current()

    def all_subsets(self, max_size: int | None = None) -> list[Mixture]:
        """Every uniform subset of the pool's partitions (Gray-code order)."""
        return [
            Mixture.uniform([self.partitions[i] for i in s])
            for s in gray_subsets(len(self.partitions), max_size)
        ]


@dataclass(frozen=True)
class ScoringBatch:
    """Eval windows cut to their longest (``inputs (B, L)``) and their real targets:
    flat position in ``B*L`` (``at``), token id (``targets``) and eval domain (``domain``),
    each ``(N,)``."""

    inputs: torch.Tensor
    at: torch.Tensor
    targets: torch.Tensor
    domain: torch.Tensor


def target_nll(model: torch.nn.Module, batch: ScoringBatch) -> torch.Tensor:
    """NLL ``(N,)`` fp32 of every real target in ``batch``.

    Runs the model body, then ``kernels.token_nll`` on the final hidden states of real
    targets only (never on padding), so the ``(tokens, vocab)`` logits never exist at once.
    """
    import kernels

    hidden = model.base_model(input_ids=batch.inputs, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    cfg = model.config
    return kernels.token_nll(
        hidden.flatten(0, 1).index_select(0, batch.at),  # (N, H)
        head.weight,
        batch.targets,
        bias=head.bias,
        logit_scale=float(getattr(cfg, "logit_scale", None) or 1.0),
        softcap=getattr(cfg, "final_logit_softcapping", None),
    )


def results_frame(results: Iterable[EvalResult]) -> pd.DataFrame:
    """One row per mixture x domain (plus ``macro``), with the mixture as text and weights."""
    import pandas as pd

    records = []
    for r in results:
        for row in r.rows():
            records.append(
                {
                    "mixture": str(r.mixture),
                    "size": len(r.mixture.names),
                    "domain": row["domain"],
                    "tokens": row["tokens"],
                    "nll": row["nll"],
                    "ppl": row["ppl"],
                    "bpb": row["bpb"],
                    "cached": r.cached,
                    "weights": r.mixture.as_dict(),
                }
            )
    return pd.DataFrame.from_records(records)


__all__ = [
    "AblateError",
    "DomainScore",
    "EvalResult",
    "Evaluator",
    "ScoringBatch",
    "results_frame",
    "target_nll",
]
