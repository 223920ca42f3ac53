"""Mixtures scored per minute: ablate's evaluator vs the way a user would do it without us.

Baseline (mergekit-style, generous: one process, warm page cache): for each mixture read
the members' safetensors, average them tensor by tensor, ``save_pretrained`` the merged
model, load it back with ``AutoModelForCausalLM.from_pretrained`` and compute the loss with
``model(input_ids, labels=...)``. Ours: ``Evaluator.run_many`` over the same mixtures
(stack loaded once, one fused merge per mixture or one row update in a Gray-code walk,
``token_nll`` on the final hidden states), with the results store disabled so every
mixture is really scored.

Both sides score the same eval tokens, so the ratio depends on how the merge/IO cost
compares with the forward pass: the script prints the per-mixture breakdown and the ratio
for each eval size given with ``--eval-tokens``.

    python benchmarks/bench_eval.py                        # 8 members of a ~58M Llama, CPU
    python benchmarks/bench_eval.py --eval-tokens 64 256 2048 --mixtures 12
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

NLL_RTOL = 1e-3  # baseline and ours must agree on each mixture's summed NLL to this


def build_pool(
    root: Path, members: int, hidden: int, layers: int, vocab: int, context: int
) -> Path:
    """A pool folder with a random ~50M-parameter Llama seed and ``members`` perturbed members.

    Training is irrelevant to the cost being measured, so members are the seed plus noise,
    written through the same storage code as trained members.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate.pool.atomic import staged_dir, write_json
    from ablate.pool.recipe import Recipe
    from ablate.pool.seed import save_pretrained, train_tiny_tokenizer, weights_fingerprint
    from ablate.pool.storage import MemberRecord, PartitionIndex, PoolManifest
    from ablate.pool.tokens import write_partition
    from ablate.pool.weights import save_tensors

    texts = [f"document {i} about topic {i % 7} with words " * 20 for i in range(200)]
    tok = train_tiny_tokenizer(texts, 1000)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    seed = LlamaForCausalLM(cfg)
    with staged_dir(root / "base") as tmp:
        save_pretrained(seed, tok, tmp)
    recipe = Recipe(unit_tokens=10**9, seq_len=context)
    manifest = PoolManifest(
        base="tiny",
        base_path="base",
        base_sha256=weights_fingerprint(root / "base"),
        vocab_size=vocab,
        context=context,
        token_dtype="uint16",
        recipe=recipe,
        created_at="bench",
    )
    write_json(root / "pool.json", manifest.model_dump(mode="json"))
    state = {k: p.detach() for k, p in seed.named_parameters()}
    for i in range(members):
        name = f"p{i}"
        idx: PartitionIndex = write_partition(
            root / "data" / name,
            name=name,
            texts=texts[i::members],
            sources=["bench"],
            tokenizer=tok,
            token_dtype="uint16",
            unit_tokens=10**9,
        )
        g = torch.Generator().manual_seed(i)
        tensors = {
            k: (v + 0.01 * torch.randn(v.shape, generator=g)).contiguous() for k, v in state.items()
        }
        with staged_dir(root / "members" / name / "0000") as tmp:
            sha = save_tensors(tensors, tmp / "model.safetensors")
            rec = MemberRecord(
                partition=name,
                unit=0,
                data_hash=idx.unit_hashes[0],
                base_sha256=manifest.base_sha256,
                method="full",
                recipe=recipe,
                seed=i,
                tokens_seen=0,
                steps=0,
                final_loss=0.0,
                loss_curve=(),
                wall_time_s=0.0,
                device="cpu",
                weights_file="model.safetensors",
                weights_sha256=sha,
                n_params=sum(t.numel() for t in tensors.values()),
                created_at="bench",
            )
            write_json(tmp / "member.json", rec.model_dump(mode="json"))
    return root


