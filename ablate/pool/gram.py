"""Each member's input Gram matrices, for RegMean merging.

Jin et al. (ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models"):
a linear layer ``y = W x`` of member i fits its own data's inputs ``X_i``; the weight that
best reproduces every member's outputs on its own inputs, weighted by the mixture,
``argmin_W sum_i w_i ||X_i W^T - X_i W_i^T||^2``, is ``(sum_i w_i G_i)^-1 sum_i w_i G_i W_i^T``
with ``G_i = X_i^T X_i`` (``ablate.engine.merges.regmean``). Where the plain average lets
every member pull every input direction equally, RegMean lets the members whose data
actually excites a direction set the weight along it. For the input embedding (one-hot
inputs) the Gram is diagonal, the token counts: a token's row comes from the members that
saw it, in proportion to how often.

Per member and adapted weight: the Gram ``(in, in)`` of that layer's inputs, the mean of
``x x^T`` over the member's own training tokens (same streams and sequence length as it
trained on, at its own weights; forward passes only); for the input embedding the token
frequencies ``(vocab,)``. Full-weight pools store every linear layer's and the embedding's;
LoRA pools the adapted layers' (the rest of a LoRA merge is the seed), computed at the
member's effective weights (seed plus its adapter).

Layout: ``POOL/members/<partition>/<unit>/gram.safetensors`` (fp32, keyed by the weight's
name) and ``gram.json`` (``GramRecord``, written last; its ``shares`` names the weights whose
Gram is stored once under another's, layers that read the same input); files, resume and
checks are ``ablate.pool.statistics``'. Size: ``in^2`` floats per distinct linear-layer input
(``intermediate^2`` for an MLP's down projection): 403 MB per full SmolLM2-135M member (538
MB of weights; 522 MB before q/k/v and gate/up shared one), 3.2 MB for the fidelity suite's
tiny model (7.6 MB of weights); a LoRA member of the default ``q_proj``/``v_proj``: 40 MB
for SmolLM2-135M (adapter 1.9 MB), 0.26 MB for the tiny model.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from ablate.pool.statistics import (
    ensure_stats,
    load_stats,
    member_model,
    require_stats,
    stat_paths,
    stat_record,
)
from ablate.pool.storage import GRAM, MemberRecord

if TYPE_CHECKING:
    import torch

    from ablate.pool.pool import Pool

# Batches of the pool's batch size: 16 x 16 sequences of 128 tokens (one epoch of a 30K-token
# unit), as for the Fisher; a Gram of 128-wide inputs is well determined by 32K tokens.
DEFAULT_BATCHES = 16


def gram_sites(
    model: torch.nn.Module, adapted: set[str] | None = None
) -> dict[str, torch.nn.Module]:
    """The linear layers whose inputs get a Gram, by weight name: every ``nn.Linear`` and
    ``Conv1D`` (``adapted``: only those weights) whose weight is a parameter of its own. A head
    tied to the input embedding is not one: that matrix is merged as the embedding (by token
    counts), the one rule it can have."""
    import torch

    from ablate.pool.architectures import stores_transposed

    params = {id(p): n for n, p in model.named_parameters()}  # tied weights: the first name
    out = {}
    for mod_name, module in model.named_modules():
        name = f"{mod_name}.weight"
        weight = getattr(module, "weight", None)
        linear = isinstance(module, torch.nn.Linear) or stores_transposed(module)
        if not linear or weight is None or params.get(id(weight)) != name:
            continue
        if adapted is None or name in adapted:
            out[name] = module
    return out


def member_gram(
    pool: Pool, rec: MemberRecord, *, batches: int = DEFAULT_BATCHES, device: str | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """Input Grams (mean ``x x^T``) of one member's linear layers and its input-embedding
    token frequencies, over its own training tokens; and the number of tokens.

    Same data as the member trained on (``Pool.member_sources``), drawn in a fixed order that
    depends only on the member, so a rerun gives the same tensors.
    """
    import torch

    from ablate.pool.architectures import stores_transposed
    from ablate.pool.pool import member_seed
    from ablate.pool.train import SequenceSampler, pick_device

    recipe = pool.manifest.recipe
    dev = pick_device(device)
    model, adapted = member_model(pool, rec, dev)
    params = dict(model.named_parameters())
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in gram_sites(model, adapted).items():
        size = module.weight.shape[0] if stores_transposed(module) else module.weight.shape[1]
        sums[name] = torch.zeros(size, size, dtype=torch.float64, device=dev)

        def hook(_module, inputs, _output, name=name):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()  # (tokens, in)
            sums[name].addmm_(x.T, x)

        hooks.append(module.register_forward_hook(hook))
    embed = model.get_input_embeddings()
    embed_name = next((n for n, p in params.items() if p is embed.weight), None)
    counts = torch.zeros(embed.weight.shape[0], dtype=torch.float64, device=dev)
    sampler = SequenceSampler(
        pool.member_sources(rec.partition, rec.unit),
        pool.member_source_weights(),
        recipe.seq_len,
        member_seed(recipe.member_rng_seed, f"gram:{rec.member_id}"),
    )
    tokens = 0
    try:
        with torch.no_grad():
            for _ in range(batches):
                batch = torch.from_numpy(sampler.batch(recipe.batch_size)).to(dev)  # (B, T+1)
                x = batch[:, :-1]  # (B, T): the inputs the member saw (the last id is a target)
                model(input_ids=x)
                counts += torch.bincount(x.flatten(), minlength=counts.numel()).double()
                tokens += x.numel()
    finally:
        for h in hooks:
            h.remove()
    out = {k: (v / tokens).float().cpu().contiguous() for k, v in sums.items()}
    if adapted is None and embed_name is not None and embed_name not in out:
        out[embed_name] = (counts / tokens).float().cpu()
    return out, tokens


def _compute(pool: Pool, rec: MemberRecord, *, batches: int, device: str | None):
    tensors, tokens = member_gram(pool, rec, batches=batches, device=device)
    stored, shares = stored_once(tensors)
    return stored, {"tokens": tokens, "shares": shares}


def stored_once(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors to store, shares)``: a Gram equal to an earlier one (layers that read the
    same input: q, k and v; an MLP's gate and up) is kept once, under the first name; the
    others map to it. Halves the Grams of LoRA's default ``q_proj``/``v_proj``."""
    import torch

    stored: dict[str, torch.Tensor] = {}
    shares: dict[str, str] = {}
    seen: dict[tuple, list[str]] = {}  # (shape, trace) -> stored names: few exact compares
    for name, t in tensors.items():
        key = (tuple(t.shape), float(t.diagonal().sum()) if t.dim() == 2 else float(t.sum()))
        same = next((n for n in seen.get(key, []) if torch.equal(stored[n], t)), None)
        if same is not None:
            shares[name] = same
            continue
        stored[name] = t
        seen.setdefault(key, []).append(name)
    return stored, shares


# Where a member's Gram statistic lives, its record, all of them, its tensors
# (``ablate.pool.statistics`` for this kind).
gram_paths = partial(stat_paths, stat=GRAM)
gram_record = partial(stat_record, stat=GRAM)
require_gram = partial(require_stats, stat=GRAM)
# By weight name, those stored once for several (``GramRecord.shares``) under each name.
load_gram = partial(load_stats, stat=GRAM)


# Compute what members lack (resumable); returns the records computed now. ``compute`` is
# looked up when called, so that tests can interrupt ``member_gram``.
ensure_gram = partial(
    ensure_stats,
    stat=GRAM,
    compute=lambda pool, rec, **kw: _compute(pool, rec, **kw),
    batches=DEFAULT_BATCHES,
)


__all__ = [
    "DEFAULT_BATCHES",
    "GRAM",
    "ensure_gram",
    "gram_paths",
    "gram_record",
    "load_gram",
    "member_gram",
    "require_gram",
    "stored_once",
]
