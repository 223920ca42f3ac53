"""The training recipe every member of a pool shares, and the tiny seed model's shape.

The paper's claim (Na et al., EMNLP 2024) holds when every member is continued from the
same seed with the same recipe and the same token budget per base unit; the recipe is
therefore fixed once, in ``pool.json``, and recorded again in every member.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from ablate.pool.architectures import ALL_LINEAR

MethodName = Literal["full", "lora"]  # the training methods in pool.method.METHODS
MemberSchedule = Literal["cosine", "constant"]
MemberPreconditioner = Literal["fresh", "seed"]
# Levers that change how members train and nothing else: the seed and the real validation
# models train by ``Recipe.real()``, which resets them. Each is left out of the recipe's
# serialised form while it holds its default, so pools made before they existed keep
# their pool.json, their keys and their hashes.
MEMBER_ONLY = (
    "member_seed_share",
    "member_schedule",
    "member_lr",
    "member_preconditioner",
    "member_order_seed",
)
_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a module's leaf name, or all-linear


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraSpec(_Frozen):
    """peft LoRA settings, used by pools whose method is LoRA."""

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout during training.")
    target_modules: tuple[str, ...] = Field(
        (),
        description=(
            "Linear layers that get adapters, by leaf name (e.g. q_proj,v_proj), or all-linear "
            "(every linear layer but the LM head); empty: peft's choice for the architecture, "
            "else all-linear. Resolved at pool init; pool.json records the names used."
        ),
    )

    @field_validator("target_modules")
    @classmethod
    def _plain_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for n in names:
            if not _MODULE_NAME.fullmatch(n):
                raise ValueError(
                    f"LoRA target {n!r} is not a module name (letters, digits, _ and -, "
                    "e.g. q_proj or query_key_value)"
                )
        if ALL_LINEAR in names and len(names) > 1:
            raise ValueError(f"{ALL_LINEAR} selects every linear layer; give it alone")
        return names


class Recipe(_Frozen):
    """Continued pre-training recipe shared by all members (and validation models)."""

    method: MethodName = Field(
        "full", description="Train all weights (full) or a peft LoRA adapter (lora)."
    )
    unit_tokens: int = Field(
        100_000, ge=1, description="Tokens per base unit; every member trains on this many tokens."
    )
    seq_len: int = Field(128, ge=8, le=1 << 17, description="Training sequence length in tokens.")
    batch_size: int = Field(16, ge=1, description="Sequences per optimizer step.")
    lr: float = Field(1e-3, gt=0, lt=10, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")
    seed: int = Field(0, ge=0, description="Seed for data order and initialisation.")
    lora: LoraSpec = Field(default_factory=LoraSpec)
    member_seed_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "Share of every member's training tokens drawn from the seed data, which the pool "
            "keeps (members stay closer to the seed; real validation models never mix it in)."
        ),
    )
    member_schedule: MemberSchedule = Field(
        "cosine",
        description=(
            "Members' learning-rate schedule: cosine (warmup, then cosine decay, as real "
            "training) or constant (a flat rate from the first step, no warmup or decay)."
        ),
    )
    member_lr: float | None = Field(
        None,
        gt=0,
        lt=10,
        description="Members' learning rate (default: lr); real validation models train at lr.",
    )
    member_preconditioner: MemberPreconditioner = Field(
        "fresh",
        description=(
            "Members' AdamW second moments at their first step: fresh (zero, a new run) or "
            "seed (estimated once on the seed data at the seed's weights and shared by every "
            "member, as if each continued the seed's optimizer; full-weight pools with "
            "--seed-data)."
        ),
    )
    member_order_seed: int | None = Field(
        None,
        ge=0,
        description=(
            "Seed for the members' data order and their Fisher and Gram batches (default: "
            "seed). Another value grows the same members with fresh training noise (same "
            "seed model, units and real validation models): how much a pool's decisions "
            "depend on its members' luck."
        ),
    )

    @model_serializer(mode="wrap")
    def _omit_default_levers(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in MEMBER_ONLY:
            if name in data and getattr(self, name) == Recipe.model_fields[name].default:
                del data[name]
        return data

    @property
    def has_member_levers(self) -> bool:
        """True when members train differently from a plain run of this recipe."""
        return any(getattr(self, n) != Recipe.model_fields[n].default for n in MEMBER_ONLY)

    def real(self) -> Recipe:
        """The recipe of a real training run (seed, validation models): no member-only levers.

        A user who trains a model on a mixture trains it plainly; the levers exist to make
        merged members predict that run, so the ground truth must never use them.
        """
        if not self.has_member_levers:
            return self
        return self.model_copy(update={n: Recipe.model_fields[n].default for n in MEMBER_ONLY})

    @property
    def member_rng_seed(self) -> int:
        """The seed members and their statistics draw from (``member_order_seed`` when set)."""
        return self.seed if self.member_order_seed is None else self.member_order_seed

    @property
    def train_lr(self) -> float:
        """The peak learning rate this recipe trains at (``member_lr`` when set)."""
        return self.member_lr if self.member_lr is not None else self.lr

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def steps_for(self, tokens: int) -> int:
        """Optimizer steps that cover ``tokens`` training tokens (at least one)."""
        return max(1, -(-tokens // self.tokens_per_step))


class TinyModelSpec(_Frozen):
    """Shape of the Llama-style seed model that ``--base tiny`` trains from scratch."""

    vocab_size: int = Field(4096, ge=260, le=65_535, description="BPE vocabulary size.")
    hidden_size: int = Field(128, ge=16, description="Model width.")
    layers: int = Field(4, ge=1, description="Transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate_size: int = Field(384, ge=16, description="MLP width.")
    # 8 default units: members of a seed trained on several units' worth of tokens stay in
    # one basin, and their averages rank mixtures as real training does (docs/accuracy.md,
    # the demo pool); 2.5 units ranked balanced mixtures poorly there.
    seed_tokens: int = Field(
        800_000, ge=1_000, description="Seed-data tokens the seed model trains on."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelSpec:
        if self.hidden_size % self.heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}"
            )
        return self