def eval_file(path: Path, tokens: int) -> Path:
    """Eval documents of about ``tokens`` tokens in total (the tiny tokenizer: ~1 token per char)."""
    from ablate.pool.atomic import write_bytes

    docs = [{"text": ("lorem ipsum dolor sit amet " * 40)[: max(8, tokens // 4)]} for _ in range(4)]
    write_bytes(path, "".join(json.dumps(d) + "\n" for d in docs).encode("utf-8"))
    return path


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _complete_state(merged: dict, expected: dict) -> None:
    """Give ``merged`` exactly the skeleton's keys, so ``load_state_dict(strict=True)`` loads all.

    A key the members lack is accepted only where the skeleton ties it to a key they have
    (e.g. ``lm_head.weight`` sharing the embedding's storage): it gets that merged tensor.
    Any other missing or extra key is an error, so the base's own weights are never scored.
    """
    extra = sorted(merged.keys() - expected.keys())
    if extra:
        raise RuntimeError(f"members hold tensors the model lacks: {', '.join(extra[:5])}")
    by_storage = {(expected[k].data_ptr(), expected[k].shape): k for k in merged}
    for k in sorted(expected.keys() - merged.keys()):
        src = by_storage.get((expected[k].data_ptr(), expected[k].shape))
        if src is None:
            raise RuntimeError(
                f"members lack {k!r}, which the model does not tie to another tensor"
            )
        merged[k] = merged[src]


def baseline(
    pool_dir: Path, mixtures, eval_set, work: Path, device: str
) -> tuple[dict[str, float], list[float]]:
    """mergekit-style: merge (on ``device``, like mergekit's --cuda), save, reload, labels= loss.

    The model skeleton is built once, untimed; per mixture the timings cover the merge, then
    ``load_state_dict`` + ``save_pretrained`` + ``from_pretrained``, then the scoring. Returns
    the timings and each mixture's summed NLL (nats over all scored tokens).
    """
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ablate.pool import Pool

    pool = Pool.open(pool_dir)
    t = {"merge": 0.0, "save+load": 0.0, "score": 0.0}
    nlls: list[float] = []
    ctx = pool.manifest.context
    skeleton = pool.load_base_model()  # the architecture, built once (its weights get replaced)
    expected = skeleton.state_dict()
    for mix in mixtures:
        s = time.perf_counter()
        names = list(mix.names)
        w = dict(mix.weights)
        sds = [load_file(str(pool.weights_path(pool.member(n, 0))), device=device) for n in names]
        merged = {k: sum(w[n] * sd[k] for n, sd in zip(names, sds)).cpu() for k in sds[0]}
        _sync(device)
        t["merge"] += time.perf_counter() - s
        _complete_state(merged, expected)
        s = time.perf_counter()
        skeleton.load_state_dict(merged, strict=True)
        out = work / "merged"
        shutil.rmtree(out, ignore_errors=True)
        skeleton.save_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(device).eval()
        _sync(device)
        t["save+load"] += time.perf_counter() - s
        s = time.perf_counter()
        nll = 0.0
        with torch.inference_mode():
            for doc in eval_set.docs:
                doc = torch.as_tensor(doc, dtype=torch.long, device=device)
                for a in range(0, len(doc) - 1, ctx):
                    x = doc[a : a + ctx + 1][None]
                    nll += model(input_ids=x, labels=x).loss.item() * (x.shape[1] - 1)
        t["score"] += time.perf_counter() - s
        nlls.append(nll)
    return t, nlls


def ours(pool_dir: Path, mixtures, eval_set, device: str) -> tuple[dict[str, float], float, list]:
    """Evaluator timings (``run_many`` only), its one-off setup time and its ``EvalResult``s."""
    from ablate import Evaluator

    s = time.perf_counter()
    ev = Evaluator(pool_dir, eval_set, device=device, store=False, progress=False)
    ev.merged  # noqa: B018  # load + stack the members once (reported separately)
    ev.scorer().batches  # noqa: B018  # windows cut into batches once
    ev.evaluate(
        mixtures[0]
    )  # warm-up forward (allocator, oneDNN/cuBLAS plans), like the baseline's
    setup = time.perf_counter() - s
    s = time.perf_counter()
    results = ev.run_many(mixtures, progress=False)
    _sync(device)
    return {"total": time.perf_counter() - s}, setup, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--mixtures", type=int, default=8, help="mixtures scored by each side")
    ap.add_argument("--eval-tokens", type=int, nargs="+", default=[256, 2048])
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="both sides"
    )
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging

    from ablate import EvalSet, Mixture, Pool
    from ablate.evaluator import gray_subsets

    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        pool_dir = build_pool(
            work / "pool", args.members, args.hidden, args.layers, args.vocab, args.context
        )
        pool = Pool.open(pool_dir)
        names = sorted(pool.partitions)
        n_params = pool.member(names[0], 0).n_params
        subsets = [s for s in gray_subsets(len(names)) if len(s) >= 2][: args.mixtures]
        mixtures = [Mixture.uniform([names[i] for i in s]) for s in subsets]
        print(
            f"pool: {args.members} members x {n_params / 1e6:.1f}M parameters (fp32), "
            f"{args.mixtures} mixtures, device {args.device}, torch threads {torch.get_num_threads()}"
        )
        print(
            f"{'eval tokens':>11} {'baseline s/mix':>15} {'(merge':>8} {'save+load':>10} {'score)':>8} "
            f"{'ours s/mix':>11} {'mix/min base':>13} {'mix/min ours':>13} {'ratio':>7}"
        )
        worst = 0.0  # largest relative NLL difference between the two sides
        for tokens in args.eval_tokens:
            es = EvalSet.load(pool, eval_file(work / f"eval{tokens}.jsonl", tokens))
            n_tok = sum(len(d) - 1 for d in es.docs)
            baseline(pool_dir, mixtures[:1], es, work, args.device)  # warm-up, not timed
            tb, base_nll = baseline(pool_dir, mixtures, es, work, args.device)
            to, setup, results = ours(pool_dir, mixtures, es, args.device)
            for mix, b, r in zip(mixtures, base_nll, results, strict=True):
                o = sum(sc.nll for sc in r.scores.values())
                rel = abs(b - o) / max(abs(b), abs(o), 1e-30)
                if not rel <= NLL_RTOL:
                    raise SystemExit(
                        f"baseline and ours disagree on {mix} at {n_tok} eval tokens: summed NLL "
                        f"{b:.6f} vs {o:.6f} (relative {rel:.2e} > {NLL_RTOL:g})"
                    )
                worst = max(worst, rel)
            base_per = sum(tb.values()) / len(mixtures)
            ours_per = to["total"] / len(mixtures)
            print(
                f"{n_tok:>11} {base_per:>15.2f} {tb['merge'] / len(mixtures):>8.2f} "
                f"{tb['save+load'] / len(mixtures):>10.2f} {tb['score'] / len(mixtures):>8.2f} "
                f"{ours_per:>11.3f} {60 / base_per:>13.1f} {60 / ours_per:>13.1f} {base_per / ours_per:>6.1f}x"
            )
        print(
            f"both sides agree on every mixture's summed NLL (relative difference "
            f"<= {NLL_RTOL:g}, largest {worst:.1e})"
        )
        print(
            f"(ours, once per study: load + stack members + one warm-up mixture {setup:.1f}s; "
            "both sides warm up on one untimed mixture; target: ratio >= 10x)"
        )
        print(
            "ratio = baseline seconds per mixture / ours; both score the same tokens in the same windows"
        )
        assert math.isfinite(base_per)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
