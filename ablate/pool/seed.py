"""The seed every member continues from: a local Hugging Face model, or ``tiny``.

``tiny`` trains a byte-level BPE tokenizer (the ``tokenizers`` library) and a small
Llama-style model from scratch and saves both in Hugging Face format, so every later step
loads ``tiny`` and a user's model through the same ``from_pretrained`` path. Nothing here
ever reaches a model hub: every load is ``local_files_only`` and weights are read from
safetensors only (untrusted pickles are never loaded).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.pool.atomic import sha256_file, sha256_json
from ablate.pool.errors import PoolError
from ablate.pool.recipe import TinyModelSpec

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


def train_tiny_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Byte-level BPE over ``texts``; byte fallback means any input is encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny_model(
    spec: TinyModelSpec, vocab_size: int, context: int, seed: int
) -> PreTrainedModel:
    """A randomly initialised Llama-style causal LM of the given shape (fp32)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(_tiny_config(spec, vocab_size, context))


def tiny_skeleton(spec: TinyModelSpec, context: int) -> PreTrainedModel:
    """The tiny seed's modules without weights (meta device, no RNG drawn): enough to check
    a recipe against the model before its tokenizer and weights exist."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(_tiny_config(spec, spec.vocab_size, context))


def _tiny_config(spec: TinyModelSpec, vocab_size: int, context: int) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=context,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )


def save_pretrained(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> None:
    """Save model (safetensors) and tokenizer into ``folder`` (the caller stages it)."""
    with _quiet_hf():
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """Hide transformers' per-shard progress bars: noise inside our own bars."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the sha256 of every safetensors file of a model folder."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        if not pickled:
            raise PoolError(f"{folder} has no *.safetensors weights; ablate reads safetensors only")
        raise PoolError(
            f"{folder} has only {pickled[0]}{' ...' if len(pickled) > 1 else ''} (pickle) "
            "weights; ablate reads safetensors only and never unpickles a checkpoint: convert "
            'it once, in an environment you trust, with python -c "from transformers import '
            f"AutoModelForCausalLM as M; M.from_pretrained('{folder}').save_pretrained('{folder}')\""
        )
    return sha256_json({f.name: sha256_file(f) for f in files})


def check_base_folder(folder: str | os.PathLike) -> Path:
    """Check that ``folder`` holds a causal LM with safetensors weights and a tokenizer."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise PoolError(
            f"base model folder {folder} does not exist; pass a local Hugging Face model directory or 'tiny'"
        )
    if not (folder / "config.json").is_file():
        raise PoolError(f"{folder} has no config.json; it is not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise PoolError(f"cannot read the model config in {folder}: {e}") from None
    causal = {
        c
        for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        for c in ((v,) if isinstance(v, str) else v)
    }
    archs = list(getattr(config, "architectures", None) or [])
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        archs and not set(archs) & causal
    ):
        kind = archs[0] if archs else config.model_type
        raise PoolError(
            f"{folder} holds a {kind} model, which is not a causal language model; "
            "ablate needs a model that AutoModelForCausalLM can load (e.g. a *ForCausalLM checkpoint)"
        )
    weights_fingerprint(folder)  # raises if there are no safetensors
    return folder


def load_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a seed model (local files only, never a hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise PoolError(
            f"cannot load the tokenizer in {folder}: {e}; save one next to the model"
        ) from None


def load_base(
    folder: str | os.PathLike, *, dtype: object = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the seed model and tokenizer from a local folder, checking they fit together."""
    from transformers import AutoModelForCausalLM

    folder = check_base_folder(folder)
    tokenizer = load_tokenizer(folder)
    with _quiet_hf():
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=dtype or "auto"
        )
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise PoolError(
            f"the tokenizer in {folder} has {len(tokenizer)} tokens but the model's embedding has "
            f"{vocab} rows; use the tokenizer the model was trained with"
        )
    return model, tokenizer


def model_context(model: PreTrainedModel, cap: int) -> int:
    """Window length for training/scoring: the model's context, capped (long contexts cost memory)."""
    n = getattr(model.config, "max_position_embeddings", None) or cap
    return int(min(n, cap))
