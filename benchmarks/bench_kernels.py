"""Benchmark the kernels against what a user would otherwise write.

Three parts, one run (about two minutes on a 2-core CPU):

(a) merge: ``kernels.weighted_average`` on a pre-stacked ``[8, P]`` buffer into a
    preallocated ``out`` (how the evaluator merges) against the per-tensor state-dict loop
    ``{k: sum(w[i] * sds[i][k] for i in range(8)) for k in keys}``, for 8 members of a
    ~54M-parameter Llama-style model with random weights (shapes from a meta-device model,
    nothing downloaded). Target: >= 4x faster.
(b) scoring: ``model.model(ids)`` + ``kernels.token_nll`` against Hugging Face's
    ``model(ids, labels=ids)`` on a tiny Llama body, 2048 tokens, vocabularies 32K and 128K.
    Peak memory: each path runs once in a fresh subprocess, and its cost is the rise of the
    process's peak resident set (``VmHWM``) over its resident set just before the call, so
    every page torch touches counts, however briefly (CPU torch keeps no allocator stats).
    Time: both paths in this process, alternated, best of two. Targets at 128K: peak
    memory <= 1/4 of the labels path, time no worse.
(c) on CUDA (when present): merge bandwidth as a fraction of the device's peak, and
    token_nll tokens/s against ``F.linear`` + ``F.cross_entropy``.

Run: ``python benchmarks/bench_kernels.py`` (``--cuda-only``: part (c) alone, as
``benchmarks/gpu_check.sh`` runs it). Timings are the best of a few repeats, because
other work on a shared machine only ever makes a run slower. On an oversubscribed machine
the chunked paths suffer most (each chunk is a few OpenMP parallel regions whose barriers
wait for descheduled threads): check ``uptime`` before trusting a ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ablate import kernels  # noqa: E402  (after the path tweak, so the repo's package is found)

N_MEMBERS = 8  # pool size for the merge benchmark
N_TOKENS = 2048  # one long eval window, as the evaluator scores
VOCABS = (32 * 1024, 128 * 1024)


def best_time(
    fn: Callable[[], object],
    repeats: int,
    sync: Callable[[], None] = lambda: None,
    warmup: bool = True,
) -> float:
    """Best wall time of ``repeats`` calls, after one untimed warm-up call if ``warmup``."""
    if warmup:
        fn()
        sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def llama_config(vocab: int, hidden: int, layers: int, intermediate: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=N_TOKENS,
        tie_word_embeddings=False,
    )


# ------------------------------------------------------------------------------ (a) merge


def bench_merge(rows: list[tuple]) -> None:
    from transformers import LlamaForCausalLM

    # ~54M parameters: 2 x 32000 x 512 embeddings/head + 8 layers of 512-wide attention/MLP.
    config = llama_config(vocab=32000, hidden=512, layers=8, intermediate=1024)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    for dtype in (torch.float32, torch.bfloat16):
        _merge_one(dtype, shapes, rows)


def _merge_one(dtype: torch.dtype, shapes: dict[str, torch.Size], rows: list[tuple]) -> None:
    keys, sizes = list(shapes), [s.numel() for s in shapes.values()]
    n_params = sum(sizes)
    stack = torch.randn(N_MEMBERS, n_params).to(dtype)  # (N, P): the evaluator's buffer
    # The state dicts a user would hold: one contiguous tensor per name and member (here
    # views into the stack rows, which changes nothing for the loop but halves memory).
    sds = [
        dict(zip(keys, map(torch.Tensor.view, row.split(sizes), shapes.values()), strict=True))
        for row in stack
    ]
    w = torch.rand(N_MEMBERS).tolist()
    out = torch.empty(n_params, dtype=dtype)

    def naive():
        return {k: sum(w[i] * sds[i][k] for i in range(N_MEMBERS)) for k in keys}

    # Every naive call allocates afresh, so its first call is as representative as any.
    t_naive = best_time(naive, repeats=2 if dtype == torch.float32 else 1, warmup=False)
    t_ours = best_time(lambda: kernels.weighted_average(stack, w, out), repeats=3)
    bytes_moved = stack.numel() * stack.element_size() + out.numel() * out.element_size()
    name = str(dtype).removeprefix("torch.")
    fp32 = dtype == torch.float32
    rows.append(
        (
            f"merge {N_MEMBERS} x {n_params / 1e6:.1f}M {name} (CPU)",
            f"{t_ours * 1e3:.0f} ms, {bytes_moved / t_ours / 1e9:.1f} GB/s",
            f"{t_naive * 1e3:.0f} ms, {bytes_moved / t_naive / 1e9:.1f} GB/s",
            f"{t_naive / t_ours:.1f}x faster",
            ">= 4x faster" if fp32 else "(info)",
            _met(t_naive / t_ours >= 4) if fp32 else "",
        )
    )


# ------------------------------------------------------------------------------ (b) scoring


def scoring_paths(vocab: int) -> dict[str, Callable[[], float]]:
    """The two ways to score a window: HF ``labels=`` and body + ``token_nll``; each
    returns the mean NLL over the window's predicted tokens."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    # Tiny body, big head: 2 layers of width 256, so the vocabulary dominates memory.
    model = LlamaForCausalLM(llama_config(vocab, hidden=256, layers=2, intermediate=688)).eval()
    ids = torch.randint(0, vocab, (1, N_TOKENS))  # (B=1, T)
    targets = F.pad(ids[0, 1:], (0, 1), value=-100)  # (T,): next token, last ignored

    @torch.no_grad()
    def hf() -> float:
        return model(ids, labels=ids).loss.item()

    @torch.no_grad()
    def ours() -> float:
        hidden = model.model(ids).last_hidden_state[0]  # (T, H)
        nll = kernels.token_nll(hidden, model.lm_head.weight, targets)
        return (nll.sum() / (targets != -100).sum()).item()

    return {"hf": hf, "ours": ours}


