"""The merge engine: members stacked once, any mixture merged in one kernel call.

Full pools: every member's parameters are one row of a ``[N, P]`` stack and the model
skeleton's parameters are views into one flat ``[P]`` buffer, so writing the merged vector
into that buffer *is* loading the merged model. LoRA pools merge exactly: sum_i w_i B_i A_i
is one GEMM of the concatenated factors. A stack too large for memory streams from the
memory-mapped members in column chunks. How weights become parameters (the plain average,
extrapolations) is a plug-in of ``ablate.engine.merges`` built on ``weighted_sum_``.
"""

from __future__ import annotations

import bisect
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

import ablate.kernels as kernels
from ablate.engine.layout import MemberLayout
from ablate.engine.merges import DAMPING, PER_TENSOR, PRECISIONS, Precision, merge_method
from ablate.pool import Pool
from ablate.pool.architectures import stores_transposed
from ablate.pool.errors import CorruptMemberError, PoolError
from ablate.pool.method import adapted_weight
from ablate.pool.storage import MemberRecord
from ablate.pool.weights import load_tensors

if TYPE_CHECKING:
    from ablate.engine.merges import MergeMethod
    from ablate.mixture import Mixture

log = logging.getLogger(__name__)

# Share of free device memory (or available RAM on CPU) the stack may take; the rest is
# left for activations, eval windows and other processes.
STACK_FRACTION = 0.7
# Fewest stack columns per streamed chunk of a stack too large for memory: below this,
# per-chunk Python overhead dominates.
STREAM_MIN_COLS = 1024
# Guard of the Fisher merge's division: where the summed weighted Fisher is 0 the parameter
# keeps the plain average; clamping only keeps 0/0 out of the unused branch of torch.where.
_TINY = 1e-38
# RegMean's ridge toward the plain average, relative to the summed Gram's mean diagonal: only
# input directions that no member's data excites (a singular Gram) feel it.
RIDGE = 1e-6


@dataclass(frozen=True)
class _LoraSite:
    """One adapted linear layer: concatenated factors of all members."""

    param: torch.Tensor  # the skeleton's weight, a view into the flat buffer
    base: torch.Tensor  # seed weight, same shape
    # param = base + scaling * (left * w) @ right, w repeated r times per member. For
    # nn.Linear ([out, in]) left = [B_1 ... B_N] (out, N*r), right = [A_1; ...; A_N] (N*r, in);
    # for GPT-2's Conv1D, which stores W transposed ([in, out]), left = A^T, right = B^T.
    left: torch.Tensor
    right: torch.Tensor
    rank: int
    scaling: float
    name: str  # the adapted weight's name (the key of its Gram, ``ablate pool gram``)
    transposed: bool  # Conv1D: param is [in, out]

    def delta(self, row: int) -> torch.Tensor:
        """Member ``row``'s update of this weight, in the param's orientation."""
        r = self.rank
        return (self.left[:, row * r : (row + 1) * r] @ self.right[row * r : (row + 1) * r]) * (
            self.scaling
        )


