"""Export a mixture's merged proxy as a Hugging Face folder other tools load as is.

Once a search has found a good mixture, the next step is to load that proxy where the
user already works (lm-evaluation-harness, vLLM, a ``transformers`` notebook). An export
is a plain Hugging Face causal-LM folder (``config.json``, safetensors weights, tokenizer,
``generation_config.json``; no remote code) plus ``ablate_merge.json``: the mixture, the
members merged with their weights and sha256, the seed's sha256 and the ablate version.

* Full pools, and LoRA pools by default: the merged full weights, exactly the parameters
  the evaluator scores (the same ``MergedModel.merge``).
* LoRA pools with ``adapter=True``: the exactly merged adapter. ``sum_i w_i B_i A_i`` is
  one LoRA of rank ``k * r`` (``k`` members with weight): ``A = [A_1; ...; A_k]``,
  ``B = [w_1 B_1, ..., w_k B_k]``, ``lora_alpha = k * alpha`` so that the scaling
  ``alpha / r`` is unchanged. The folder holds the adapter (peft format) and the seed
  model in ``base/``, which ``adapter_config.json`` names.

The folder is written into a temporary sibling and renamed into place; an existing folder
is refused unless ``overwrite`` (then replaced in one rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ablate.engine.layout import MemberLayout
from ablate.pool.atomic import sha256_file, staged_dir, write_json
from ablate.pool.errors import AblateError
from ablate.pool.prepare import prepare_merge, prepares
from ablate.pool.storage import PoolMerge
from ablate.pool.weights import load_tensors, peft_quietly
from ablate.version import __version__

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ablate.engine.merge import MergedModel
    from ablate.mixture import Mixture
    from ablate.pool import Pool

ExportDtype = Literal["fp32", "bf16", "fp16"]
DTYPES: tuple[ExportDtype, ...] = ("fp32", "bf16", "fp16")
MERGE_RECORD = "ablate_merge.json"
FORMAT_VERSION = 1


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in table:
        raise AblateError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return table[dtype]


def check_export_target(out: str | os.PathLike, *, overwrite: bool) -> Path:
    """The export folder ``out``, refused (one line) when it exists and ``overwrite`` is off
    or when it is a file; checked before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AblateError(f"{out} is an existing file; name a folder for the export")
    if out.exists() and not overwrite:
        raise AblateError(f"{out} already exists; choose a new folder or pass --overwrite")
    for q in out.parents:
        if q.exists():
            if not q.is_dir():
                raise AblateError(f"{out} is inside {q}, which is a file; choose another folder")
            break
    return out


def export(
    pool: Pool,
    mixture: Mixture,
    out: str | os.PathLike,
    *,
    dtype: ExportDtype = "fp32",
    adapter: bool = False,
    overwrite: bool = False,
    merge: PoolMerge | None = None,
    layout: MemberLayout | None = None,
    model: MergedModel | None = None,
    progress: bool = False,
) -> Path:
    """Write ``mixture``'s merged proxy of ``pool`` into the folder ``out``.

    Args:
        pool: The pool whose members merge.
        mixture: The mixture (checked against the pool's partitions before any work).
        out: The new folder.
        dtype: Precision of the written weights.
        adapter: LoRA pools: write the merged adapter (peft) instead of full weights.
        overwrite: Replace an existing ``out`` (atomically).
        merge: How the members merge (None: the pool's, ``Pool.merge``); ignored when
            ``layout`` is given (it says).
        layout: The pool's members as rows (built when None).
        model: An already loaded ``MergedModel`` of these members (loaded when None).
        progress: Show the members' loading progress.

    Returns:
        The folder written.
    """
    import torch

    torch_dtype = _torch_dtype(dtype)
    if layout is None and prepares(pool, merge):  # what its merge reads, where lacking
        prepare_merge(pool, progress=progress)
    layout = layout or MemberLayout(pool, merge=merge)
    weights = layout.member_weights(mixture)  # unknown partitions fail here, before any write
    out = check_export_target(out, overwrite=overwrite)
    if adapter and layout.merge != "average":
        raise AblateError(
            f"--adapter writes the plain average's concatenated factors; a {layout.merge} merge "
            "is not low-rank: drop --adapter to export its full weights, or add --merge "
            "average to export the plain average's adapter"
        )
    if adapter and not pool.method.merges_by_factors:
        raise AblateError(
            f"--adapter exports a merged LoRA adapter; pool {pool.path} trains {pool.method.name} "
            "weights - drop --adapter"
        )

    record = {
        "format_version": FORMAT_VERSION,
        "ablate_version": __version__,
        "mixture": mixture.as_dict(),
        "mixture_key": mixture.key,
        "method": pool.method.name,
        "mode": "adapter" if adapter else "full",
        "dtype": dtype,
        "seed_sha256": pool.manifest.base_sha256,
        "members": [
            {
                "id": m.member_id,
                "partition": m.partition,
                "unit": m.unit,
                "weight": float(weights[i]),
                "sha256": m.weights_sha256,
            }
            for i, m in enumerate(layout.members)
            if weights[i] > 0
        ],
    }
    if layout.merge != "average":  # an average's record stays as it was
        record["merge"] = layout.merge
    with staged_dir(out) as tmp:
        if adapter:
            _write_adapter(pool, layout, weights, tmp, out, torch_dtype)
        else:
            if model is None:
                from ablate.engine.merge import MergedModel  # torch, loaded only here

                model = MergedModel(
                    pool,
                    layout.members,
                    device=torch.device("cpu"),
                    progress=progress,
                    layout=layout,
                )
            model.load(mixture)
            _write_full(pool, model, tmp, torch_dtype)
        record["files"] = {
            str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*.safetensors"))
        }
        write_json(tmp / MERGE_RECORD, record)
    return out