def child_peak_memory(path: str, vocab: int) -> None:
    """In a fresh process: print the peak memory one scoring call adds, in bytes."""
    fn = scoring_paths(vocab)[path]
    base = _status_bytes("VmRSS")
    fn()
    print(_status_bytes("VmHWM") - base)


def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes.

    ``VmHWM`` belongs to this process's own address space, which ``exec`` made fresh;
    ``ru_maxrss`` would not do: Linux carries it over from the forking parent.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def bench_nll(rows: list[tuple]) -> None:
    # Memory first: one fresh process per (vocabulary, path), all at once (they only measure
    # their own peak resident set, so they may share the CPU).
    children: dict[tuple[int, str], subprocess.Popen] = {}
    peaks = {}
    try:
        for vocab in VOCABS:
            for path in ("hf", "ours"):
                children[vocab, path] = subprocess.Popen(
                    [sys.executable, __file__, "--child", path, "--vocab", str(vocab)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
        for key, child in children.items():
            stdout, _ = child.communicate()
            if child.returncode != 0:
                raise RuntimeError(f"memory probe {key} failed with exit code {child.returncode}")
            peaks[key] = int(stdout.strip().splitlines()[-1])
    finally:
        # a probe that failed (or an interrupt) must not leave the others running
        for child in children.values():
            if child.poll() is None:
                child.kill()
        for child in children.values():
            child.wait()
            if child.stdout is not None:
                child.stdout.close()

    for vocab in VOCABS:
        peak = {path: peaks[vocab, path] for path in ("hf", "ours")}
        paths = scoring_paths(vocab)
        loss = {name: fn() for name, fn in paths.items()}  # also the warm-up
        assert abs(loss["hf"] - loss["ours"]) < 1e-4 * loss["hf"], loss
        # Alternate the two paths so that load from other processes hits both alike.
        times: dict[str, float] = {"hf": float("inf"), "ours": float("inf")}
        for _ in range(2):
            for name, fn in paths.items():
                times[name] = min(times[name], best_time(fn, repeats=1, warmup=False))
        del paths

        label = f"score T={N_TOKENS} V={vocab // 1024}K fp32 (CPU)"
        at_target = vocab == max(VOCABS)
        mem_ratio = peak["ours"] / peak["hf"]
        rows.append(
            (
                f"{label} peak mem",
                f"{peak['ours'] / 2**20:.0f} MiB",
                f"{peak['hf'] / 2**20:.0f} MiB",
                f"{mem_ratio:.3f} of labels=",
                "<= 0.25" if at_target else "(info)",
                _met(mem_ratio <= 0.25) if at_target else "",
            )
        )
        speed = times["hf"] / times["ours"]
        rows.append(
            (
                f"{label} time",
                f"{times['ours']:.2f} s",
                f"{times['hf']:.2f} s",
                f"{speed:.2f}x speed",
                ">= 1.0x" if at_target else "(info)",
                _met(speed >= 1.0) if at_target else "",
            )
        )


# ------------------------------------------------------------------------------ (c) CUDA


def bench_cuda_merge(rows: list[tuple]) -> None:
    device = torch.device("cuda")
    sync = torch.cuda.synchronize
    props = torch.cuda.get_device_properties(device)
    bus, clock = getattr(props, "memory_bus_width", 0), getattr(props, "memory_clock_rate", 0)
    peak_bps = 2 * bus / 8 * clock * 1e3  # double data rate x bus bytes x clock (kHz)

    # 256M parameters per member, 4 GiB of bf16 stack: far beyond L2, like a real pool.
    stack = torch.randn(N_MEMBERS, 256 * 2**20, device=device, dtype=torch.bfloat16)
    w = torch.rand(N_MEMBERS, device=device)
    out = torch.empty(stack.shape[1], device=device, dtype=torch.bfloat16)
    t = best_time(lambda: kernels.weighted_average(stack, w, out), repeats=10, sync=sync)
    bps = (stack.numel() + out.numel()) * 2 / t
    # The plain torch alternative: a bf16 GEMV (cuBLAS), which rounds the weights to bf16.
    w16 = w.to(torch.bfloat16)
    t_torch = best_time(lambda: torch.matmul(w16, stack), repeats=10, sync=sync)
    rows.append(
        (
            f"merge 8 x {stack.shape[1] / 1e6:.0f}M bf16 ({props.name})",
            f"{bps / 1e9:.0f} GB/s",
            f"torch bf16 matmul {t_torch * 1e3:.1f} ms vs {t * 1e3:.1f} ms",
            f"{bps / peak_bps:.0%} of peak" if peak_bps else "peak unknown",
            "(info)",
            "",
        )
    )


def bench_cuda_nll(rows: list[tuple]) -> None:
    device = torch.device("cuda")
    sync = torch.cuda.synchronize
    props = torch.cuda.get_device_properties(device)
    n_tokens, hidden_size, vocab = 8192, 2048, 128 * 1024
    hidden = torch.randn(n_tokens, hidden_size, device=device, dtype=torch.bfloat16)
    weight = torch.randn(vocab, hidden_size, device=device, dtype=torch.bfloat16) * 0.02
    targets = torch.randint(0, vocab, (n_tokens,), device=device)

    def torch_path():
        return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")

    torch.cuda.reset_peak_memory_stats()
    t_torch = best_time(torch_path, repeats=5, sync=sync)
    mem_torch = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t_ours = best_time(lambda: kernels.token_nll(hidden, weight, targets), repeats=5, sync=sync)
    mem_ours = torch.cuda.max_memory_allocated()
    rows.append(
        (
            f"score T={n_tokens} H={hidden_size} V=128K bf16 ({props.name})",
            f"{n_tokens / t_ours / 1e6:.2f} M tok/s, {mem_ours / 2**30:.2f} GiB",
            f"{n_tokens / t_torch / 1e6:.2f} M tok/s, {mem_torch / 2**30:.2f} GiB",
            f"{t_torch / t_ours:.2f}x speed",
            "(info)",
            "",
        )
    )


# ------------------------------------------------------------------------------ report


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def print_table(rows: list[tuple]) -> None:
    header = ("benchmark", "ours", "baseline", "ratio", "target", "")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for r in [header, None, *rows]:
        print(
            line
            if r is None
            else "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))
        )
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=["hf", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--cuda-only",
        action="store_true",
        help="run the CUDA section only (benchmarks/gpu_check.sh): no CPU comparisons",
    )
    args = parser.parse_args()
    if args.child:
        child_peak_memory(args.child, args.vocab)
        return

    start = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cuda: "
        f"{torch.cuda.is_available()}, triton installed: {kernels.triton_available()}"
    )
    print("baselines: merge = per-tensor state-dict loop; score = HF model(ids, labels=ids)")
    rows: list[tuple] = []
    if not args.cuda_only:
        bench_nll(rows)  # first, while this process is still small
        bench_merge(rows)
    if torch.cuda.is_available() and kernels.triton_available():
        bench_cuda_merge(rows)
        torch.cuda.empty_cache()
        bench_cuda_nll(rows)
    else:
        rows.append(("CUDA section", "skipped: no CUDA device or no triton", "", "", "", ""))
    print_table(rows)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
