"""Bring your own model: every common causal-LM architecture, full and LoRA.

Tiny randomly initialised checkpoints of each architecture the installed transformers has
(saved with ``save_pretrained``, the pool's tokenizer beside them) go through the real CLI:
``pool init``, ``pool add``, ``pool grow``; a weighted 2-partition mixture is scored, and
the proxy's summed NLL must equal a plain ``transformers`` forward (``model(input_ids).logits``
-> cross-entropy, same windows) of the same mixture's weights, built independently of the
merge engine (each member's plain weights from peft / the saved tensors, averaged here),
to a relative 1e-5 in fp32.

The bases also carry the quirks checkpoints come with: sharded safetensors with an index
(Llama), bf16 (Qwen2) and fp16 (Phi3) weights, a tokenizer without a pad token (GPT-2),
padded embedding rows beyond the tokenizer (GPT-NeoX and Qwen2, as Pythia and Qwen ship),
tied input/output embeddings (GPT-2, Qwen2, Gemma2), Conv1D and fused QKV (GPT-2, NeoX,
Phi3), Gemma2's logit soft-capping and Qwen2's QKV biases, a ``generation_config.json``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from support import make_docs, write_jsonl

from ablate.cli import main
from ablate.pool import Pool
from ablate.pool.architectures import ALL_LINEAR, linear_layer_names, lora_targets
from ablate.pool.errors import PoolError

H, LAYERS, HEADS, FFN, CONTEXT = 32, 2, 2, 64, 64
PAD_ROWS = 24  # extra embedding rows beyond the tokenizer, as Pythia and Qwen ship
# arch -> (config class name, its extra settings, saved dtype, padded vocab, sharded)
ARCHS: dict[str, tuple[str, dict, torch.dtype, bool, bool]] = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=1), torch.float32, False, True),
    "gpt2": ("GPT2Config", dict(), torch.float32, False, False),
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.5), torch.float32, True, False),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=1), torch.bfloat16, True, False),
    "gemma2": (
        "Gemma2Config",
        dict(num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0),
        torch.float32,
        False,
        False,
    ),
    "phi3": ("Phi3Config", dict(num_key_value_heads=2), torch.float16, False, False),
    "olmo2": ("Olmo2Config", dict(num_key_value_heads=2), torch.float32, False, False),
}
# What LoRA adapts in the matrix: the default (peft's choice, else all-linear) and, where
# it matters, names or all-linear (GPT-2's square Conv1D c_proj would hide a transpose bug).
MATRIX_TARGETS = {"gpt2": ALL_LINEAR, "gpt_neox": "query_key_value,dense"}
# The default LoRA targets each architecture gets (peft's mapping; else all linear layers).
DEFAULT_TARGETS = {
    "llama": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
    "qwen2": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi3": ("down_proj", "gate_up_proj", "o_proj", "qkv_proj"),
    "olmo2": ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"),
}
RECIPE = ["--unit-tokens", "96", "--seq-len", "16", "--batch-size", "2", "--lr", "3e-3"]
MIXTURE = "code=0.3,wiki=0.7"
REL = 1e-5


def _supported() -> list[str]:
    import transformers

    return [a for a, (cls, *_) in ARCHS.items() if hasattr(transformers, cls)]


def _config(arch: str, vocab: int):
    import transformers

    cls, extra, *_ = ARCHS[arch]
    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_embd=H, n_layer=LAYERS, n_head=HEADS, n_positions=CONTEXT, **ids
        )
    return getattr(transformers, cls)(
        vocab_size=vocab,
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=CONTEXT,
        **ids,
        **extra,
    )


def _skeleton(arch: str, vocab: int = 300):
    """The architecture's modules on the meta device (no weights, no RNG)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(_config(arch, vocab))


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus) -> dict[str, Path]:
    """A tokenizer trained on the seed corpus; two one-unit partitions; an eval file."""
    from ablate.pool.seed import train_tiny_tokenizer

    d = tmp_path_factory.mktemp("arch-data")
    texts = [json.loads(line)["text"] for line in corpus["seed"].read_text().splitlines()]
    tok = train_tiny_tokenizer(texts, vocab_size=300)
    tok.save_pretrained(d / "tokenizer")
    return {
        "tokenizer": d / "tokenizer",
        "train": write_jsonl(
            d / "train.jsonl", make_docs("code", 2, 3, length=25) + make_docs("wiki", 2, 3, 25)
        ),
        "eval": write_jsonl(
            d / "eval.jsonl", make_docs("code", 2, 4, length=40) + make_docs("wiki", 2, 4, 40)
        ),
    }