def _write_full(pool: Pool, model: MergedModel, folder: Path, dtype: torch.dtype) -> None:
    """The merged skeleton's parameters as a fresh seed-shaped model, saved in HF format."""
    import torch

    merged = dict(model.model.named_parameters())
    fresh = pool.load_base_model()
    with torch.no_grad():
        for name, p in fresh.named_parameters():
            p.copy_(merged[name].detach().to("cpu", p.dtype))
    _save_model(pool, fresh.to(dtype), folder)


def _save_model(pool: Pool, model: torch.nn.Module, folder: Path) -> None:
    from transformers import GenerationConfig

    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    model.save_pretrained(folder, safe_serialization=True)
    pool.tokenizer.save_pretrained(folder)
    if not (folder / "generation_config.json").exists():
        model.generation_config.save_pretrained(folder)


def _write_adapter(
    pool: Pool,
    layout: MemberLayout,
    weights: np.ndarray,
    folder: Path,
    final: Path,
    dtype: torch.dtype,
) -> None:
    """The exactly merged adapter (concatenated factors) plus the seed in ``base/``."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    rows = [i for i in range(len(layout.members)) if weights[i] > 0]
    saved = []
    for i in rows:
        rec = layout.members[i]
        pool.check_member(rec)
        saved.append(load_tensors(pool.weights_path(rec), sha256=rec.weights_sha256))
    keys = sorted(k for k in saved[0] if k.endswith("lora_A.weight"))
    state: dict[str, torch.Tensor] = {}
    for key in keys:
        bkey = key.replace("lora_A", "lora_B")
        state[key] = torch.cat([s[key] for s in saved])  # (k*r, in)
        state[bkey] = torch.cat(
            [s[bkey] * float(weights[i]) for s, i in zip(saved, rows, strict=True)], dim=1
        )  # (out, k*r), each B_i scaled by its member weight
    spec = pool.manifest.recipe.lora
    targets = sorted({k.split(".lora_A")[0].rsplit(".", 1)[-1] for k in keys})
    config = LoraConfig(
        r=spec.rank * len(rows),
        lora_alpha=spec.alpha * len(rows),  # same scaling alpha / r as every member
        lora_dropout=0.0,
        target_modules=targets,
    )
    base = pool.load_base_model().to(dtype)  # one load: saved as base/, then wrapped by peft
    _save_model(pool, base, folder / "base")
    with peft_quietly():
        peft_model = get_peft_model(base, config)
    set_peft_model_state_dict(peft_model, state)
    peft_model.to(dtype)
    peft_model.save_pretrained(folder, safe_serialization=True)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # transformers loads an adapter folder through this path; the rename keeps it valid.
    cfg["base_model_name_or_path"] = str((final / "base").resolve())
    write_json(cfg_path, cfg)
    pool.tokenizer.save_pretrained(folder)


__all__ = ["DTYPES", "MERGE_RECORD", "ExportDtype", "check_export_target", "export"]
