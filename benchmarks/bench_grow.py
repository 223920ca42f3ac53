"""Wall time of growing a pool locally (one member after another) vs one Ray task per member.

Builds a tiny pool of ``--members`` one-unit partitions (Na et al., EMNLP 2024: one member
per base unit), grows it with ``Pool.grow``, deletes the members, grows it again with
``ablate.pool.grow_with_ray`` on a local Ray cluster, and prints both times and
their ratio. Ray's cluster startup is timed apart from the grow; the Ray grow includes
starting its worker processes (each imports torch and loads the seed), which is what a
user pays. Members must come out byte-identical (same seeds), which is checked too.

    python benchmarks/bench_grow.py [--members 4] [--unit-tokens 1000] [--cpus N]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "pi",
    "rho",
]


def _docs(tag: int, n: int, length: int = 80) -> list[dict]:
    rng = random.Random(tag)
    vocab = WORDS[tag % 4 :: 2] or WORDS  # overlapping vocabularies per partition
    return [
        {"text": " ".join(rng.choice(vocab) for _ in range(length)), "part": f"p{tag}"}
        for _ in range(n)
    ]


def build_pool(root: Path, members: int, unit_tokens: int):
    """A tiny seed model and ``members`` one-unit partitions, nothing trained yet."""
    from ablate.pool import Pool, Recipe, TinyModelSpec
    from ablate.pool.atomic import write_jsonl

    seed = write_jsonl(root / "seed.jsonl", [d for i in range(members) for d in _docs(100 + i, 10)])
    data = write_jsonl(root / "data.jsonl", [d for i in range(members) for d in _docs(i, 9)])
    recipe = Recipe(unit_tokens=unit_tokens, seq_len=32, batch_size=4, lr=3e-3)
    spec = TinyModelSpec(
        vocab_size=300, hidden_size=32, layers=2, heads=2, intermediate_size=64, seed_tokens=3000
    )
    pool = Pool.create(root / "pool", seed_data=seed, recipe=recipe, tiny=spec, progress=False)
    pool.add([data], by="part", progress=False)
    return pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument(
        "--unit-tokens", type=int, default=1000, help="tokens per member (training budget)"
    )
    ap.add_argument(
        "--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster"
    )
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from ablate.pool import grow_with_ray

    root = Path(tempfile.mkdtemp(prefix="bench-grow-"))
    try:
        pool = build_pool(root, args.members, args.unit_tokens)
        n = len(pool.missing())

        t0 = time.perf_counter()
        local = pool.grow(progress=False, device="cpu")
        t_local = time.perf_counter() - t0
        shas = {m.member_id: m.weights_sha256 for m in local}
        shutil.rmtree(pool.path / "members")

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            t_init = time.perf_counter() - t0
            t0 = time.perf_counter()
            remote = grow_with_ray(pool, progress=False)
            t_ray = time.perf_counter() - t0
        finally:
            ray.shutdown()

        same = shas == {m.member_id: m.weights_sha256 for m in remote}
        print(
            f"members: {n}, {args.unit_tokens} tokens each, torch threads here: {torch.get_num_threads()}"
        )
        print(f"local grow (one after another):  {t_local:7.2f} s")
        print(
            f"ray grow ({args.cpus} CPUs, 1 per task):  {t_ray:7.2f} s  (+ {t_init:.2f} s ray.init)"
        )
        print(
            f"ratio local / ray:               {t_local / t_ray:7.2f}x  (with ray.init: {t_local / (t_ray + t_init):.2f}x)"
        )
        print(f"members byte-identical: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