@pytest.fixture(scope="module")
def bases(tmp_path_factory, data):
    """arch -> a saved tiny checkpoint folder (built on first use)."""
    root = tmp_path_factory.mktemp("arch-bases")

    @cache
    def build(arch: str) -> Path:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _, _, dtype, padded, sharded = ARCHS[arch]
        tok = AutoTokenizer.from_pretrained(data["tokenizer"])
        if arch == "gpt2":  # GPT-2 ships without a pad token
            tok.pad_token = None
        vocab = len(tok) + (PAD_ROWS if padded else 0)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(arch, vocab)).to(dtype)
        folder = root / arch
        model.save_pretrained(folder, max_shard_size="40KB" if sharded else "5GB")
        tok.save_pretrained(folder)
        # As chat checkpoints ship it: sampling settings that ablate must ignore.
        gen = {"bos_token_id": 0, "eos_token_id": [1, 2], "do_sample": True, "temperature": 0.7}
        (folder / "generation_config.json").write_text(json.dumps(gen))
        return folder

    return build


def _cli(*args: object) -> int:
    return main(["-q", *map(str, args)])


@pytest.fixture(scope="module")
def pools(tmp_path_factory, bases, data):
    """(arch, method) -> a grown pool on that architecture (built on first use)."""
    root = tmp_path_factory.mktemp("arch-pools")

    @cache
    def build(arch: str, method: str) -> Pool:
        path = root / f"{arch}-{method}"
        targets = ["--lora-targets", MATRIX_TARGETS[arch]] if arch in MATRIX_TARGETS else []
        extra = ["--method", method, *(targets if method == "lora" else [])]
        assert _cli("pool", "init", path, "--base", bases(arch), *RECIPE, *extra) == 0
        assert _cli("pool", "add", path, data["train"], "--partition-by", "domain") == 0
        assert _cli("pool", "grow", path, "--device", "cpu") == 0
        return Pool.open(path)

    return build


def _independent_merge(pool: Pool, weights) -> dict[str, torch.Tensor]:
    """The mixture's parameters without the merge engine: each member's plain weights (the
    saved tensors, or peft's ``merge_and_unload`` of its adapter), averaged in float64."""
    from ablate.pool.weights import load_tensors

    method, recipe = pool.method, pool.manifest.recipe
    out: dict[str, torch.Tensor] = {}
    for w, rec in zip(weights, pool.members, strict=True):
        state = method.full_state(
            load_tensors(pool.weights_path(rec)), pool.load_base_model, recipe
        )
        for k, v in state.items():
            out[k] = out.get(k, 0) + float(w) * v.double()
    return out


