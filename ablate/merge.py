"""The merge engine: members stacked once, any mixture merged in one kernel call.

Full pools: every member's parameters are flattened into one row of a ``[N, P]`` stack and
one model skeleton's parameters are *views* into one flat ``[P]`` buffer, so writing the
merged vector into that buffer *is* loading the merged model (no state-dict copy). A merge
is one ``kernels.weighted_average`` call; subset walks keep a running sum and cost one row
update per step (Gray code). LoRA pools merge exactly: sum_i w_i B_i A_i is one GEMM of the
concatenated factors per adapted weight, added onto the seed weight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import kernels
from pool import Pool
from pool.errors import CorruptMemberError
from pool.storage import MemberRecord
from pool.weights import load_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _LoraSite:
    """One adapted linear layer: concatenated factors of all members."""

    param: torch.Tensor  # the skeleton's weight [out, in], a view into the flat buffer
    base: torch.Tensor  # seed weight [out, in]
    a: torch.Tensor  # [N * r, in], members' A stacked along rows
    b: torch.Tensor  # [out, N * r], members' B stacked along columns
    rank: int
    scaling: float


class MergedModel:
    """A model skeleton whose weights are a weighted average of pool members."""

    def __init__(self, pool: Pool, members: Sequence[MemberRecord], *, device: torch.device, progress: bool = True):
        if not members:
            raise CorruptMemberError("the pool has no trained members; run `ablate pool grow` first")
        self.pool = pool
        self.members = list(members)
        self.device = device
        self.method = pool.manifest.recipe.method
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
        if self.method == "lora":
            self._sites = self._load_lora(progress)
        else:
            self.stack = self._load_full(progress)  # [N, P]

    # ------------------------------------------------------------------ loading
    def _read(self, rec: MemberRecord) -> dict[str, torch.Tensor]:
        self.pool.check_member(rec)
        return load_tensors(self.pool.weights_path(rec), sha256=rec.weights_sha256)

    def _load_full(self, progress: bool) -> torch.Tensor:
        from tqdm.auto import tqdm

        stack = torch.empty(len(self.members), self.flat.numel(), dtype=self.flat.dtype, device=self.device)
        expected = set(self._offsets)
        for i, rec in enumerate(tqdm(self.members, desc="load members", disable=not progress, leave=False)):
            tensors = self._read(rec)
            if set(tensors) != expected:
                extra = sorted(set(tensors) - expected)[:3]
                lacking = sorted(expected - set(tensors))[:3]
                raise CorruptMemberError(
                    f"member {rec.member_id} does not have the seed model's architecture "
                    f"(unexpected {extra}, missing {lacking}); delete it and run `ablate pool grow`"
                )
            for name, (a, b) in self._offsets.items():
                t = tensors[name]
                if t.numel() != b - a:
                    raise CorruptMemberError(
                        f"member {rec.member_id}: tensor {name} has shape {tuple(t.shape)}, "
                        "which does not match the seed model; delete it and regrow"
                    )
                stack[i, a:b].copy_(t.reshape(-1))
        return stack

    def _load_lora(self, progress: bool) -> list[_LoraSite]:
        from tqdm.auto import tqdm

        spec = self.pool.manifest.recipe.lora
        per_member = [
            self._read(rec) for rec in tqdm(self.members, desc="load adapters", disable=not progress, leave=False)
        ]
        params = dict(self._params)
        sites = []
        for key in sorted(k for k in per_member[0] if k.endswith("lora_A.weight")):
            module = key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
            name = f"{module}.weight"
            if name not in params:
                raise CorruptMemberError(f"adapter tensor {key} has no matching weight {name} in the seed model")
            try:
                a = torch.cat([m[key] for m in per_member])  # (N*r, in)
                b = torch.cat([m[key.replace("lora_A", "lora_B")] for m in per_member], dim=1)  # (out, N*r)
            except (KeyError, RuntimeError) as e:
                raise CorruptMemberError(f"LoRA members disagree on {module} ({e}); regrow the odd one") from None
            p = params[name]
            sites.append(
                _LoraSite(
                    param=p,
                    base=p.detach().clone(),
                    a=a.to(self.device, p.dtype),
                    b=b.to(self.device, p.dtype),
                    rank=spec.rank,
                    scaling=spec.alpha / spec.rank,
                )
            )
        if not sites:
            raise CorruptMemberError("LoRA members hold no adapter weights; regrow the pool")
        return sites

    # ------------------------------------------------------------------ merging
    def merge(self, weights: torch.Tensor) -> None:
        """Write sum_i weights[i] * member_i into the skeleton (weights: fp32 [N])."""
        if self.method == "lora":
            with torch.no_grad():
                for s in self._sites:
                    w = weights.to(self.device, s.b.dtype).repeat_interleave(s.rank)  # (N*r,)
                    # W = W0 + scaling * [w_1 B_1 ... w_N B_N] @ [A_1; ...; A_N]: one GEMM.
                    torch.addmm(s.base, s.b * w, s.a, alpha=s.scaling, out=s.param.data)
            return
        kernels.weighted_average(self.stack, weights.to(self.device), out=self.flat)

    def set_flat(self, values: torch.Tensor) -> None:
        """Load an already merged parameter vector (full pools; used by subset walks)."""
        self.flat.copy_(values)


def _unique_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters in a fixed order, tied weights once (same as what members store)."""
    return list(model.named_parameters())
