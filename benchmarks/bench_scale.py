"""Benchmark ablate at 128 partitions: grow, score, search overhead, clustering, memory.

Builds a tiny pool (a small seed trained from scratch) over a synthetic corpus of 128 topics,
each with its own vocabulary, one partition per topic (``--partition-by topic``), and reports:

* clustering the same corpus into 128 clusters (tfidf: LSA on hashed TF-IDF): time and adjusted Rand index
  against the topics;
* per-member grow time (real training, tiny units);
* scoring time per mixture of k = 2, 8, 32, 128 members (fresh merges, no results store);
* each strategy's proposal time (its ``propose`` + ``observe``, including the gradient
  strategy's backward pass) per scored mixture, and as a fraction of the scoring time;
* peak RSS of the process.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_scale.py [--out DIR] [--partitions 128]``.
``--cluster-file BIG.jsonl [--clusters K]`` instead clusters one (large) JSONL in bounded
memory, fit on the reservoir sample then a streaming assignment, and prints its peak RSS
(measure with ``/usr/bin/time -v`` too).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ablate import Evaluator, Mixture  # noqa: E402  (after the path tweak)
from ablate.pool import Pool, Recipe, TinyModelSpec  # noqa: E402
from ablate.pool.atomic import write_jsonl  # noqa: E402
from ablate.strategies import STRATEGIES, search  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus(n_topics: int, docs_per_topic: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, eval) records: each topic draws 80-word documents from its own 30 words plus
    a shared pool of 40 common words, so topics are separable but not trivially so."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))

    common = [word() for _ in range(40)]
    vocab = [[word() for _ in range(30)] for _ in range(n_topics)]
    width = len(str(n_topics - 1))
    train, evals = [], []
    for t in range(n_topics):
        for i in range(docs_per_topic + 1):
            text = " ".join(
                rng.choice(vocab[t] if rng.random() < 0.6 else common) for _ in range(80)
            )
            rec = {"text": text, "topic": f"t{t:0{width}d}", "domain": f"d{t % 4}"}
            (evals if i == 0 and t % 8 == 0 else train).append(rec)
    return train, evals


class Timed:
    """Wraps a strategy: times its ``propose`` and ``observe`` calls."""

    def __init__(self, inner):
        self.inner, self.seconds, self.steps = inner, 0.0, 0

    def propose(self, n):
        t = time.perf_counter()
        out = self.inner.propose(n)
        self.seconds += time.perf_counter() - t
        self.steps += bool(out)
        return out

    def observe(self, trials):
        t = time.perf_counter()
        self.inner.observe(trials)
        self.seconds += time.perf_counter() - t


def cluster_file(path: Path, k: int) -> None:
    """Cluster ``path`` as ``pool add --clusters`` does, without keeping its documents."""
    import numpy as np

    from ablate.pool.clusterer import fit_clusters
    from ablate.pool.corpus import iter_documents

    t = time.perf_counter()
    model = fit_clusters(iter_documents([path]), k, seed=0)
    fit_s = time.perf_counter() - t
    r = model.record
    print(f"fit: {fit_s:.1f} s on {r.sample_docs} of {r.corpus_docs} documents; "
          f"peak RSS {peak_rss_mib():.0f} MiB", flush=True)  # fmt: skip
    counts = np.zeros(k, dtype=np.int64)
    for _, labels in model.assign_batches(iter_documents([path])):
        counts += np.bincount(labels, minlength=k)
    print(f"assigned {counts.sum()} documents in {time.perf_counter() - t - fit_s:.1f} s: "
          f"{counts.tolist()}; peak RSS {peak_rss_mib():.0f} MiB")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-scale"))
    ap.add_argument("--partitions", type=int, default=128)
    ap.add_argument("--budget", type=int, default=20, help="evaluations per strategy")
    ap.add_argument("--max-size", type=int, default=4, help="--max-size of subset searches")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cluster-file", type=Path, help="only cluster this JSONL (bounded memory)")
    ap.add_argument("--clusters", type=int, default=6, help="clusters for --cluster-file")
    args = ap.parse_args()
    if args.cluster_file is not None:
        cluster_file(args.cluster_file, args.clusters)
        return
    n = args.partitions
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train, evals = corpus(n, 4)
    train_file, eval_file = (
        write_jsonl(out / "train.jsonl", train),
        write_jsonl(out / "eval.jsonl", evals),
    )
    print(f"corpus: {len(train)} train documents in {n} topics, {len(evals)} eval documents")

    # ---- clustering the unlabeled corpus into n clusters
    from sklearn.metrics import adjusted_rand_score

    from ablate.pool.clusterer import fit_clusters
    from ablate.pool.corpus import read_documents

    docs = read_documents([train_file])
    t = time.perf_counter()
    model = fit_clusters(iter(docs), n, seed=0)
    labels = model.assign(docs)
    dt = time.perf_counter() - t
    ari = adjusted_rand_score([d.meta["topic"] for d in docs], labels)
    print(
        f"clustering {len(docs)} docs into {n} clusters (tfidf): {dt:.2f} s, ARI vs topics {ari:.3f}"
    )

    # ---- pool and growth
    pool_dir = out / "pool"
    if (pool_dir / "pool.json").is_file():
        pool = Pool.open(pool_dir)
    else:
        seed = write_jsonl(out / "seed.jsonl", [{"text": r["text"]} for r in train[::3]])
        recipe = Recipe(unit_tokens=512, seq_len=64, batch_size=8, lr=3e-3)
        tiny = TinyModelSpec(
            vocab_size=1024,
            hidden_size=64,
            layers=2,
            heads=2,
            intermediate_size=128,
            seed_tokens=20_000,
        )
        pool = Pool.create(
            pool_dir, seed_data=seed, recipe=recipe, tiny=tiny, progress=False, device=args.device
        )
    pool.add([train_file], by="topic", progress=False)
    todo = len(pool.missing())
    t = time.perf_counter()
    pool.grow(progress=False, device=args.device)
    grow_s = time.perf_counter() - t
    members = pool.members
    if todo:
        print(f"grow: {todo} members in {grow_s:.1f} s = {grow_s / todo:.3f} s per member "
              f"({pool.manifest.recipe.unit_tokens} tokens per unit)")  # fmt: skip
    print(f"pool: {len(pool.partitions)} partitions, {len(members)} members, "
          f"{members[0].n_params:,} parameters each; peak RSS {peak_rss_mib():.0f} MiB")  # fmt: skip

    # ---- scoring time per mixture by number of members
    ev = Evaluator(pool, eval_file, by="domain", store=False, progress=False, device=args.device)
    parts = list(pool.partitions)
    rng = random.Random(1)
    ev.evaluate(Mixture.uniform(parts[:2]))  # load the stack, tokenize the eval set
    print(
        f"stack loaded: {'streamed' if ev.merged.chunked else 'in memory'}; peak RSS {peak_rss_mib():.0f} MiB"
    )
    score_s = {}
    for k in (2, 8, 32, 128):
        if k > len(parts):
            continue
        times = []
        for _ in range(5):
            m = Mixture.of({p: rng.random() + 0.1 for p in rng.sample(parts, k)})
            t = time.perf_counter()
            ev.evaluate(m)
            times.append(time.perf_counter() - t)
        score_s[k] = statistics.median(times)
        print(f"score a mixture of {k:3d} members: {1000 * score_s[k]:.1f} ms (median of 5)")

    # ---- each strategy's own time per scored mixture, next to the scoring time
    print(
        f"\nstrategies at {len(parts)} partitions, budget {args.budget}, subsets with --max-size {args.max_size}:"
    )
    print(f"{'strategy':<12}{'evals':>6}{'propose ms/mix':>16}{'score ms/mix':>14}{'overhead':>10}")
    for name, info in sorted(STRATEGIES.items()):
        continuous = "subsets" not in info.spaces
        timed: list[Timed] = []

        def wrapped(ctx, f=info.factory, timed=timed):
            timed.append(Timed(f(ctx)))
            return timed[-1]

        STRATEGIES[name] = info.__class__(info.name, wrapped, info.spaces, info.summary)
        try:
            t = time.perf_counter()
            study = search(
                ev,
                strategy=name,
                budget=args.budget,
                max_size=None if continuous else args.max_size,
                continuous=continuous,
                heldout=0.0,
                seed=0,
                progress=False,
            )
            total = time.perf_counter() - t
        finally:
            STRATEGIES[name] = info
        plan = timed[0]
        # per scored mixture: greedy, random and exhaustive propose many at once
        evals = max(1, len(study.trials))
        scoring = (total - plan.seconds) / evals
        print(f"{name:<12}{len(study.trials):>6}{1000 * plan.seconds / evals:>16.1f}"
              f"{1000 * scoring:>14.1f}{plan.seconds / max(total - plan.seconds, 1e-9):>10.1%}")  # fmt: skip
    print(f"\npeak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