def _plain_nll(pool: Pool, state: dict[str, torch.Tensor], eval_set) -> dict[str, float]:
    """Summed NLL per eval domain from ``model(input_ids).logits`` and cross-entropy."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from ablate.data.evalset import IGNORE

    model = AutoModelForCausalLM.from_pretrained(pool.base_folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(state[k])
        pad = pool.tokenizer.pad_token_id if pool.tokenizer.pad_token_id is not None else 0
        w = eval_set.windows(pool.manifest.context, pad)
        logits = model(input_ids=torch.from_numpy(w.inputs)).logits  # (W, T, V)
        y = torch.from_numpy(w.targets)  # (W, T)
        nll = F.cross_entropy(
            logits.flatten(0, 1).double(), y.flatten(), ignore_index=IGNORE, reduction="none"
        ).view_as(y)
    per_window = nll.sum(1)  # (W,)
    dom = torch.from_numpy(w.domain)
    return {d: float(per_window[dom == i].sum()) for i, d in enumerate(eval_set.domains)}


# ---------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", _supported())
def test_architecture_matrix(arch, method, pools, data):
    """init, add, grow, eval of a weighted 2-partition mixture, parity with a plain forward."""
    from ablate import Evaluator, Mixture

    pool = pools(arch, method)
    assert len(pool.members) == 2 and not pool.missing() and pool.verify().ok
    if method == "lora":
        want = MATRIX_TARGETS.get(arch, "")
        expected = (
            linear_layer_names(pool.load_base_model())
            if want == ALL_LINEAR
            else tuple(want.split(","))
            if want
            else DEFAULT_TARGETS[arch]
        )
        assert pool.manifest.recipe.lora.target_modules == expected  # the record of what was used
        assert all(m.recipe.lora.target_modules == expected for m in pool.members)
    # On CPU: the parity bound is for fp32 arithmetic (Triton's fp32 dots may use TF32). The
    # parity is the plain average's (a LoRA pool's own default, the Fisher merge, is not linear).
    opts = dict(by="domain", store=False, progress=False, device="cpu", merge="average")
    with Evaluator(pool, data["eval"], **opts) as ev:
        mixture = Mixture.parse(MIXTURE)
        result = ev.evaluate(mixture)
        weights = ev.member_weights(mixture)
        state = _independent_merge(pool, weights)
        want = _plain_nll(pool, state, ev.scorer().eval_set)
        got = {d: s.nll for d, s in result.scores.items()}
        merged = dict(ev.merged.model.named_parameters())
    assert set(merged) == set(state)
    seed = dict(pool.load_base_model().named_parameters())
    moved = {k for k in seed if not torch.equal(merged[k], seed[k])}
    if method == "lora":  # exactly the adapted layers' weights moved
        targets = pool.manifest.recipe.lora.target_modules
        adapted = {k for k in seed if k.endswith(".weight") and k.split(".")[-2] in targets}
        assert moved == adapted and adapted
    else:
        assert moved == set(seed)
    for k, v in merged.items():  # the merge engine's weights are the mixture's weights
        torch.testing.assert_close(v.double(), state[k], atol=1e-6, rtol=1e-5, msg=k)
    assert set(got) == set(want) == {"code", "wiki"}
    err = max(abs(got[d] - want[d]) / abs(want[d]) for d in want)
    print(f"PARITY {arch} {method} {err:.2e}")  # shown with -s: the closing note's table
    assert err < REL, f"{arch}/{method}: proxy NLL {got} vs plain forward {want}"
    # Precision policy: members are stored and merged in fp32, whatever the base's dtype.
    assert all(p.dtype == torch.float32 for p in merged.values())
    from ablate.pool.weights import load_tensors

    saved = load_tensors(pool.weights_path(pool.members[0]))
    assert {t.dtype for t in saved.values()} == {torch.float32}


def _merged_by(pool, merge: str, w: torch.Tensor) -> tuple[dict, dict, list[dict]]:
    """The pool's two members merged by ``merge`` under ``w`` (fp64 parameters), the plain
    average computed independently, and each member's plain weights (seed plus adapter for
    LoRA): what a merge's closed form is worked out from."""
    from ablate.engine.layout import MemberLayout
    from ablate.engine.merge import MergedModel
    from ablate.pool.weights import load_tensors

    layout = MemberLayout(pool, merge=merge)
    merged = MergedModel(pool, layout.members, device=torch.device("cpu"), progress=False)
    merged.merge(w, method=layout.method)
    got = {k: p.detach().double() for k, p in merged.model.named_parameters()}
    recipe = pool.manifest.recipe
    members = [
        pool.method.full_state(load_tensors(pool.weights_path(r)), pool.load_base_model, recipe)
        for r in pool.members
    ]
    return got, _independent_merge(pool, w), members


