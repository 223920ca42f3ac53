"""What ablate needs to know about a model's architecture: which layers LoRA adapts, and
how its output head makes logits (``lm_head``: scale, bias, soft-cap).

Users bring Llama, GPT-2, GPT-NeoX (Pythia), Qwen, Gemma, Phi or OLMo checkpoints, whose
linear layers have different names (``q_proj``, GPT-2's fused ``c_attn``, NeoX's
``query_key_value``, Phi-3's ``qkv_proj``). A LoRA pool's targets are resolved once, at
``pool init``, against the real model and recorded by name in ``recipe.lora.target_modules``
(``pool.json`` and every ``member.json``), so the record says what was adapted:

* no names given: peft's choice for the model type
  (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``), else every linear layer but
  the LM head (what peft's ``all-linear`` shorthand selects);
* ``all-linear``: every linear layer but the LM head;
* names: each must name a linear layer of the model, else the refusal lists the ones it has.

"Linear" means ``torch.nn.Linear`` or transformers' ``Conv1D`` (GPT-2), which holds its
weight transposed, ``[in, out]``; ``stores_transposed`` tells the merge engine so.

LoRA: Hu et al., ICLR 2022. peft: Mangrulkar et al., https://github.com/huggingface/peft.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ablate.pool.errors import PoolError

if TYPE_CHECKING:
    import torch
    from torch import nn

ALL_LINEAR = "all-linear"  # peft's INCLUDE_LINEAR_LAYERS_SHORTHAND, spelt the same way


def _linear_types() -> tuple[type, ...]:
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def stores_transposed(module: nn.Module) -> bool:
    """Whether ``module`` keeps its weight as ``[in, out]`` (transformers' ``Conv1D``, GPT-2),
    the transpose of ``nn.Linear``'s ``[out, in]``."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def linear_layer_names(model: nn.Module) -> tuple[str, ...]:
    """Sorted leaf names of the model's linear layers, the LM head excluded.

    A leaf name is the last part of a module path (``c_attn`` for
    ``transformer.h.0.attn.c_attn``), as peft matches ``target_modules``. A name that the LM
    head or any non-linear module also carries is left out: adapting it would adapt those
    too (the head's LoRA cannot be merged into a tied embedding).
    """
    linear = _linear_types()
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    names: set[str] = set()
    excluded: set[str] = set()
    for path, module in model.named_modules():
        if not path:
            continue
        leaf = path.rsplit(".", 1)[-1]
        if module is head or not isinstance(module, linear):
            excluded.add(leaf)
        else:
            names.add(leaf)
    return tuple(sorted(names - excluded))


@dataclass(frozen=True)
class LMHead:
    """How a causal LM turns final hidden states ``h`` into logits:
    ``softcap(h @ weight.T * logit_scale + bias)``, ``softcap(x) = c * tanh(x / c)``."""

    weight: torch.Tensor  # (V, H); V may exceed the tokenizer's size (padded rows)
    bias: torch.Tensor | None  # (V,)
    logit_scale: float  # Cohere multiplies logits by config.logit_scale, Granite divides
    softcap: float | None  # Gemma 2/3: config.final_logit_softcapping


def lm_head(model: nn.Module) -> LMHead:
    """The output head of a Hugging Face causal LM as ``kernels.token_nll`` takes it."""
    head = model.get_output_embeddings()
    cfg = model.config
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)
    divide = getattr(cfg, "logits_scaling", None)  # Granite: logits / logits_scaling
    if divide:
        scale /= float(divide)
    cap = getattr(cfg, "final_logit_softcapping", None)
    return LMHead(head.weight, getattr(head, "bias", None), scale, float(cap) if cap else None)


def check_head(model: nn.Module, tokens: int = 8) -> None:
    """Refuse a model whose logits are not what ``lm_head`` says they are.

    The scorer never runs the model's own head (it fuses head and log-softmax in
    ``kernels.token_nll``), so a head that does more than ``lm_head`` knows of would be
    scored wrongly without a sign; ``pool init`` runs this once on a few tokens instead.

    Raises:
        PoolError: The logits differ; the message names the architecture.
    """
    import torch

    head = lm_head(model)
    vocab = head.weight.shape[0]
    ids = (torch.arange(tokens) * 7919 % vocab).unsqueeze(0).to(head.weight.device)  # (1, T)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()  # (T, V)
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0].float()
        ours = hidden @ head.weight.float().T * head.logit_scale  # (T, V)
        if head.bias is not None:
            ours += head.bias.float()
        if head.softcap is not None:
            ours = head.softcap * torch.tanh(ours / head.softcap)
    err = float((ours - logits).abs().max() / logits.abs().max().clamp_min(1e-6))
    # fp32 agrees to rounding; half precision rounds the model's own logits (2^-8 relative).
    tol = 1e-4 if head.weight.dtype == torch.float32 else 3e-2
    if not err <= tol:
        raise PoolError(
            f"this {model_type(model)} model's logits are not softcap(hidden @ W.T * scale + "
            f"bias) of its final hidden states (relative difference {err:.1e}), which is how "
            "ablate scores them; its output head is not supported (docs/models.md)"
        )


def model_type(model: nn.Module) -> str:
    """The Hugging Face ``config.model_type`` (``"llama"``, ``"gpt2"``, ...), or ``"?"``."""
    return str(getattr(getattr(model, "config", None), "model_type", None) or "?")


def peft_default_targets(kind: str) -> tuple[str, ...] | None:
    """peft's LoRA targets for a model type, or None when peft has no entry for it."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    names = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(kind)
    return tuple(names) if names else None


def lora_targets(model: nn.Module, requested: Sequence[str] = ()) -> tuple[str, ...]:
    """The linear-layer leaf names LoRA adapts in ``model``, resolved from ``requested``.

    Args:
        model: The seed model (plain, not yet wrapped by peft).
        requested: ``()`` for the architecture's default, ``("all-linear",)``, or names.

    Raises:
        PoolError: A requested name is not a linear layer of ``model`` (the message lists
            the ones it has), or the model has no linear layer LoRA could adapt.
    """
    available = linear_layer_names(model)
    kind = model_type(model)
    if not available:
        raise PoolError(
            f"this {kind} model has no linear layers besides its LM head for LoRA to adapt; "
            "use --method full"
        )
    if not requested:
        peft_names = peft_default_targets(kind) or ()
        chosen = tuple(n for n in peft_names if n in available)
        return chosen or available
    if tuple(requested) == (ALL_LINEAR,):
        return available
    unknown = [n for n in requested if n not in available]
    if unknown:
        raise PoolError(
            f"LoRA target(s) {', '.join(unknown)} name no linear layer of this {kind} model; "
            f"its linear layers are: {', '.join(available)} "
            f"(pass some of them to --lora-targets, or --lora-targets {ALL_LINEAR})"
        )
    return tuple(dict.fromkeys(requested))  # in the given order, each once


def targets_transposed(model: nn.Module, targets: Sequence[str]) -> bool:
    """Whether any module that ``targets`` name keeps its weight transposed (``Conv1D``):
    peft's ``fan_in_fan_out`` must then be set."""
    wanted = set(targets)
    return any(
        path.rsplit(".", 1)[-1] in wanted and stores_transposed(module)
        for path, module in model.named_modules()
    )


__all__ = [
    "ALL_LINEAR",
    "LMHead",
    "check_head",
    "linear_layer_names",
    "lm_head",
    "lora_targets",
    "model_type",
    "peft_default_targets",
    "stores_transposed",
    "targets_transposed",
]
