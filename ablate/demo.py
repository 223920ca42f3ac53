"""``ablate demo``: the whole loop on a corpus every Python install has, with no download.

The corpus is the running interpreter's own standard library: source code partitioned by
top-level package, plus the prose of the help topics that ship in ``pydoc_data``. Part of
each partition is held out as that domain's eval set. The demo trains a tiny tokenizer and
seed model, grows one member per partition, scores every subset, writes a report, and
really trains a few mixtures to check how well the merged proxies predicted them.
Running it again reuses everything already built (pool, members, scores).
"""

from __future__ import annotations

import logging
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.evaluator import Evaluator, results_frame
from ablate.pool import Pool, TinyModelSpec
from ablate.pool.atomic import write_jsonl
from ablate.pool.method import new_pool_recipe
from ablate.present.markdown import write_report
from ablate.present.tables import task_frame
from ablate.validation import validate

if TYPE_CHECKING:
    from ablate.evaluator import Evaluator
    from ablate.pool import Pool

log = logging.getLogger(__name__)

_CHUNK_CHARS = 3000  # one document ~ one screenful of code: long enough to need context
_EVAL_EVERY = 8  # every 8th document of a partition is held out for evaluation
_VALIDATE_MIXTURES = 6  # weighted mixtures really trained at the end to check the proxies
TASK_FILE = "continuation.jsonl"  # the demo's multiple-choice task (task name: continuation)
_TASK_PER_DOC = 3  # task items cut from each held-out document
_TASK_CONTEXT_CHARS = 200  # ~60 tokens of snippet before the word to pick
_TASK_CHOICES = 4  # the true next word and 3 next words of snippets of other documents
_TASK_WORD_CHARS = 40  # a longer "word" (a run of non-space characters) is skipped


@dataclass(frozen=True)
class DemoSettings:
    packages: tuple[str, ...]
    unit_tokens: int
    seed_tokens: int
    eval_docs: int  # held-out documents per domain
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    seq_len: int
    batch_size: int
    lr: float


FULL = DemoSettings(
    packages=("asyncio", "email", "unittest", "multiprocessing", "xml"),
    unit_tokens=60_000,
    # A seed trained on 7.5 units' worth of tokens: proxies then rank fixed-budget mixtures
    # as real training does (docs/accuracy.md: macro Spearman 0.94 here against
    # 0.46 with a 150K-token seed; benchmarks/bench_fidelity.py).
    seed_tokens=450_000,
    eval_docs=12,
    vocab_size=4096,
    hidden_size=128,
    layers=4,
    heads=4,
    seq_len=128,
    batch_size=16,
    lr=2e-3,
)
QUICK = DemoSettings(
    packages=("asyncio", "email"),
    unit_tokens=3_000,
    seed_tokens=6_000,
    eval_docs=3,
    vocab_size=512,
    hidden_size=32,
    layers=2,
    heads=2,
    seq_len=64,
    batch_size=8,
    lr=3e-3,
)