# ---------------------------------------------------------------------- checkpoint quirks
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", _supported())
def test_regmean_on_every_architecture(arch, method, pools):
    """``--merge regmean`` against its closed form, computed here from each member's plain
    weights: fused QKV, GPT-2's ``Conv1D`` (``[in, out]``), tied heads (no Gram of their own:
    merged as the embedding, by token counts), LoRA (adapted layers only, the rest the seed)."""
    from ablate.engine.merge import RIDGE
    from ablate.engine.merges.regmean import SHRINK
    from ablate.pool.architectures import stores_transposed
    from ablate.pool.gram import ensure_gram, load_gram

    pool = pools(arch, method)
    ensure_gram(pool, batches=1, progress=False)
    w = torch.tensor([0.3, 0.7])
    got, average, members = _merged_by(pool, "regmean", w)
    grams = [load_gram(pool, r) for r in pool.members]
    modules = dict(pool.load_base_model().named_modules())
    solved = 0
    for name, have in got.items():
        g = [gr.get(name) for gr in grams]
        want = average[name]
        if g[0] is not None and g[0].dim() == 1:  # token frequencies: embedding rows
            c = torch.stack(g).double() * w[:, None].double()  # (2, V)
            rows = sum(c[i][:, None] * members[i][name].double() for i in range(2))
            den = c.sum(0)[:, None]
            want = torch.where(den > 0, rows / den.clamp_min(1e-300), want)
        elif g[0] is not None:
            t = stores_transposed(modules[name.rsplit(".", 1)[0]])
            gs = [
                SHRINK * x.double() + (1 - SHRINK) * torch.diag(torch.diagonal(x.double()))
                for x in g
            ]
            lhs = sum(float(w[i]) * gs[i] for i in range(2))
            ws = [m[name].double() if t else m[name].double().T for m in members]  # (in, out)
            rhs = sum(float(w[i]) * gs[i] @ ws[i] for i in range(2))
            ridge = RIDGE * float(lhs.diagonal().mean())
            fb = want if t else want.T
            x = torch.linalg.solve(
                lhs + ridge * torch.eye(len(lhs), dtype=lhs.dtype), rhs + ridge * fb
            )
            want = x if t else x.T
            solved += 1
        torch.testing.assert_close(have, want, atol=2e-5, rtol=1e-3, msg=name)
    assert solved > 0
    tied = pool.load_base_model().config.tie_word_embeddings
    heads = [n for n in grams[0] if n.split(".")[-2] in ("lm_head", "embed_out")]
    assert not heads if tied or method == "lora" else heads


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", _supported())
def test_fisher_damped_on_every_architecture(arch, method, pools):
    """``--merge fisher_damped`` against its closed form, computed here from each member's
    plain weights and Fisher (each tensor's scaled to mean 1, plus 1): fused QKV, GPT-2's
    ``Conv1D`` (its Fisher in the ``[in, out]`` orientation of its weight), tied heads (one
    parameter, one Fisher), LoRA (the Fisher of the adapted weights only, the rest the seed)."""
    from ablate.pool.fisher import ensure_fisher, load_fisher
    from ablate.pool.weights import load_tensors

    pool = pools(arch, method)
    ensure_fisher(pool, batches=1, progress=False)
    w = torch.tensor([0.3, 0.7])
    got, average, members = _merged_by(pool, "fisher_damped", w)
    fishers = [load_fisher(pool, r) for r in pool.members]
    adapted = pool.method.adapted_weights(load_tensors(pool.weights_path(pool.members[0])))
    assert set(fishers[0]) == (set(got) if adapted is None else adapted)
    for name, have in got.items():
        want = average[name]
        if name in fishers[0]:
            f = [fi[name].double() for fi in fishers]
            f = [x / x.mean() + 1.0 if float(x.mean()) > 0 else x + 1.0 for x in f]
            num = sum(float(w[i]) * f[i] * members[i][name].double() for i in range(2))
            want = num / sum(float(w[i]) * f[i] for i in range(2))
        torch.testing.assert_close(have, want, atol=2e-5, rtol=1e-3, msg=name)


def test_sharded_safetensors_are_one_fingerprint(bases, tmp_path):
    import shutil

    from ablate.pool.seed import weights_fingerprint

    base = bases("llama")
    shards = sorted(base.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (base / "model.safetensors.index.json").is_file()
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    before = weights_fingerprint(copy)
    with open(copy / shards[-1].name, "r+b") as f:  # flip one bit of one shard
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert weights_fingerprint(copy) != before


@pytest.mark.parametrize("arch, dtype", [("qwen2", torch.bfloat16), ("phi3", torch.float16)])
def test_half_precision_base_is_upcast_exactly(arch, dtype, bases, pools):
    """The seed stays in its dtype on disk; the pool works on its exact fp32 upcast."""
    from safetensors.torch import load_file

    on_disk = load_file(str(bases(arch) / "model.safetensors"))
    assert {t.dtype for t in on_disk.values()} == {dtype}
    pool = pools(arch, "full")
    seed = dict(pool.load_base_model().named_parameters())
    for k, t in on_disk.items():
        if k in seed:
            assert seed[k].dtype == torch.float32 and torch.equal(seed[k], t.float())


def test_tokenizer_without_pad_token(pools):
    pool = pools("gpt2", "full")
    assert pool.tokenizer.pad_token is None  # and the matrix scored it: windows pad with 0


def test_pytorch_model_bin_is_refused_with_the_conversion(bases, tmp_path, capsys):
    import shutil

    folder = tmp_path / "bin-only"
    shutil.copytree(bases("gpt2"), folder)
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    pool = tmp_path / "pool"
    assert _cli("pool", "init", pool, "--base", folder) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pytorch_model.bin" in err
    assert "safetensors only" in err and ".save_pretrained(" in err
    assert not pool.exists()


# ---------------------------------------------------------------------- LoRA targets
@pytest.mark.parametrize("arch", _supported())
def test_default_lora_targets_follow_peft_else_all_linear(arch):
    model = _skeleton(arch)
    assert lora_targets(model) == DEFAULT_TARGETS[arch]
    linear = linear_layer_names(model)
    assert "lm_head" not in linear and set(DEFAULT_TARGETS[arch]) <= set(linear)
    assert lora_targets(model, (ALL_LINEAR,)) == linear


def test_lora_targets_named_and_all_linear_are_recorded(bases, tmp_path):
    base = bases("gpt_neox")
    named, every = tmp_path / "named", tmp_path / "every"
    lora = ["--method", "lora", *RECIPE]
    assert _cli("pool", "init", named, "--base", base, *lora, "--lora-targets", "dense") == 0
    assert Pool.open(named).manifest.recipe.lora.target_modules == ("dense",)
    assert _cli("pool", "init", every, "--base", base, *lora, "--lora-targets", ALL_LINEAR) == 0
    recorded = json.loads((every / "pool.json").read_text())["recipe"]["lora"]["target_modules"]
    assert recorded == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]


