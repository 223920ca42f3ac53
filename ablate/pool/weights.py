"""Member weights on disk: written and read back as safetensors, and LoRA's peft wrapper.

Which tensors a member saves, and under which file name, is its training method's choice
(``ablate.pool.method``: full members store every parameter, LoRA members only the adapter).
Reads go through safetensors (never pickle) and can be checked against the sha256 recorded
at write time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.pool.architectures import lora_targets, targets_transposed
from ablate.pool.atomic import sha256_file
from ablate.pool.errors import CorruptMemberError
from ablate.pool.recipe import LoraSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def wrap_lora(model: PreTrainedModel, spec: LoraSpec) -> PreTrainedModel:
    """Freeze ``model`` and attach fresh LoRA adapters (peft) to the layers ``spec`` names.

    The names are resolved against ``model`` (``ablate.pool.architectures.lora_targets``): a pool
    records resolved names, so this only checks them; an empty ``spec`` (a recipe that did
    not go through ``pool init``) gets the architecture's default.

    Raises:
        PoolError: A target names no linear layer of ``model`` (the message lists them).
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, spec.target_modules)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(targets),
        # GPT-2's Conv1D stores W as [in, out]; peft must know to transpose B @ A.
        fan_in_fan_out=targets_transposed(model, targets),
    )
    with peft_quietly():
        return get_peft_model(model, config)


@contextmanager
def peft_quietly() -> Iterator[None]:
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps or
    loads a model: a warning about two other libraries that a user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Write tensors as safetensors into a staged folder; returns the file's sha256."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    return sha256_file(path)


def load_tensors(
    path: str | os.PathLike, *, sha256: str | None = None, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a member's tensors; with ``sha256`` the file is checked before it is used."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CorruptMemberError(
            f"{path} is missing; run `ablate pool grow` to retrain that member"
        )
    if sha256 is not None and sha256_file(path) != sha256:
        raise CorruptMemberError(
            f"{path} does not match the sha256 recorded when it was written (corrupt or modified); "
            "delete its member folder and run `ablate pool grow` to retrain it"
        )
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as e:
        raise CorruptMemberError(
            f"{path} is not a readable safetensors file ({e}); delete it and regrow"
        ) from None