def _chunks(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    """Cut text at line boundaries into pieces of about ``size`` characters."""
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            out.append("".join(cur))
            cur, n = [], 0
    if "".join(cur).strip():
        out.append("".join(cur))
    return out


def stdlib_corpus(packages: tuple[str, ...]) -> tuple[dict[str, list[str]], list[str]]:
    """Documents per partition (packages + ``docs``) and the seed corpus (top-level modules)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts: dict[str, list[str]] = {}
    for pkg in packages:
        files = sorted(f for f in (lib / pkg).rglob("*.py") if not {"test", "tests"} & set(f.parts))
        parts[pkg] = [
            c for f in files for c in _chunks(f.read_text(encoding="utf-8", errors="replace"))
        ]
    from pydoc_data.topics import topics

    parts["docs"] = [c for k in sorted(topics) for c in _chunks(topics[k])]
    seed = [
        c
        for f in sorted(lib.glob("*.py"))
        for c in _chunks(f.read_text(encoding="utf-8", errors="replace"))
    ]
    return parts, seed


def _cut(doc: str, start: int) -> tuple[str, str] | None:
    """``(snippet, word)`` at the first single space after ``start`` +
    ``_TASK_CONTEXT_CHARS``: ``snippet + " " + word`` is the document's own text, the
    snippet ends on a word and ``word`` is the next run of non-space characters."""
    p = doc.find(" ", start + _TASK_CONTEXT_CHARS)
    while p > 0 and (doc[p - 1].isspace() or doc[p + 1 : p + 2].isspace()):
        p = doc.find(" ", p + 1)  # one space between two words
    if p < 0:
        return None
    word = doc[p + 1 :].split(maxsplit=1)[0] if doc[p + 1 :].strip() else ""
    snippet = doc[start:p]
    if not word or len(word) > _TASK_WORD_CHARS or not snippet.strip():
        return None
    return snippet, word


def continuation_task(docs: list[dict], seed: int = 0) -> list[dict]:
    """Task items from eval documents: pick a snippet's true next word among
    ``_TASK_CHOICES``; the others are the next words of snippets of other documents.

    The tiny demo models are far from answering longer continuations (60 characters: near
    chance, 25%); the next word they get right about half of the time, which leaves room
    for mixtures to differ."""
    rng = random.Random(seed)
    cuts = []  # (doc index, domain, snippet, word)
    for i, d in enumerate(docs):
        text = d["text"]
        step = max(1, len(text) // _TASK_PER_DOC)
        for k in range(_TASK_PER_DOC):
            got = _cut(text, k * step)
            if got is not None:
                cuts.append((i, d["domain"], *got))
    items = []
    for n, (i, domain, snippet, word) in enumerate(cuts):
        others = sorted({c[3] for c in cuts if c[0] != i and c[3] != word})
        if len(others) < _TASK_CHOICES - 1:
            continue
        choices = rng.sample(others, _TASK_CHOICES - 1)
        gold = rng.randrange(_TASK_CHOICES)
        choices.insert(gold, word)
        items.append({"id": f"{domain}-{n}", "context": snippet, "choices": choices, "gold": gold})
    return items


def first_tokens(docs: list[str], tok, tokens: int) -> tuple[list[str], int]:
    """The shortest prefix of ``docs`` holding ``tokens`` tokens (all of them if fewer) and
    its tokens, counted as units count them (each document plus its two specials): one
    partition's single base unit."""
    n, kept = 0, []
    for d in docs:
        kept.append(d)
        n += len(tok(d, add_special_tokens=False)["input_ids"]) + 2
        if n >= tokens:
            break
    return kept, n


def build_pool(
    out: str | Path,
    settings: DemoSettings = FULL,
    *,
    progress: bool = True,
    device: str | None = None,
) -> tuple[Pool, Path]:
    """Build (or reuse) the demo pool under ``out`` with ``settings``: returns the pool and
    its eval file (held-out documents of every partition). The multiple-choice task
    ``TASK_FILE`` is written beside it, cut from the same held-out documents."""
    s = settings
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts, seed = stdlib_corpus(s.packages)
    pool_path = out / "pool"
    if (pool_path / "pool.json").is_file():
        pool = Pool.open(pool_path)
        print(f"reusing the demo pool in {pool_path}")
    else:
        seed_chars = (
            s.seed_tokens * 6
        )  # ~3.5 chars per token; 6 leaves room for the tokenizer to vary
        seed_docs, n = [], 0
        for d in seed:
            seed_docs.append({"text": d})
            n += len(d)
            if n > seed_chars:
                break
        write_jsonl(out / "seed.jsonl", seed_docs)
        recipe = new_pool_recipe(
            out / "seed.jsonl",
            unit_tokens=s.unit_tokens,
            seq_len=s.seq_len,
            batch_size=s.batch_size,
            lr=s.lr,
        )
        tiny = TinyModelSpec(
            vocab_size=s.vocab_size,
            hidden_size=s.hidden_size,
            layers=s.layers,
            heads=s.heads,
            intermediate_size=3 * s.hidden_size,
            seed_tokens=s.seed_tokens,
        )
        print(f"training the tiny tokenizer and seed model ({s.seed_tokens} tokens)")
        pool = Pool.create(
            pool_path,
            seed_data=out / "seed.jsonl",
            recipe=recipe,
            tiny=tiny,
            progress=progress,
            device=device,
        )
    # Hold out every _EVAL_EVERY-th document; keep one unit of tokens per partition so that
    # each partition is one base unit (one member).
    train, evals = [], []
    tok = pool.tokenizer
    for name, docs in parts.items():
        held = docs[::_EVAL_EVERY][: s.eval_docs]
        held_set = {id(d) for d in held}
        # exactly one base unit closes at the last kept document, nothing remains
        kept, _ = first_tokens([d for d in docs if id(d) not in held_set], tok, s.unit_tokens)
        train += [{"text": d, "domain": name} for d in kept]
        evals += [{"text": d, "domain": name} for d in held]
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evals)
    write_jsonl(out / TASK_FILE, continuation_task(evals))
    pool.add([out / "train.jsonl"], by="domain", progress=progress)
    missing = pool.missing()
    if missing:
        print(f"growing {len(missing)} member(s)")
        pool.grow(progress=progress, device=device)
    return pool, out / "eval.jsonl"