class MergedModel:
    """A model skeleton whose weights are a weighted average of pool members.

    It owns the member stack, the merge (``kernels.weighted_average``, or one GEMM of
    concatenated factors for LoRA pools), "load this mixture" (``load``) and the walk over
    many mixtures (``visit``: Gray-code running sums over uniform subsets where the pool's
    method allows it). Score its current weights with ``ablate.engine.scoring.Scorer``.
    """

    def __init__(
        self,
        pool: Pool,
        members: Sequence[MemberRecord],
        *,
        device: torch.device,
        progress: bool = True,
        stack_budget_bytes: int | None = None,
        layout: MemberLayout | None = None,
    ):
        """Load the members; ``stack_budget_bytes`` caps the stack's device memory (None:
        measure); ``layout`` maps mixtures to rows (None: built from the pool on first use)."""
        if not members:
            raise CorruptMemberError(
                "the pool has no trained members; run `ablate pool grow` first"
            )
        self.pool = pool
        self.members = list(members)
        self._layout = layout
        self.device = device
        self.method = pool.method
        model = pool.load_base_model()
        self._params = _unique_params(model)
        dtype = self._params[0][1].dtype
        numel = sum(p.numel() for _, p in self._params)
        self.flat = torch.empty(numel, dtype=dtype, device=device)  # [P] merged parameters
        self._offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        with torch.no_grad():
            for name, p in self._params:
                view = self.flat[offset : offset + p.numel()].view_as(p)  # (same shape as p)
                view.copy_(p.data)
                p.data = view
                self._offsets[name] = (offset, offset + p.numel())
                offset += p.numel()
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.chunked = False
        self._seed: torch.Tensor | None = None  # (P,) seed parameters (add_seed_, update_gram)
        self._gram = None  # (N, N) inner products of the members' updates (update_gram)
        self._fisher = None  # the members' Fisher as merged (_precision_stack, _fisher_streams)
        self._regmean = None  # (shrink, what regression_merge_ solves) (_regmean_sites)
        self.stack: torch.Tensor | None = None  # [N, P] on device; None for LoRA or chunked pools
        # row -> why the member cannot be used (corrupt, missing, foreign). Its row holds zeros,
        # so mixtures without it still merge; a merge that needs it raises that reason.
        self.unusable: dict[int, str] = {}
        if self.method.merges_by_factors:
            self._sites = self._load_lora(progress)
            return
        need = len(self.members) * numel * self.flat.element_size()
        budget = _stack_budget(self.device) if stack_budget_bytes is None else stack_budget_bytes
        if need <= budget:
            self.stack = self._load_full(progress)
            return
        self.chunked = True
        self._mapped = [
            self._map_or_zeros(i, rec) for i, rec in enumerate(self.members)
        ]  # N x [(numel,)]
        self._starts = [a for a, _ in self._offsets.values()]
        cols = min(
            numel, max(STREAM_MIN_COLS, budget // (len(self.members) * self.flat.element_size()))
        )
        self._stage = torch.empty(len(self.members), cols, dtype=dtype, device=device)  # (N, cols)
        # Pinned host staging makes each chunk one host-to-device copy instead of N x tensors.
        on_gpu = device.type == "cuda"
        self._host = (
            torch.empty(self._stage.shape, dtype=dtype, pin_memory=on_gpu)
            if on_gpu
            else self._stage
        )
        log.info(
            "stack of %d members needs %.1f GiB > budget %.1f GiB: streaming %d columns per chunk",
            len(self.members),
            need / 2**30,
            budget / 2**30,
            cols,
        )

    # ------------------------------------------------------------------ loading
    def _read(self, rec: MemberRecord) -> dict[str, torch.Tensor]:
        self.pool.check_member(rec)
        return load_tensors(self.pool.weights_path(rec), sha256=rec.weights_sha256)

    def _map(self, rec: MemberRecord) -> list[torch.Tensor]:
        """A full member's tensors as flat CPU views in skeleton order (memory-mapped, unread)."""
        tensors = self._read(rec)
        expected = set(self._offsets)
        if set(tensors) != expected:
            extra = sorted(set(tensors) - expected)[:3]
            lacking = sorted(expected - set(tensors))[:3]
            raise CorruptMemberError(
                f"member {rec.member_id} does not have the seed model's architecture "
                f"(unexpected {extra}, missing {lacking}); delete it and run `ablate pool grow`"
            )
        flat = []
        shapes = {name: tuple(p.shape) for name, p in self._params}
        for name in self._offsets:
            t = tensors[name]
            if tuple(t.shape) != shapes[name]:  # not just numel: a transposed weight is foreign too
                raise CorruptMemberError(
                    f"member {rec.member_id}: tensor {name} has shape {tuple(t.shape)}, "
                    "which does not match the seed model; delete it and regrow"
                )
            flat.append(t.reshape(-1))  # (numel,)
        return flat

    def _unusable(self, i: int, err: CorruptMemberError) -> None:
        self.unusable[i] = str(err)
        # info, not warning: a mixture that needs it fails with this message as its one error line
        log.info("member %s cannot be used and is left out: %s", self.members[i].member_id, err)

    def _map_or_zeros(self, i: int, rec: MemberRecord) -> list[torch.Tensor]:
        """``_map``, or zeros for a member that fails its checks (recorded in ``unusable``)."""
        try:
            return self._map(rec)
        except CorruptMemberError as e:
            self._unusable(i, e)
            zero = torch.zeros(1, dtype=self.flat.dtype)
            return [zero.expand(b - a) for a, b in self._offsets.values()]  # views: no memory

    def _check_usable(self, rows: Sequence[int]) -> None:
        for r in rows:
            if r in self.unusable:
                raise CorruptMemberError(self.unusable[r])

    def _load_full(self, progress: bool) -> torch.Tensor:
        stack = torch.empty(
            len(self.members), self.flat.numel(), dtype=self.flat.dtype, device=self.device
        )
        for i, rec in enumerate(
            tqdm(self.members, desc="load members", disable=not progress, leave=False)
        ):
            for t, (a, b) in zip(self._map_or_zeros(i, rec), self._offsets.values(), strict=True):
                stack[i, a:b].copy_(t)
        return stack

    def _load_lora(self, progress: bool) -> list[_LoraSite]:
        spec = self.pool.manifest.recipe.lora
        per_member: list[dict[str, torch.Tensor] | None] = []
        for i, rec in enumerate(
            tqdm(self.members, desc="load adapters", disable=not progress, leave=False)
        ):
            try:
                per_member.append(self._read(rec))
            except CorruptMemberError as e:
                self._unusable(i, e)
                per_member.append(None)
        good = next((m for m in per_member if m is not None), None)
        if good is None:  # no member loads: say why the first one does not
            raise CorruptMemberError(self.unusable[0])
        per_member = [
            m if m is not None else {k: torch.zeros_like(v) for k, v in good.items()}
            for m in per_member
        ]
        params = dict(self._params)
        modules = dict(self.model.named_modules())
        sites = []
        adapted = sorted((k, w) for k in per_member[0] if (w := adapted_weight(k)) is not None)
        for key, name in adapted:
            module = name.removesuffix(".weight")
            if name not in params:
                raise CorruptMemberError(
                    f"adapter tensor {key} has no matching weight {name} in the seed model"
                )
            try:
                a = torch.cat([m[key] for m in per_member])  # (N*r, in)
                b = torch.cat(
                    [m[key.replace("lora_A", "lora_B")] for m in per_member], dim=1
                )  # (out, N*r)
            except (KeyError, RuntimeError) as e:
                raise CorruptMemberError(
                    f"LoRA members disagree on {module} ({e}); regrow the odd one"
                ) from None
            p = params[name]
            left, right = (a.T, b.T) if stores_transposed(modules[module]) else (b, a)
            sites.append(
                _LoraSite(
                    param=p,
                    base=p.detach().clone(),
                    left=left.to(self.device, p.dtype).contiguous(),
                    right=right.to(self.device, p.dtype).contiguous(),
                    rank=spec.rank,
                    scaling=spec.alpha / spec.rank,
                    name=name,
                    transposed=stores_transposed(modules[module]),
                )
            )
        if not sites:
            raise CorruptMemberError("LoRA members hold no adapter weights; regrow the pool")
        return sites

    # ------------------------------------------------------------------ merging
    def merge(
        self,
        weights: torch.Tensor,
        *,
        method: MergeMethod | None = None,
        extrapolate: float | str = 1.0,
    ) -> None:
        """Write the merge of the members under ``weights`` (fp32 ``(N,)``) into the skeleton.

        ``method`` is a merge method (``ablate.engine.merges``; default: the layout's merge,
        the weighted average ``sum_i weights[i] * member_i`` unless ``--merge`` says
        otherwise); ``extrapolate`` names one by its ``--extrapolate`` value instead (a
        lambda, or a registered name such as ``"norm"``).
        """
        if self.unusable:
            self._check_usable([r for r in self.unusable if float(weights[r]) != 0.0])
        if method is None:  # the layout's merge (``--merge``) unless an extrapolation is asked
            method = self.layout.method if extrapolate == 1.0 else merge_method(extrapolate)
        method.apply(self, weights)

    @property
    def merges_deltas(self) -> bool:
        """Whether a merge writes the seed plus weighted member deltas (LoRA factors), so
        that scaling the weights scales the distance from the seed."""
        return self.method.merges_by_factors

    def weighted_sum_(self, weights: torch.Tensor) -> None:
        """``sum_i weights[i] * member_i`` into the skeleton (LoRA: ``W0 + scaling * sum_i
        weights[i] B_i A_i``): the primitive every merge method builds on."""
        if self.method.merges_by_factors:
            with torch.no_grad():
                for s in self._sites:
                    w = weights.to(self.device, s.left.dtype).repeat_interleave(s.rank)  # (N*r,)
                    # W = W0 + scaling * [w_1 B_1 ... w_N B_N] @ [A_1; ...; A_N]: one GEMM.
                    torch.addmm(s.base, s.left * w, s.right, alpha=s.scaling, out=s.param.data)
            return
        if not self.chunked:
            kernels.weighted_average(self.stack, weights.to(self.device), out=self.flat)
            return
        # Streamed: read only the members the mixture uses (a subset's others weigh 0).
        rows = torch.nonzero(weights).flatten().tolist()
        if not rows:
            self.flat.zero_()
            return
        w = weights[rows].to(self.device)
        for a, b, block in self._chunks(rows):
            kernels.weighted_average(block, w, out=self.flat[a:b])

    def precision_weighted_sum_(
        self, weights: torch.Tensor, precision: Precision = "fisher"
    ) -> None:
        """``sum_i w_i F_i theta_i / sum_i w_i F_i`` per parameter into the skeleton, where
        ``F_i`` is member i's diagonal ``precision``: its Fisher (``ablate.pool.fisher``), for
        ``"fisher_tensor"`` its Fisher scaled to mean 1 within each tensor, for
        ``"fisher_damped"`` that plus 1.

        Computed as ``avg + sum_i w_i F_i (theta_i - avg) / sum_i w_i F_i`` with ``avg`` the
        weighted average: the same quantity, but exactly the member for a one-member mixture
        and exactly ``avg`` where every weighted ``F_i`` is 0 (the fallback). LoRA pools: the
        adapted weights, ``theta_i`` the members' updates ``s B_i A_i`` and ``F_i`` their
        Fisher at the effective weights (``ablate.pool.fisher``); the rest is the seed.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        self.weighted_sum_(weights)  # avg, in place; also checks and handles streamed stacks
        rows = torch.nonzero(weights).flatten().tolist()
        if len(rows) < 2:
            return  # one member (or none): the average already is the answer, exactly
        w = weights[rows].to(self.device, torch.float32)  # (n,)
        if self.merges_deltas:
            for site, fisher in self._lora_precision(precision):
                avg = site.param.data - site.base  # the averaged update
                # Accumulated member by member: a few weight-sized temporaries, not three
                # (n, *param shape) stacks of every used member's Fisher and update.
                den, num = torch.zeros_like(avg), torch.zeros_like(avg)
                for k, r in enumerate(rows):
                    wf = fisher[r] * w[k]  # w_i F_i
                    den.add_(wf)
                    num.addcmul_(wf, site.delta(r) - avg)
                site.param.data.add_(torch.where(den > 0, num / den.clamp_min(_TINY), 0.0))
            return
        for a, b, theta, fisher in self._precision_blocks(rows, precision):
            wf = fisher * w[:, None]  # (n, cols) w_i F_i
            den = wf.sum(0)  # (cols,)
            num = (wf * (theta - self.flat[a:b])).sum(0)  # (cols,)
            self.flat[a:b].add_(torch.where(den > 0, num / den.clamp_min(_TINY), 0.0))

    def _precision_blocks(self, rows: Sequence[int], precision: Precision):
        """Yield (a, b, members, precision): rows' parameters and diagonal precision at
        columns [a, b), each ``(len(rows), b - a)`` on the device."""
        if not self.chunked:
            full = self._precision_stack(precision)  # (N, P), derived once per precision
            cols = 1 << 20  # bounds the (n, cols) temporaries
            for a in range(0, self.flat.numel(), cols):
                b = min(self.flat.numel(), a + cols)
                yield a, b, self.stack[rows, a:b], full[rows, a:b]
            return
        fisher, scale, stage = self._fisher_streams()
        factor = scale[rows].to(self.device) if precision in PER_TENSOR else None
        damping = DAMPING.get(precision)
        lengths = torch.tensor([b - a for a, b in self._offsets.values()], device=self.device)

        def columns(a: int, b: int) -> torch.Tensor:
            """``factor`` spread over columns [a, b): (n, b - a)."""
            k0 = bisect.bisect_right(self._starts, a) - 1
            k1 = bisect.bisect_left(self._starts, b)  # tensors k0 .. k1-1 overlap [a, b)
            seg = lengths[k0:k1].clone()
            seg[0] -= a - self._starts[k0]
            seg[-1] -= self._starts[k1 - 1] + int(lengths[k1 - 1]) - b
            return factor[:, k0:k1].repeat_interleave(seg, dim=1)

        # Two streams over the same columns, each through its own staging buffer.
        for (a, b, block), (_, _, f) in zip(
            self._chunks(rows), self._chunks(rows, fisher, stage=stage), strict=True
        ):
            if factor is not None:
                f = f * columns(a, b)  # a new tensor, not the staging buffer: damp it in place
                if damping is not None:
                    f.add_(damping)
            yield a, b, block, f

    def _precision_stack(self, precision: Precision) -> torch.Tensor:
        """The members' precision as one ``(N, P)`` device tensor beside an in-memory stack,
        the per-tensor scaling applied once; kept for the precision last asked for (an
        evaluator merges by one), rebuilt from disk if another is asked."""
        if self._fisher is None or self._fisher[0] != precision:
            self._fisher = None  # free the other precision's tensor before building this one
            per_member, scale = self._read_fisher()
            full = torch.stack([torch.cat(m) for m in per_member]).float()  # (N, P)
            if precision in PER_TENSOR:
                lengths = torch.tensor([b - a for a, b in self._offsets.values()])
                full.mul_(scale.repeat_interleave(lengths, dim=1))
            if precision in DAMPING:
                full.add_(DAMPING[precision])
            self._fisher = (precision, full.to(self.device))
        return self._fisher[1]

    def _lora_precision(self, precision: Precision) -> list[tuple[_LoraSite, torch.Tensor]]:
        """Each adapted weight with the members' precision stacked ``(N, *param shape)`` on
        the device (scaled and damped as ``precision`` says), kept for the precision last
        asked for, like ``_precision_stack``."""
        if self._fisher is None or self._fisher[0] != precision:
            self._fisher = None
            names = [s.name for s in self._sites]
            per_member, scale = self._read_fisher(names)
            stacks = []
            for k, site in enumerate(self._sites):
                f = torch.stack([m[k].view_as(site.param) for m in per_member]).float()
                if precision in PER_TENSOR:
                    f.mul_(scale[:, k].view(-1, *([1] * site.param.dim())))
                if precision in DAMPING:
                    f.add_(DAMPING[precision])
                stacks.append((site, f.to(self.device)))
            self._fisher = (precision, stacks)
        return self._fisher[1]

    def _fisher_streams(self):
        """``(per-member flat views, (N, T) factors, (device, host) staging buffers)`` for a
        streamed stack: the Fisher streams through its own buffers like the members do."""
        if self._fisher is None:
            per_member, scale = self._read_fisher()
            stage = torch.empty_like(self._stage)
            host = (
                stage
                if self._host is self._stage
                else torch.empty(self._host.shape, dtype=self._host.dtype, pin_memory=True)
            )
            self._fisher = (per_member, scale, (stage, host))
        return self._fisher

    def _read_fisher(self, names: Sequence[str] | None = None):
        """Members' diagonal Fisher of ``names`` (default: every parameter, in the stack's
        order) as flat views, and ``(N, T)`` factors that scale each member's tensors to mean
        1 (1 where a tensor's Fisher is all 0). An unusable member's rows are zeros (its
        weight is 0 in any merge that runs)."""
        from ablate.pool.fisher import load_fisher
        from ablate.pool.storage import FISHER

        names = list(self._offsets) if names is None else list(names)
        numel = {name: p.numel() for name, p in self._params}
        per_member = []
        for i, rec in enumerate(self.members):
            if i in self.unusable:
                zero = torch.zeros(1)
                per_member.append([zero.expand(numel[name]) for name in names])
                continue
            f = load_fisher(self.pool, rec)
            if set(f) != set(names):
                raise PoolError(
                    f"the Fisher of member {rec.member_id} does not match its weights; "
                    f"rerun {FISHER.command(self.pool.path, force=True)}"
                )
            per_member.append([f[name].reshape(-1) for name in names])
        means = torch.tensor([[float(t.double().mean()) for t in m] for m in per_member])
        scale = torch.where(means > 0, 1.0 / means.clamp_min(_TINY), 1.0).float()  # (N, T)
        return per_member, scale

    def regression_merge_(self, weights: torch.Tensor, shrink: float = 0.9) -> None:
        """RegMean (``ablate.engine.merges.regmean``) into the skeleton: each linear weight
        ``(sum_i w_i G_i)^-1 sum_i w_i G_i W_i^T`` from the members' input Grams ``G_i``
        (``ablate.pool.gram``; off-diagonal scaled by ``shrink``), input-embedding rows
        weighted by the members' token counts, everything else the weighted average (LoRA
        pools: the adapted weights from the members' updates, the rest is the seed).

        A one-member mixture is exactly that member. Input directions no member's data
        excites (a zero Gram there) keep the weighted average instead of an arbitrary value.
        """
        self.weighted_sum_(weights)  # the average: the answer for everything not solved below
        rows = torch.nonzero(weights).flatten().tolist()
        if len(rows) < 2:
            return
        w = weights[rows].to(self.device, torch.float64)  # (n,)
        if self.merges_deltas:
            for site, grams in self._regmean_sites(shrink):
                deltas = torch.stack([site.delta(r) for r in rows])  # (n, *param shape)
                avg = site.param.data - site.base  # the averaged update
                merged = _regmean(grams[rows], deltas, w, site.transposed, avg)
                site.param.data.copy_(site.base + merged.to(site.param.dtype))
            return
        for k, (a, b), shape, transposed, grams in self._regmean_sites(shrink):
            theta = self._member_tensor(rows, k, a, b).view(len(rows), *shape)
            out = self.flat[a:b].view(shape)
            if grams.dim() == 2:  # token frequencies (N, vocab): the input embedding's rows
                c = grams[rows] * w[:, None]  # (n, V)
                den = c.sum(0)  # (V,)
                rows_ = (c[:, :, None] * theta.double()).sum(0) / den.clamp_min(_TINY)[:, None]
                out.copy_(torch.where(den[:, None] > 0, rows_, out.double()).to(out.dtype))
                continue
            out.copy_(_regmean(grams[rows], theta, w, transposed, out).to(out.dtype))

    def _member_tensor(self, rows: Sequence[int], k: int, a: int, b: int) -> torch.Tensor:
        """Members ``rows``' parameter ``k`` (flat columns [a, b)) as ``(n, b - a)`` on the
        device, from the stack or, when streamed, from the memory-mapped files."""
        if not self.chunked:
            return self.stack[rows, a:b]
        return torch.stack([self._mapped[r][k] for r in rows]).to(self.device)

    def _regmean_sites(self, shrink: float) -> list:
        """What ``regression_merge_`` solves, prepared once per ``shrink`` (a merge runs
        thousands of times per study): for each weight with a Gram, its place in the stack
        and every member's Gram stacked ``(N, in, in)`` in float64 with the off-diagonal
        scaled by ``shrink`` (token frequencies ``(N, vocab)`` for the input embedding);
        LoRA pools: ``(site, grams)``. An unusable member's Grams are zeros (its weight is 0
        in any merge that runs)."""
        if self._regmean is None or self._regmean[0] != shrink:
            from ablate.pool.gram import load_gram
            from ablate.pool.storage import GRAM

            per_member = []
            for i, rec in enumerate(self.members):
                got = {} if i in self.unusable else load_gram(self.pool, rec)
                unknown = set(got) - set(self._offsets)
                if unknown:
                    raise PoolError(
                        f"the Grams of member {rec.member_id} do not match its weights "
                        f"({sorted(unknown)[:2]}); rerun {GRAM.command(self.pool.path, force=True)}"
                    )
                per_member.append(got)
            good = next((m for m in per_member if m), {})
            # Layers that read one input share one stored Gram (``GramRecord.shares``), loaded
            # as one tensor under each name: they share one stack too.
            done: dict[tuple, torch.Tensor] = {}

            def stacked(name: str) -> torch.Tensor | None:
                if name not in good or any(m and name not in m for m in per_member):
                    return None
                key = tuple(id(m[name]) if m else None for m in per_member)
                if key in done:
                    return done[key]
                g = torch.stack(
                    [m[name] if m else torch.zeros_like(good[name]) for m in per_member]
                ).to(self.device, torch.float64)
                if g.dim() == 3 and shrink != 1.0:
                    diag = torch.diagonal(g, dim1=1, dim2=2)  # (N, in)
                    g = shrink * g + (1.0 - shrink) * torch.diag_embed(diag)
                done[key] = g
                return g

            if self.merges_deltas:
                sites = [(s, g) for s in self._sites if (g := stacked(s.name)) is not None]
            else:
                modules = dict(self.model.named_modules())
                shapes = {name: p.shape for name, p in self._params}
                sites = [
                    (
                        k,
                        span,
                        shapes[name],
                        stores_transposed(modules[name.rsplit(".", 1)[0]]),
                        g,
                    )
                    for k, (name, span) in enumerate(self._offsets.items())
                    if (g := stacked(name)) is not None
                ]
            self._regmean = (shrink, sites)
        return self._regmean[1]

    def add_seed_(self, alpha: float) -> None:
        """``skeleton += alpha * theta_0`` (full-weight pools; the seed loads on first use)."""
        if self.merges_deltas:
            raise ValueError("LoRA merges are relative to the seed already")
        self.flat.add_(self._seed_flat(), alpha=alpha)

    @property
    def layout(self) -> MemberLayout:
        """Which rows each mixture weighs (the pool's layout unless one was given)."""
        if self._layout is None:
            self._layout = MemberLayout(self.pool)
        return self._layout

    def load(self, mixture: Mixture, *, method: MergeMethod | None = None) -> None:
        """Put ``mixture``'s merged weights into the skeleton (``method``: see ``merge``)."""
        self.merge(torch.from_numpy(self.layout.member_weights(mixture)).float(), method=method)

    def visit(self, mixtures: Sequence[Mixture]) -> Iterator[Mixture]:
        """Load each of ``mixtures`` in turn and yield it while the skeleton holds it.

        Uniform subsets come first, in Gray-code order through the running-sum ``walk``
        (where the pool's method allows it), then every other mixture merged one by one.
        """
        walk, rest = self.layout.walk_order(mixtures)
        for i in self.walk([m.names for m in walk], self.layout.rows_of):
            yield walk[i]
        for m in rest:
            self.load(m)
            yield m

    def update_gram(self) -> np.ndarray:
        """``G[i, j] = <theta_i - theta_0, theta_j - theta_0>`` (float64 ``(N, N)``, numpy;
        computed once, in column chunks of the stack)."""
        if self._gram is None:
            if self.method.merges_by_factors:
                raise ValueError("update norms are computed for full-weight pools only")
            seed = self._seed_flat()
            rows = list(range(len(self.members)))
            self._check_usable(rows)
            g = torch.zeros(len(rows), len(rows), dtype=torch.float64)
            if self.chunked:
                blocks = self._chunks(rows)
            else:
                cols = 1 << 20
                blocks = (
                    (a, min(a + cols, seed.numel()), self.stack[:, a : a + cols])
                    for a in range(0, seed.numel(), cols)
                )
            for a, b, block in blocks:
                d = block.double() - seed[a:b].double()  # (N, cols) updates
                g += (d @ d.T).cpu()
            self._gram = g.numpy().astype(np.float64)
        return self._gram

    def _seed_flat(self) -> torch.Tensor:
        """The seed model's parameters ``(P,)`` in the stack's layout (loaded on first use)."""
        if self._seed is None:
            params = dict(self.pool.load_base_model().named_parameters())
            self._seed = torch.cat(
                [params[name].detach().reshape(-1) for name, _ in self._params]
            ).to(self.device, self.flat.dtype)
        return self._seed

    @property
    def supports_walks(self) -> bool:
        """Whether ``walk`` applies: running sums of members need a full-weight pool (in
        memory or streamed); LoRA members merge through their factors instead."""
        return self.method.running_sum_walks

    def walk(
        self, subsets: Iterable[Sequence[str]], rows_of: Mapping[str, Sequence[int]]
    ) -> Iterator[int]:
        """Merge each uniform subset of partitions in turn; yield its index once merged.

        Keeps R = sum of the current partitions' member means; a step flips only the
        partitions that differ from the previous subset, so subsets in Gray-code order
        (``ablate.engine.layout``) cost one member update each instead of a full merge.

        Args:
            subsets: Partition names of each uniform subset, in walk order.
            rows_of: Stack rows of each partition's members.
        """
        subsets = list(subsets)
        if subsets and not self.supports_walks:
            raise ValueError(f"running-sum walks need a full-weight pool, not {self.method.name}")
        running = torch.zeros(self.flat.numel(), dtype=torch.float32, device=self.device)  # (P,)
        current: set[str] = set()
        for i, names in enumerate(subsets):
            target = set(names)
            flips = current ^ target
            if len(flips) >= len(target):  # cheaper to rebuild than to patch
                running.zero_()
                flips, current = target, set()
            for p in flips:
                sign = 1.0 if p not in current else -1.0
                rows = rows_of[p]
                for r in rows:
                    self.add_member_(running, r, alpha=sign / len(rows))  # streams when chunked
            current = target
            kernels.weighted_average(running.unsqueeze(0), [1.0 / len(target)], out=self.flat)
            yield i

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Whatever the skeleton holds now is back on exit: scoring another model in
        between (the seed, a partition) leaves a merge or a walk in progress as it was."""
        held = self.flat.clone()
        try:
            yield
        finally:
            self.flat.copy_(held)

    def load_state(self, tensors: Mapping[str, torch.Tensor], what: str) -> None:
        """Put a whole model's parameters (by name, as the seed model names them) into the
        skeleton, e.g. a really trained model that validation scores like a merge.

        Raises:
            CorruptMemberError: ``tensors`` are not the seed model's parameters; ``what``
                names the model in the message.
        """
        params = dict(self._params)
        if set(tensors) != set(params):
            odd = sorted(set(tensors) ^ set(params))[:3]
            raise CorruptMemberError(f"{what} does not match the seed model's architecture ({odd})")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name].reshape(p.shape))

    def flatten(self, per_parameter: Sequence[torch.Tensor]) -> torch.Tensor:
        """One fp32 vector ``(P,)`` in the stack's column layout from one tensor per
        parameter of ``model.parameters()`` (e.g. gradients), to dot with member rows."""
        if len(per_parameter) != len(self._params):
            raise ValueError(f"need {len(self._params)} tensors, got {len(per_parameter)}")
        return torch.cat([t.reshape(-1).float() for t in per_parameter])

    def add_member_(self, out: torch.Tensor, row: int, alpha: float = 1.0) -> None:
        """``out += alpha * member[row]`` (out: [P] on the device); subset walks patch with it."""
        self._check_usable([row])
        if not self.chunked:
            out.add_(self.stack[row], alpha=alpha)
            return
        for a, b, block in self._chunks([row]):
            out[a:b].add_(block[0], alpha=alpha)

    def member_row(self, row: int) -> torch.Tensor:
        """One member's flat parameters [P] on the device (a view of the stack when it is in memory)."""
        self._check_usable([row])
        if not self.chunked:
            return self.stack[row]
        out = torch.zeros_like(self.flat)
        self.add_member_(out, row)
        return out

    def _chunks(self, rows: Sequence[int], mapped=None, stage=None):
        """Yield (a, b, block): members ``rows`` at columns [a, b) as a device block
        [len(rows), b - a]; ``mapped``/``stage`` stream other per-member tensors of the same
        layout (the Fisher) through their own (device, host) buffers."""
        mapped = self._mapped if mapped is None else mapped
        stage_buf, host_buf = (self._stage, self._host) if stage is None else stage
        cols = stage_buf.shape[1]
        names = list(self._offsets.values())
        for a in range(0, self.flat.numel(), cols):
            b = min(self.flat.numel(), a + cols)
            host = host_buf[: len(rows), : b - a]  # (len(rows), b - a)
            k = bisect.bisect_right(self._starts, a) - 1  # first tensor that overlaps [a, b)
            while k < len(names) and names[k][0] < b:
                s, e = names[k]
                lo, hi = max(a, s), min(b, e)
                for j, r in enumerate(rows):
                    host[j, lo - a : hi - a].copy_(mapped[r][k][lo - s : hi - s])
                k += 1
            block = stage_buf[: len(rows), : b - a]
            if block.data_ptr() != host.data_ptr():
                block.copy_(host)  # blocking: the next chunk refills `host`
            yield a, b, block


def _regmean(
    grams: torch.Tensor,
    members: torch.Tensor,
    w: torch.Tensor,
    transposed: bool,
    fallback: torch.Tensor,
) -> torch.Tensor:
    """``(sum_i w_i G_i)^-1 sum_i w_i G_i W_i^T`` for one linear weight, in float64.

    ``grams`` (n, in, in) float64, off-diagonal already shrunk; ``members`` (n, out, in), or
    (n, in, out) when ``transposed`` (Conv1D); ``w`` (n,); ``fallback`` (the weight's shape):
    the value along input directions no member excites, through a ridge toward it that is
    negligible elsewhere (``RIDGE`` of the mean diagonal). Returns the merged weight in
    ``members``' orientation.
    """
    wt = members.double() if transposed else members.double().transpose(1, 2)  # (n, in, out)
    fb = fallback.double() if transposed else fallback.double().T  # (in, out)
    wg = grams * w[:, None, None]  # (n, in, in): w_i G_i
    lhs = wg.sum(0)  # (in, in)
    rhs = torch.bmm(wg, wt).sum(0)  # (in, out)
    ridge = RIDGE * float(lhs.diagonal().mean().clamp_min(_TINY))
    eye = torch.eye(lhs.shape[0], dtype=lhs.dtype, device=lhs.device)
    solved = torch.linalg.solve(lhs + ridge * eye, rhs + ridge * fb)  # (in, out)
    return solved if transposed else solved.T


def _stack_budget(device: torch.device) -> int:
    """Bytes the stack may take on ``device``: a share of what is free there now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * STACK_FRACTION)
    try:  # CPU: RAM that is available without swapping (Linux); page cache counts as free
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return int(kib * 1024 * STACK_FRACTION)
    except (OSError, StopIteration, ValueError):
        return sys.maxsize


def _unique_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters in a fixed order, tied weights once (same as what members store)."""
    return list(model.named_parameters())