@pytest.mark.parametrize("existing", [False, True])
def test_lora_targets_that_match_nothing_are_refused_before_writing(
    existing, bases, tmp_path, capsys
):
    pool = tmp_path / "pool"
    if existing:  # an empty folder the user made is left as it was
        pool.mkdir()
    args = ["--method", "lora", "--lora-targets", "q_proj,v_proj"]
    assert _cli("pool", "init", pool, "--base", bases("gpt2"), *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "q_proj, v_proj name no linear layer of this gpt2 model" in err
    assert "c_attn, c_fc, c_proj" in err and "all-linear" in err
    assert (list(pool.iterdir()) == []) if existing else not pool.exists()


def test_lora_targets_on_tiny_are_checked_before_the_seed_trains(corpus, tmp_path, capsys):
    pool = tmp_path / "pool"
    args = ["--seed-data", corpus["seed"], "--method", "lora", "--lora-targets", "c_attn"]
    assert _cli("pool", "init", pool, "--base", "tiny", *args) == 2
    assert "its linear layers are: down_proj, gate_proj, k_proj" in capsys.readouterr().err
    assert not pool.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lora-targets", "dense"], "(--lora-targets) apply only to --method lora"),
        (["--method", "lora", "--lora-targets", "all-linear,dense"], "give it alone"),
        (["--method", "lora", "--lora-targets", "a.b"], "is not a module name"),
    ],
)
def test_lora_targets_usage_errors(args, message, bases, tmp_path, capsys):
    assert _cli("pool", "init", tmp_path / "pool", "--base", bases("gpt2"), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "pool").exists()


def test_wrap_lora_refuses_a_recorded_name_the_model_lacks():
    from ablate.pool.recipe import LoraSpec
    from ablate.pool.weights import wrap_lora

    with pytest.raises(PoolError, match="name no linear layer of this gpt2 model"):
        wrap_lora(_skeleton("gpt2"), LoraSpec(target_modules=("q_proj",)))


# ---------------------------------------------------------------------- output heads
@pytest.mark.parametrize(
    "cls, extra",
    [
        ("CohereConfig", dict(logit_scale=0.5)),  # logits * logit_scale
        ("GraniteConfig", dict(logits_scaling=4.0)),  # logits / logits_scaling
        ("Gemma2Config", dict(head_dim=16, final_logit_softcapping=2.0)),
    ],
)
def test_output_heads_that_scale_or_cap_agree_with_the_model(cls, extra):
    import transformers

    from ablate.pool.architectures import check_head

    if not hasattr(transformers, cls):
        pytest.skip(f"transformers has no {cls}")
    config = getattr(transformers, cls)(
        vocab_size=64, hidden_size=H, num_hidden_layers=1, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=FFN, pad_token_id=2, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    check_head(transformers.AutoModelForCausalLM.from_config(config).eval())  # no refusal


def test_a_head_the_scorer_would_get_wrong_is_refused_at_init(data, tmp_path, capsys):
    """Llama ignores final_logit_softcapping; the scorer would apply it: refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data["tokenizer"])
    config = _config("llama", len(tok))
    config.final_logit_softcapping = 0.5
    torch.manual_seed(0)
    folder = tmp_path / "odd-head"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    init = ("pool", "init", tmp_path / "pool", "--base", folder, "--seq-len", "32")
    assert _cli(*init) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "llama model's logits are not softcap(" in err
    assert not (tmp_path / "pool").exists()