def run_demo(
    out: str | Path, *, quick: bool = False, progress: bool = True, device: str | None = None
) -> Path:
    """Build (or reuse) the demo pool under ``out``, score every subset, write the report."""
    out = Path(out)
    pool, _ = build_pool(out, QUICK if quick else FULL, progress=progress, device=device)
    ev = Evaluator(
        pool,
        out / "eval.jsonl",
        by="domain",
        device=device,
        progress=progress,
        tasks=[out / TASK_FILE],
    )
    mixtures = ev.all_subsets()
    print(
        f"scoring {len(mixtures)} mixtures on {len(ev.domains)} eval domains and the "
        f"{ev.tasks['continuation'].n}-item continuation task ({TASK_FILE})"
    )
    results = ev.run_many(mixtures)
    frame = results_frame(results)
    ranked = sorted(results, key=lambda r: r.tasks["continuation"].acc)
    worst, best = ranked[0], ranked[-1]
    print(
        f"continuation task accuracy: best {best.tasks['continuation'].acc:.3f} ({best.mixture}), "
        f"worst {worst.tasks['continuation'].acc:.3f} ({worst.mixture})"
    )
    report = write_report(
        frame, out, title="ablate demo: Python standard library", tasks=task_frame(results)
    )
    print(report.summary)
    if ev.level_shift is not None:
        print(ev.level_shift.describe())
    print(f"report: {report.markdown}\nheatmap: {report.heatmap}")
    _validate(ev, out / "validation")
    return report.markdown


def _validate(ev: Evaluator, out: Path) -> None:
    """Really train a few weighted mixtures at the members' budget and print whether the
    proxies rank them as real training does (reused on reruns).

    Fixed budget: each real model costs one member's training, so the demo stays short.
    Progress bars and the training device are the evaluator's, as ``validate`` defaults to.
    """
    print(
        f"validating: really training {_VALIDATE_MIXTURES} weighted mixtures at the members' "
        "budget to compare with their proxies"
    )
    v = validate(ev, sample=_VALIDATE_MIXTURES, weights="dirichlet", budget="fixed")
    files = v.write(out, title="ablate demo: proxy vs really trained (fixed budget)")
    d = v.decisions
    domains = d.drop(index="macro")
    print(
        f"validation over {v.mixtures} mixtures: per-domain Spearman {domains['spearman'].min():.2f}"
        f"-{domains['spearman'].max():.2f}, macro Spearman {d.loc['macro', 'spearman']:.2f}, "
        f"largest regret of the proxy's pick {100 * d['regret'].max():.2f}% (report: {files.markdown})"
    )
    if v.tasks is not None:
        for (task, metric), r in v.tasks.iterrows():
            if metric == "acc":
                print(
                    f"task {task}: proxy-vs-real accuracy Spearman {r['spearman']:.2f} over "
                    f"{int(r['n'])} mixtures ({int(r['items'])} items)"
                )
        for note in v.task_notes:
            print(f"note: {note}")
