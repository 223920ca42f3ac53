"""Fidelity suite: does the merged proxy rank mixtures as real training does, on corpora
nobody tuned on?

Builds several corpora from text every machine with this venv has (no hub): Python code by
package, C/C++ headers, Markdown/reStructuredText docs, METADATA long descriptions, licence
texts, JSON/YAML data, and the demo's standard-library corpus. Each corpus has 6-8
partitions of mixed genres (code and prose) and its own seed data drawn from other
sources, all deterministic given ``--seed``. For each corpus and setting (seed tokens x
unit tokens) it grows one pool per member-lever *variant* (plain, seed-data mix, low
constant member rate, both), runs fixed-budget validation
(``ablate validate --budget fixed --weights dirichlet --sample 16 --repeats 2``) and prints
one table.

Fair comparison: every variant of a (corpus, setting) shares one seed model and one set of
real models. Real models train by ``Recipe.real()``: the pool's recipe without the
member-only levers, i.e. what a user's plain training run on the mixture would be. Their
validation keys ignore the levers, so the variants' ``validation/`` folders are one folder.

    python benchmarks/bench_fidelity.py --work runs/fidelity                    # everything
    python benchmarks/bench_fidelity.py --corpora mlcode --settings 300000:30000 \
        --variants plain both                                                   # one cell

``--merge fisher fisher_tensor`` also merges each variant's members by Fisher-weighted
averaging (``ablate.engine.merges.fisher``; rows ``VARIANT+MERGE``) on a copy of the
variant's pool that holds each member's Fisher (``VARIANT+fisher/``); the real models and
their cached scores are reused, so a merge row costs only the Fisher and the proxies (a
minute or two per cell on one core):

    python benchmarks/bench_fidelity.py --work runs/fidelity --corpora system \
        --settings 300000:60000 --variants plain --merge average fisher fisher_tensor

``--method lora`` builds LoRA cells beside the full-weight ones (folders and labels end in
``-lora``): members and real models train adapters (the product's targets for the
architecture unless ``--lora-targets``); member levers that need full weights are refused:

    python benchmarks/bench_fidelity.py --work runs/fidelity --corpora infra \
        --settings 300000:30000 --method lora --variants plain --merge average regmean

Two modes read cached cells only (no training): ``--pick-ceilings`` prints how often a
perfect proxy's pick is within 1% of fresh seeds' best, and ``--referee-pairs`` judges the
bar against every pair of a cell's ``--repeats`` seeds (the issue's ``--repeats 2`` is one
pair), for the first ``--variants``/``--merge`` proxies and for two other seeds' mean used as
the proxy (the like-for-like ceiling of the whole bar; proxies come from the pool's results
store, where every row's validation left them):

    python benchmarks/bench_fidelity.py --work runs/fidelity --corpora mlcode scistack \
        system infra --settings 300000:30000 300000:60000 900000:30000 --repeats 4 \
        --variants precond --merge fisher_damped --referee-pairs

``probe_merges.py`` reruns merges that were tried and not adopted on the cached cells.

Everything built (corpus files, pools, members, real models, rows) is cached under
``--work``: a rerun reuses it and only prints. The table's ``digest`` is a hash of each
cell's text (``corpus_digest``): the corpora follow the installed releases, so two tables
compare cell by cell only where the digests match (``corpus.json`` lists the releases).
Costly on CPU: set ``OMP_NUM_THREADS=1`` and run corpora in separate processes.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from ablate.demo import first_tokens
from ablate.engine.merges import MERGES, POOL_MERGES
from ablate.pool.atomic import write_json, write_jsonl
from ablate.pool.storage import PROXY_LEVELS

SITE = Path(sysconfig.get_paths()["purelib"])  # this venv's site-packages
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CHUNK = 3000  # characters per document (the demo's)
EVAL_DOCS = 8  # held-out documents per domain
MODEL = {"vocab_size": 4096, "hidden_size": 128, "layers": 4, "heads": 4}  # the demo's size
SEQ_LEN, BATCH, LR = 128, 16, 2e-3  # the demo's recipe
# Member-only levers (ablate.pool.recipe.MEMBER_ONLY); real models never use them.
VARIANTS: dict[str, dict] = {
    "plain": {},
    "mix": {"member_seed_share": 0.5},
    "lowlr": {"member_schedule": "constant", "member_lr": LR / 10},  # the seed's final rate
    "both": {"member_seed_share": 0.5, "member_schedule": "constant", "member_lr": LR / 10},
    "precond": {"member_preconditioner": "seed"},  # the seed's AdamW second moments
    # the default members (seed's second moments) also reading seed data, DeMix-style
    "precondmix50": {"member_preconditioner": "seed", "member_seed_share": 0.5},
    "precondmix20": {"member_preconditioner": "seed", "member_seed_share": 0.2},
    # the default members at twice the peak rate: do members that travel further answer a
    # weight as steeply as training does? (sixteenth session)
    "precond2lr": {"member_preconditioner": "seed", "member_lr": 2 * LR},
    # the default members grown again from another member order seed (the seed model, units
    # and real models shared): how much of a cell's verdict is its members' luck?
    # (seventeenth session; 2001 = the suite's --seed 1 plus 2000)
    "precond_ms2": {"member_preconditioner": "seed", "member_order_seed": 2001},
    "precond_ms3": {"member_preconditioner": "seed", "member_order_seed": 3001},
}


# ---------------------------------------------------------------------------- text sources
def _chunks(text: str) -> list[str]:
    from ablate.demo import _chunks as cut

    return [c for c in cut(text, CHUNK) if len(c.strip()) > 200]


def _read(f: Path) -> str:
    """A file's text (gzip-compressed files, man pages and changelogs, decompressed)."""
    try:
        if f.suffix == ".gz":
            import gzip

            return gzip.decompress(f.read_bytes()).decode("utf-8", errors="replace")
        return f.read_text(encoding="utf-8", errors="replace")
    except (OSError, EOFError, ValueError):  # unreadable, or a truncated/corrupt archive
        return ""


def files(root: Path, *globs: str) -> list[Path]:
    """Files under ``root`` matching ``globs``, sorted, tests left out."""
    out = {f for g in globs for f in root.rglob(g) if f.is_file()}
    return sorted(f for f in out if not {"test", "tests", "testing"} & set(f.parts))


def from_files(fs: list[Path]) -> list[str]:
    return [c for f in fs for c in _chunks(_read(f))]


def scripts(root: Path) -> list[str]:
    """Interpreted programs (text that starts with ``#!``) directly under ``root``."""
    out = []
    for f in sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink()):
        try:
            with open(f, "rb") as fh:
                if fh.read(2) != b"#!":
                    continue
        except OSError:
            continue
        out += _chunks(_read(f))
    return out


def metadata_prose() -> list[str]:
    """Long descriptions of installed distributions (the text after METADATA's headers)."""
    out = []
    for f in sorted(SITE.glob("*.dist-info/METADATA")):
        body = _read(f).split("\n\n", 1)
        if len(body) == 2:
            out += _chunks(body[1])
    return out


def licences() -> list[str]:
    """Licence texts of installed distributions, each distinct text once."""
    seen, out = set(), []
    for f in sorted(SITE.glob("*.dist-info/**/*")):
        if f.is_file() and ("LICEN" in f.name.upper() or "COPYING" in f.name.upper()):
            text = _read(f)
            if text.strip() and text not in seen:
                seen.add(text)
                out += _chunks(text)
    return out


def py(*pkgs: str, root: Path = SITE) -> Callable[[], list[str]]:
    return lambda: from_files([f for p in pkgs for f in files(root / p, "*.py")])


def glob(root: Path, *globs: str) -> Callable[[], list[str]]:
    return lambda: from_files(files(root, *globs))


# name -> (partitions {name: source}, seed sources): code and prose mixed in each corpus.
CORPORA: dict[str, tuple[dict[str, Callable[[], list[str]]], list[Callable[[], list[str]]]]] = {
    "mlcode": (
        {
            "torch_py": py("torch/nn", "torch/optim", "torch/utils"),
            "hf_py": py("transformers/generation", "transformers/models/llama", "peft"),
            "numpy_py": py("numpy"),
            "cpp_headers": glob(SITE / "torch/include/c10", "*.h"),
            "docs": lambda: from_files(files(SITE, "*.md", "*.rst")) + metadata_prose()[::3],
            "licences": licences,
            "data": glob(SITE, "*.json", "*.yaml", "*.yml", "*.toml"),
        },
        [py("sklearn", "jinja2"), glob(SITE / "torch/include/ATen", "*.h"), metadata_prose],
    ),
    "scistack": (
        {
            "sympy_py": py("sympy/core", "sympy/solvers", "sympy/printing"),
            "scipy_py": py("scipy/stats", "scipy/optimize"),
            "pandas_py": py("pandas/core"),
            "c_headers": glob(SITE / "numpy/_core/include", "*.h"),
            "prose": metadata_prose,
            "stubs": glob(SITE / "torch", "*.pyi"),
            "licences": licences,
        },
        [py("matplotlib", "networkx"), glob(SITE / "scipy", "*.h"), licences],
    ),
    "system": (
        {
            "tkinter_idle": py("tkinter", "idlelib", root=STDLIB),
            "libc_headers": glob(Path("/usr/include"), "*.h"),
            "pydoc_topics": lambda: _topics(),
            "web_py": py("requests", "urllib3", "httpx2", "h11"),
            "markdown": lambda: from_files(files(SITE, "*.md", "*.rst", "*.txt")),
            "ipython_py": py("IPython", "prompt_toolkit"),
        },
        [py("pygments", "rich"), glob(SITE / "pyarrow/include", "*.h"), metadata_prose],
    ),
    # Added after the levers and merges were chosen on the three above: an out-of-sample check.
    "infra": (
        {
            "ray_py": py("ray/tune", "ray/data"),
            "optuna_py": py("optuna"),
            "triton_py": py("triton/language", "triton/runtime", "triton/compiler"),
            "stdlib_net": py("email", "http", "urllib", root=STDLIB),
            "deb_copyright": glob(Path("/usr/share/doc"), "copyright"),
            "etc_configs": glob(Path("/etc"), "*.conf", "*.cfg"),
        },
        [py("pandas/io", "networkx"), glob(Path("/usr/include/linux"), "*.h"), metadata_prose],
    ),
    # Added in the twelfth session, after every default (full-weight and LoRA) was chosen:
    # held out, measured once with the shipped defaults. Perl modules and their POD, locale
    # definitions, Cython, C sources, text files and pydantic: no genre of the others' seeds.
    "polyglot": (
        {
            "perl_pm": glob(Path("/usr/share/perl"), "*.pm"),
            "perl_pod": glob(Path("/usr/share/perl"), "*.pod"),
            "locales": glob(Path("/usr/share/i18n/locales"), "*"),
            "cython": glob(SITE, "*.pyx", "*.pxd"),
            "c_sources": glob(SITE, "*.c"),
            "pydantic_py": py("pydantic"),
            "text_files": glob(SITE, "*.txt"),
        },
        [
            py("fontTools", "PIL"),
            glob(Path("/usr/include/x86_64-linux-gnu"), "*.h"),
            metadata_prose,
        ],
    ),
    # Added in the fourteenth session, after the level correction (ablate validate) and the
    # specialisation correction (probe_calibration.py --gain) were written down with their
    # constants: held out for those, measured once. Man pages (roff), shell and other
    # scripts, Debian changelogs, MIME XML, C++ sources and stdlib asyncio/unittest/xml.
    "shellman": (
        {
            "man_pages": glob(Path("/usr/share/man/man1"), "*.gz"),
            "scripts": lambda: scripts(Path("/usr/bin")),
            "changelogs": glob(Path("/usr/share/doc"), "changelog.Debian.gz"),
            "mime_xml": glob(Path("/usr/share/mime"), "*.xml"),
            "cpp_sources": glob(SITE, "*.cpp", "*.cc", "*.hpp"),
            "stdlib_py": py("asyncio", "unittest", "xml", "json", root=STDLIB),
        },
        [py("pip"), glob(Path("/usr/share/perl5"), "*.pm"), metadata_prose],
    ),
    # Added in the fifteenth session, after the proxy level ``specialisation`` (its scale and
    # power) was shipped as the default of preconditioned full-weight pools: held out for it,
    # measured once. CMake modules and their reST manual, Vim script, GNU Info manuals, Tcl
    # and PostgreSQL's SQL; the seed: stdlib sqlite3/logging/concurrent/importlib/ctypes,
    # GDB's Python and metadata prose.
    "toolchain": (
        {
            "cmake_modules": glob(Path("/usr/share/cmake-3.25/Modules"), "*.cmake"),
            "cmake_docs": glob(Path("/usr/share/cmake-3.25/Help"), "*.rst"),
            "vim_script": glob(Path("/usr/share/vim"), "*.vim"),
            "info_manuals": glob(Path("/usr/share/info"), "*.gz"),
            "tcl": glob(Path("/usr/share/tcltk"), "*.tcl"),
            "sql": glob(Path("/usr/share/postgresql"), "*.sql"),
        },
        [
            py("sqlite3", "logging", "concurrent", "importlib", "ctypes", root=STDLIB),
            glob(Path("/usr/share/gdb"), "*.py"),
            metadata_prose,
        ],
    ),
    "demo": ({}, []),  # ablate.demo.stdlib_corpus, at the demo's own settings (--demo-setting)
}


def _topics() -> list[str]:
    from pydoc_data.topics import topics

    return [c for k in sorted(topics) for c in _chunks(topics[k])]


def build_corpus(name: str, need_chars: int, seed_chars: int, seed: int) -> tuple[dict, list]:
    """(partitions {name: docs}, seed docs): each partition's chunks shuffled by ``seed`` and
    cut to ``need_chars``; the seed data interleaves its sources up to ``seed_chars``."""
    if name == "demo":
        from ablate.demo import FULL, stdlib_corpus

        parts, seed_docs = stdlib_corpus(FULL.packages)
        return parts, seed_docs[: seed_chars // CHUNK + 1]
    part_src, seed_src = CORPORA[name]
    rng = random.Random(seed)
    parts = {}
    for pname, src in part_src.items():
        docs = _texts(name, f"partition {pname!r}", src)
        rng.shuffle(docs)
        parts[pname] = _take(docs, need_chars)
        _warn_short(name, f"partition {pname!r}", parts[pname], need_chars)
    pools = [_texts(name, f"seed source {i + 1}", src) for i, src in enumerate(seed_src)]
    for p in pools:
        rng.shuffle(p)
    mixed = [d for group in itertools.zip_longest(*pools) for d in group if d is not None]
    seed_docs = _take(mixed, seed_chars)
    _warn_short(name, "the seed data", seed_docs, seed_chars)
    return parts, seed_docs


def _warn_short(corpus: str, what: str, docs: list[str], chars: int) -> None:
    """Say so where a source holds less text than the cell asks for: the cell is still
    built (the suite's published cells were built so), but its units or held-out documents
    come out short, which ``corpus.json`` records and the reader should know."""
    if (have := sum(map(len, docs))) < chars:
        print(
            f"bench_fidelity: warning: {what} of corpus {corpus!r} has {have:,} of the "
            f"{chars:,} characters this cell asks for; it is built short",
            file=sys.stderr,
        )


def _texts(corpus: str, what: str, src: Callable[[], list[str]]) -> list[str]:
    """``src``'s documents; a source that finds none here (another OS, a package not
    installed) stops the build: the corpus would silently be another one."""
    if docs := src():
        return docs
    raise SystemExit(
        f"bench_fidelity: error: {what} of corpus {corpus!r} found no text on this machine "
        f"(its sources: CORPORA[{corpus!r}] in {Path(__file__).name}); install what it reads "
        "or pick other --corpora"
    )


def _take(docs: list[str], chars: int) -> list[str]:
    out, n = [], 0
    for d in docs:
        if n >= chars:
            break
        out.append(d)
        n += len(d)
    return out


def corpus_digest(folder: Path) -> str:
    """The first 12 hex digits of a SHA-256 over a cell's partitions and seed data as trained
    on: the same digest on two machines is the same corpus. The text is read from installed
    packages, so a different release of any of them gives another corpus (and other numbers)."""
    h = hashlib.sha256()
    for name in ("parts.jsonl", "seed.jsonl"):
        f = folder / name
        h.update(name.encode() + b"\0")
        if f.is_file():
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:12]


def corpus_manifest(folder: Path) -> dict:
    """``corpus.json``, written when a cell builds its corpus: the digest, each partition's
    documents and characters, and the distributions installed then, so that two machines
    whose digests differ can see which releases did it."""
    from importlib.metadata import distributions

    counts: dict[str, list[int]] = {}
    with (folder / "parts.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            c = counts.setdefault(rec["domain"], [0, 0])
            c[0] += 1
            c[1] += len(rec["text"])
    dists = {f"{d.metadata['Name']}=={d.version}" for d in distributions()}
    return {
        "digest": corpus_digest(folder),
        "partitions": {k: {"docs": n, "chars": c} for k, (n, c) in sorted(counts.items())},
        "python": platform.python_version(),
        "distributions": sorted(dists, key=str.lower),
    }


# ---------------------------------------------------------------------------- pools
def build_pools(folder: Path, corpus: str, seed_tokens: int, unit_tokens: int, args) -> dict:
    """Plain pool (its own tiny seed) and one pool per variant sharing its seed and real
    models; returns {variant: (pool, eval file)}."""
    from ablate.pool import LoraSpec, Pool, Recipe, TinyModelSpec

    folder.mkdir(parents=True, exist_ok=True)
    eval_docs = 12 if corpus == "demo" else args.eval_docs
    needs_seed = any(
        VARIANTS[v].get("member_seed_share") or VARIANTS[v].get("member_preconditioner")
        for v in args.variants
    )
    # a pretrained base trains on nothing here, but members that read general data get the
    # corpus's seed data, SEED tokens' worth (the partitions are rebuilt identically)
    seed_file = folder / "seed.jsonl"
    seed_missing = (
        args.base and needs_seed and not (seed_file.is_file() and seed_file.stat().st_size)
    )
    if seed_missing and not seed_tokens:
        raise SystemExit("--variants that read seed data need SEED > 0 in --settings")
    if seed_missing or not (folder / "parts.jsonl").is_file():
        parts, seed_docs = build_corpus(
            corpus,
            need_chars=unit_tokens * 6 + eval_docs * CHUNK * 8,
            seed_chars=seed_tokens * 6,
            seed=args.seed,
        )
        write_jsonl(folder / "seed.jsonl", [{"text": d} for d in seed_docs])
        if not (folder / "parts.jsonl").is_file():
            write_jsonl(
                folder / "parts.jsonl",
                [{"text": d, "domain": p} for p, ds in parts.items() for d in ds],
            )
        write_json(folder / "corpus.json", corpus_manifest(folder))
    recipe = Recipe(
        method=args.method,
        unit_tokens=unit_tokens,
        seq_len=args.seq_len,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        lora=LoraSpec(target_modules=tuple(args.lora_targets)),
    )
    plain = folder / "plain"
    if (plain / "pool.json").is_file():
        pool = Pool.open(plain)
    elif args.base:  # a pretrained checkpoint is the seed: nothing is trained before members
        pool = Pool.create(plain, base=args.base, recipe=recipe, progress=False)
    else:
        tiny = TinyModelSpec(
            **MODEL, intermediate_size=3 * MODEL["hidden_size"], seed_tokens=seed_tokens
        )
        pool = Pool.create(
            plain, seed_data=folder / "seed.jsonl", recipe=recipe, tiny=tiny, progress=False
        )
    if not (folder / "train.jsonl").is_file():
        _split(folder, pool.tokenizer, unit_tokens, eval_docs)
    out = {}
    for variant in args.variants:
        path = plain if variant == "plain" else folder / variant
        if variant != "plain" and not (path / "pool.json").is_file():
            Pool.create(
                path,
                base=str(pool.base_folder.resolve()),
                seed_data=folder / "seed.jsonl",
                recipe=recipe.model_copy(update=VARIANTS[variant]),
                progress=False,
            )
            # One ground truth for every variant: real models' keys ignore member levers.
            (plain / "validation").mkdir(exist_ok=True)
            os.symlink((plain / "validation").resolve(), path / "validation")
        p = Pool.open(path)
        p.add([folder / "train.jsonl"], by="domain", progress=False)
        p.grow(progress=False)
        out[variant] = (p, folder / "eval.jsonl")
    return out


def docs_by_domain(path: Path) -> dict[str, list[str]]:
    """A ``{"text", "domain"}`` JSONL file's documents per domain, in file order."""
    by: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        by.setdefault(r["domain"], []).append(r["text"])
    return by


def _split(folder: Path, tok, unit_tokens: int, eval_docs: int) -> None:
    """Hold out every 8th document (up to ``eval_docs``) and keep one unit per partition."""
    train, evals = [], []
    for name, docs in docs_by_domain(folder / "parts.jsonl").items():
        held = docs[::8][:eval_docs]
        rest = [d for i, d in enumerate(docs) if not (i % 8 == 0 and i // 8 < eval_docs)]
        kept, n = first_tokens(rest, tok, unit_tokens)
        if n < unit_tokens:
            print(f"  note: partition {name} holds only {n} of {unit_tokens} tokens")
        train += [{"text": d, "domain": name} for d in kept]
        evals += [{"text": d, "domain": name} for d in held]
    write_jsonl(folder / "eval.jsonl", evals)
    write_jsonl(folder / "train.jsonl", train)


# ---------------------------------------------------------------------------- measuring
LEGACY_SCORES = "real_scores"  # a cell's own memo of real scores, from before validate kept them


def _adopt_legacy_scores(folder: Path, ev) -> None:
    """Cells measured before ``validate`` stored its real models' scores kept them in
    ``folder/real_scores/<key>.npz`` (and the weights of some of those models were deleted
    since, to save disk): store each as its model's own scores on ``ev``'s eval set, where
    validate and the modes below read them like any other."""
    import numpy as np

    from ablate.engine.scoring import DocScores
    from ablate.validation.models import read_validation
    from ablate.validation.real_scores import store_documents, stored_documents

    for f in sorted((folder / LEGACY_SCORES).glob("*.npz")):
        rec = read_validation(ev.pool, f.stem)
        if rec is None or stored_documents(ev.pool, rec, ev.eval_set) is not None:
            continue
        with np.load(f) as z:
            docs = DocScores(nll=z["nll"], tokens=z["tokens"])
        store_documents(ev.pool, rec, ev.eval_set, docs)


def merge_pool(folder: Path, variant: str, merge: str, args):
    """The ``variant`` pool for proxies merged by ``merge``: the pool itself for the plain
    average; otherwise a copy of it in ``folder/VARIANT+fisher`` (same members, same seed,
    its ``validation/`` a link to the plain pool's real models; named after the first merge
    measured there) that holds what every other merge needs (each member's diagonal Fisher,
    ``ablate.pool.fisher``, or input Grams, ``ablate.pool.gram``), so measuring a merge
    never writes into the pools it reuses."""
    import shutil

    from ablate.pool import Pool
    from ablate.pool.fisher import ensure_fisher
    from ablate.pool.gram import ensure_gram

    source = folder / variant
    if merge == "average":
        return Pool.open(source)
    copy = folder / f"{variant}+fisher"  # one copy holds every merge's statistics
    if not (copy / "pool.json").is_file():
        tmp = folder / f".{variant}+fisher.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(
            source,
            tmp,
            symlinks=True,
            ignore=lambda d, names: [
                n for n in names if n == "validation" or n.startswith("results.sqlite")
            ],
            # hard links: the members' weights are never written in place (a pretrained
            # cell's copy would otherwise take 3.6 GB); new statistics are new files
            copy_function=_link_or_copy,
        )
        os.symlink((folder / "plain" / "validation").resolve(), tmp / "validation")
        os.replace(tmp, copy)
    pool = Pool.open(copy)
    if merge in MERGE_NEEDS_FISHER:
        ensure_fisher(pool, batches=args.fisher_batches, progress=False)
    elif MERGES[merge].statistic == "gram":
        ensure_gram(pool, progress=False)
    return pool


def _link_or_copy(src: str, dst: str) -> None:
    import shutil

    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def proxy_level(args) -> str:
    """The proxy level every evaluator of the bench reads at (``--proxy-level``; explicit,
    so a row never depends on what a pool recorded when the bench built it)."""
    return getattr(args, "proxy_level", None) or "none"


def level_tag(args) -> str:
    """A row's name and cache suffix for a proxy level other than ``none`` (rows measured
    before the option keep their names)."""
    level = proxy_level(args)
    return "" if level == "none" else f"@{level}"


# Merges (``--merge``) whose pool copy needs each member's Fisher.
MERGE_NEEDS_FISHER = {m for m in POOL_MERGES if MERGES[m].statistic == "fisher"}


def _validate(pool, eval_file: Path, args, merge: str = "average"):
    """``(evaluator, report)``: fixed-budget validation of one pool, proxies merged by
    ``merge`` (real models and their scores come from the cell's caches)."""
    from ablate import Evaluator
    from ablate.validation import validate

    ev = Evaluator(
        pool, eval_file, by="domain", progress=False, merge=merge, proxy_level=proxy_level(args)
    )
    _adopt_legacy_scores(eval_file.parent, ev)
    v = validate(
        ev,
        sample=args.sample,
        weights="dirichlet",
        budget="fixed",
        repeats=args.repeats,
        seed=args.seed,
        bootstrap=0,
        progress=False,
    )
    return ev, v


def decision_fields(d) -> dict:
    """A row's numbers that come from validate's decisions table ``d`` alone."""
    import numpy as np

    domains = d.drop(index="macro")
    return {
        "median_domain": float(np.median(domains["spearman"])),
        "macro": float(d.loc["macro", "spearman"]),
        "macro_regret": float(d.loc["macro", "regret"]),
        # like for like with seed_regret: the proxy's pick judged on the seeds left in
        # (the mean of all but one; mean over the seed left out)
        "regret_single": float(d.loc["macro", "regret_single"]),
        # real training's own pick noise: the left-out seed's pick judged the same way
        "seed_regret": float(d.loc["macro", "seed_regret"]),
        "pick_referee": PICK_REFEREE,
        # how often a perfect proxy's pick is within 1% of fresh R-seed means' best: the
        # 1% bar's own ceiling (rows cached before it print "-")
        "pick_ceiling": float(d.loc["macro", "pick_ceiling"]),
        "worst_regret": float(d["regret"].max()),
        "ceiling": float(d.loc["macro", "seed_spearman"]),
        "ceiling_median_domain": float(np.nanmedian(domains["seed_spearman"])),
        # like for like with seed vs seed: the proxy against one seed (mean over seeds)
        "single": float(d.loc["macro", "spearman_single"]),
        "single_median_domain": float(np.nanmedian(domains["spearman_single"])),
        # like for like with macro rho: a perfect proxy against the mean of the seeds
        "noise_ceiling": float(d.loc["macro", "noise_ceiling"]),
    }


def measure(pool, eval_file: Path, args, merge: str = "average") -> dict:
    """Fixed-budget validation of one pool (proxies merged by ``merge``): the table's numbers."""
    import numpy as np
    from scipy import stats

    _, v = _validate(pool, eval_file, args, merge)
    # Pairs and the first repeat's records are both in sample order.
    order = list(dict.fromkeys(v.pairs["mixture"]))
    macro = v.pairs.groupby("mixture", sort=False)[["proxy", "real"]].mean().loc[order]
    proxy_macro, real_macro = macro["proxy"].to_numpy(), macro["real"].to_numpy()
    weights = [dict((n, w) for n, w in r.mixture) for r in v.records[: v.mixtures]]
    entropy = np.array([-sum(w * math.log(w) for w in ws.values() if w > 0) for ws in weights])
    spread = float(real_macro.max() / real_macro.min() - 1)
    fields = decision_fields(v.decisions)
    regret = fields["macro_regret"]
    return {
        **fields,
        "regret_share": regret / spread if spread > 0 else math.nan,
        "spread": spread,
        "proxy_entropy": float(stats.spearmanr(proxy_macro, entropy).statistic),
        "real_entropy": float(stats.spearmanr(real_macro, entropy).statistic),
    }


COLUMNS = [
    ("median_domain", "median dom. rho"),
    ("macro", "macro rho"),
    ("single", "proxy vs one seed (macro)"),
    ("ceiling", "seed vs seed (macro)"),
    ("noise_ceiling", "noise ceiling (macro)"),
    ("macro_regret", "macro regret"),
    ("regret_single", "regret vs one seed"),
    ("seed_regret", "seed vs seed regret"),
    ("pick_ceiling", "pick ceiling (macro)"),
    ("worst_regret", "worst regret"),
    ("regret_share", "regret / spread"),
    ("spread", "real spread"),
    ("proxy_entropy", "proxy~entropy"),
    ("real_entropy", "real~entropy"),
]


PERCENT_COLUMNS = (
    "macro_regret",
    "regret_single",
    "seed_regret",
    "worst_regret",
    "spread",
    "regret_share",
)
# Issue 25's acceptance bar for one cell: median per-domain Spearman >= 0.9.
MEDIAN_DOMAIN_BAR = 0.9
# Rows cached before these fields existed are measured again (from cached scores).
ROW_FIELDS = ("single", "single_median_domain", "noise_ceiling", "regret_single", "seed_regret")
# How regret_single and seed_regret judge a pick: on the mean of the seeds left in. Rows of
# more than two seeds cached without it judged on single seeds and are measured again (with
# two seeds both ways are the same).
PICK_REFEREE = "others"


def meets_bar(row: dict) -> bool:
    """Issue 25's bar, like for like: macro Spearman >= 0.8, or the proxy against one seed
    within 0.05 of seed vs seed where real training agrees with itself less; the same for
    the median per-domain Spearman against 0.9; macro regret <= 1%."""
    return not bar_misses(row)


def bar_misses(fields: dict) -> dict[str, str]:
    """The parts of the bar a row misses, each with its numbers (empty: it meets the bar)."""
    from ablate.validation.report import TRUST_REGRET, TRUST_SLACK, TRUST_SPEARMAN

    f = fields
    miss = {}
    if not (f["macro"] >= TRUST_SPEARMAN or f["single"] >= f["ceiling"] - TRUST_SLACK):
        miss["rank"] = (
            f"macro rho {f['macro']:.2f} (one seed {f['single']:.2f} vs {f['ceiling']:.2f})"
        )
    if not (
        f["median_domain"] >= MEDIAN_DOMAIN_BAR
        or f["single_median_domain"] >= f["ceiling_median_domain"] - TRUST_SLACK
    ):
        miss["median"] = f"median dom. {f['median_domain']:.2f}"
    if f["macro_regret"] > TRUST_REGRET:
        miss["pick"] = f"pick {f['macro_regret']:.1%}"
    return miss


def meets_verdict(row: dict) -> bool:
    """``ablate validate``'s verdict, "TRUSTWORTHY" (``report.trustworthy``: macro against
    the noise ceiling, the pick within 1%), with the median per-domain Spearman >= 0.9 on
    top (the verdict judges macro only)."""
    from ablate.validation.report import trustworthy

    ok = trustworthy(row["macro"], row["noise_ceiling"], row["macro_regret"])
    return ok and row["median_domain"] >= MEDIAN_DOMAIN_BAR


def cached_row(cache: Path, repeats: int, *, stale: bool = False) -> dict | None:
    """A row of ``repeats`` training seeds measured before; None where there is none, or
    where it is not ``current_row`` unless ``stale`` (``--print-only`` shows such rows; a
    measuring run measures them again)."""
    if not cache.is_file():
        return None
    row = json.loads(cache.read_text())
    return row if stale or current_row(row, repeats) else None


def current_row(row: dict, repeats: int) -> bool:
    """Whether a cached row holds every column as measured now (with two seeds the pick
    referees are the same either way)."""
    referee = repeats <= 2 or row.get("pick_referee") == PICK_REFEREE
    return referee and all(k in row for k in ROW_FIELDS)


def print_table(rows: list[dict]) -> None:
    head = ["corpus", "digest", "seed/unit", "variant", *(c[1] for c in COLUMNS), "bar", "verdict"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 4 + "---:|" * len(COLUMNS) + "---|---|")
    for r in rows:
        cells = [r["corpus"], r.get("corpus_digest", "-"), r["setting"], r["variant"]]
        for k, _ in COLUMNS:
            x = r.get(k)  # None: a row kept from before the column (--print-only)
            pct = k in PERCENT_COLUMNS
            cells.append("-" if x is None else f"{100 * x:.1f}%" if pct else f"{x:.2f}")
        complete = all(k in r for k in ROW_FIELDS)
        cells.append("-" if not complete else "yes" if meets_bar(r) else "no")
        cells.append("-" if not complete else "yes" if meets_verdict(r) else "no")
        print("| " + " | ".join(cells) + " |")
    if (chance := perfect_pick_chance(rows)) is not None:
        print(
            f"\nA perfect proxy's pick is within 1% on every cell above in {chance:.0%} of "
            "fresh draws of the seeds (the product of each cell's pick ceiling)"
        )


def perfect_pick_chance(rows: list[dict]) -> float | None:
    """How likely even a perfect proxy meets the bar's 1% pick on every (corpus, setting) of
    ``rows`` at once: the product of their pick ceilings (the cells' seeds are independent;
    every variant of a cell shares its real models). None where a cell's row lacks it."""
    ceilings = {(r["corpus"], r["setting"]): r.get("pick_ceiling") for r in rows}
    if not ceilings or any(c is None or math.isnan(c) for c in ceilings.values()):
        return None
    return math.prod(ceilings.values())


def _merge_row(
    folder: Path, corpus: str, seed_tokens: int, unit_tokens: int, variant: str, merge: str, args
):
    """The row of ``variant``'s members merged by ``merge`` (cached like the others; the
    variant's pool, the real models and their cached scores must exist)."""
    name = f"{variant}+{merge}{level_tag(args)}"
    tag = f"{variant}+{merge}" + (f"-b{args.fisher_batches}" if merge in MERGE_NEEDS_FISHER else "")
    cache = (
        folder / f"row-{tag}{level_tag(args)}-s{args.sample}-r{args.repeats}-seed{args.seed}.json"
    )
    if (
        row := cached_row(cache, args.repeats, stale=args.print_only)
    ) is not None or args.print_only:
        return row
    if not (folder / variant / "pool.json").is_file():
        raise SystemExit(f"{folder}/{variant} is missing: measure that variant first")
    start = time.perf_counter()
    pool = merge_pool(folder, variant, merge, args)
    measured = measure(pool, folder / "eval.jsonl", args, merge=merge)
    return _keep_row(cache, corpus, seed_tokens, unit_tokens, name, measured, start, args)


def cell_folder(work: Path, corpus: str, seed_tokens: int, unit_tokens: int, args) -> Path:
    """Where one (corpus, setting) is built: by seed and unit tokens for a tiny seed; by the
    checkpoint's folder name and the recipe for a pretrained ``--base`` (seed tokens unused)."""
    method = _method_tag(args)
    if args.base:
        name = f"base-{Path(args.base).name}-seq{args.seq_len}-b{args.batch}-lr{args.lr:g}"
        return work / corpus / f"{name}-unit{unit_tokens}{method}"
    recipe = (args.seq_len, args.batch, args.lr)
    extra = (
        "" if recipe == (SEQ_LEN, BATCH, LR) else f"-seq{recipe[0]}-b{recipe[1]}-lr{recipe[2]:g}"
    )
    return work / corpus / f"seed{seed_tokens}-unit{unit_tokens}{extra}{method}"


def _method_tag(args) -> str:
    """A LoRA cell's folder and label suffix (full-weight cells keep their old names)."""
    if args.method == "full":
        return ""
    return "-lora" + ("-" + "+".join(args.lora_targets) if args.lora_targets else "")


def cells(work: Path, args):
    """``(corpus, seed tokens, unit tokens, folder)`` of every cell the arguments name."""
    for corpus in args.corpora:
        for setting in [args.demo_setting] if corpus == "demo" else args.settings:
            seed_tokens, unit_tokens = (int(x) for x in setting.split(":"))
            yield (
                corpus,
                seed_tokens,
                unit_tokens,
                cell_folder(work, corpus, seed_tokens, unit_tokens, args),
            )


def setting_label(seed_tokens: int, unit_tokens: int, args) -> str:
    seed = Path(args.base).name if args.base else f"{seed_tokens // 1000}K"
    return f"{seed}/{unit_tokens // 1000}K" + _method_tag(args).replace("-", " ", 1)


def _keep_row(cache: Path, corpus, seed_tokens, unit_tokens, name, measured, start, args) -> dict:
    """One table row, written to ``cache`` and printed as JSON (a long run keeps each)."""
    row = {
        "corpus": corpus,
        "setting": setting_label(seed_tokens, unit_tokens, args),
        "variant": name,
        **measured,
        "minutes": (time.perf_counter() - start) / 60,
    }
    write_json(cache, row)  # temp file, then rename: an interrupted run leaves no half row
    print(json.dumps(row), flush=True)
    return row


def cell_sample(folder: Path, args, pool: str = "plain", merge: str = "average"):
    """``(evaluator, mixtures)``: the cell's ``pool`` folder merging by ``merge``, and the
    sample every row validates (the Dirichlet draw of ``_validate``)."""
    from ablate import Evaluator
    from ablate.pool import Pool
    from ablate.validation.sampling import WeightSampler

    ev = Evaluator(
        Pool.open(folder / pool),
        folder / "eval.jsonl",
        by="domain",
        progress=False,
        merge=merge,
        proxy_level=proxy_level(args),
    )
    return ev, WeightSampler.parse("dirichlet").sample(ev.partitions, args.sample, seed=args.seed)


def grown_pool(folder: Path, args) -> str | None:
    """A pool of the cell with trained members (``--variants`` first): every pool of a cell
    shares its real models, so any of them reads their scores; a cell built for one variant
    only has no members in ``plain`` (it holds the seed). None where the cell has none."""
    from ablate.pool import Pool

    for name in dict.fromkeys([*args.variants, "plain", *VARIANTS]):
        if (folder / name / "pool.json").is_file() and Pool.open(folder / name).members:
            return name
    return None


def real_runs(folder: Path, ev, chosen, repeats: int):
    """``(R, M, n_docs)`` per-document NLL of the sample's real models (seeds 0..R-1) and
    the documents' scored tokens, from their stored scores; None where one is missing."""
    import numpy as np

    from ablate.validation.models import plan_for, read_validation
    from ablate.validation.real_scores import stored_documents

    _adopt_legacy_scores(folder, ev)
    nll, tokens = np.empty((repeats, len(chosen), len(ev.eval_set.docs))), None
    for r in range(repeats):
        for i, m in enumerate(chosen):
            rec = read_validation(ev.pool, plan_for(ev, m, budget="fixed", repeat=r).key)
            if rec is None or (scores := stored_documents(ev.pool, rec, ev.eval_set)) is None:
                return None
            nll[r, i], tokens = scores.nll, scores.tokens
    return nll, tokens


def pick_ceilings(folder: Path, args) -> dict | None:
    """The macro pick ceiling of one cell (``decisions.pick_ceiling``) from its cached real
    scores alone (no proxy is merged): judged on ``--repeats`` seeds and on two, both
    estimated from all ``--repeats``. None where a real model of the sample is not scored."""
    import numpy as np

    from ablate.engine.scoring import DocScores
    from ablate.validation.decisions import pick_ceiling

    if (pool := grown_pool(folder, args)) is None:
        return None
    ev, chosen = cell_sample(folder, args, pool=pool)
    if (got := real_runs(folder, ev, chosen, args.repeats)) is None:
        return None
    nll, tokens = got
    runs = np.empty((*nll.shape[:2], len(ev.domains)))  # NLL per token
    for r, i in np.ndindex(*nll.shape[:2]):
        totals = DocScores(nll=nll[r, i], tokens=tokens).domain_totals(ev.eval_set).values()
        runs[r, i] = [t.nll / t.tokens for t in totals]
    return {
        "repeats": args.repeats,
        "judged_on_repeats": float(pick_ceiling(runs)[-1]),
        "judged_on_two": float(pick_ceiling(runs, referees=2)[-1]),
    }


def proxy_nll(folder: Path, variant: str, merge: str, args):
    """``(M, n_docs)`` per-document NLL of the sample's proxies (``validate``'s own, kept in
    the pool's results store: merged once, by the row that measured them or here)."""
    import numpy as np

    from ablate.validation.validate import proxy_scores

    pool = merge_pool(folder, variant, merge, args)  # the pool copy with the merge's statistics
    ev, chosen = cell_sample(folder, args, pool=pool.path.name, merge=merge)
    return np.stack([proxy_scores(ev, m)[0].nll for m in chosen])


def judge(guess, ref, tokens, es, seed: int) -> dict:
    """``decision_fields`` of ``guess`` (``(M, n_docs)`` NLL) with the training seeds ``ref``
    (``(R, M, n_docs)``) as the referee: what ``meets_bar`` reads."""
    from ablate.validation.decisions import decision_table

    d = decision_table(
        guess,
        ref.mean(axis=0),
        tokens,
        es.doc_domain,
        es.domains,
        repeats_nll=ref,
        replicates=0,
        seed=seed,
    )
    return decision_fields(d)


def probe_cells(ap, work: str, cells: list[str], variant: str, build: str, tag: str = ""):
    """``{cell: folder}`` for the probes' ``--cells`` (``CORPUS:SEED:UNIT``, or a cell folder
    under ``work`` such as a pretrained base's), each refused through ``ap.error`` with the
    ``build`` command where its ``variant`` pool is not there."""
    folders = {}
    for cell in cells:
        parts = cell.split(":")
        if "/" in cell:
            folders[cell] = Path(work) / cell
        elif len(parts) == 3:
            folders[cell] = Path(work) / parts[0] / f"seed{parts[1]}-unit{parts[2]}{tag}"
        else:
            ap.error(
                "--cells takes CORPUS:SEED:UNIT (e.g. mlcode:300000:30000) or a cell folder "
                f"under --work (CORPUS/base-...), got {cell!r}"
            )
        if not (folders[cell] / variant / "pool.json").is_file():
            ap.error(
                f"no cell {cell} under {work} ({folders[cell]}/{variant}): build it with {build}"
            )
    return folders


def verdict(guess, ref, tokens, es, seed: int) -> tuple[dict, bool]:
    """``judge``'s fields and whether they meet issue 25's bar."""
    fields = judge(guess, ref, tokens, es, seed)
    return fields, not bar_misses(fields)


def verdict_text(fields: dict, ok: bool) -> str:
    """``median per-domain rho / macro rho / macro regret yes|no``, as the probes print it."""
    return (
        f"{fields['median_domain']:.2f} / {fields['macro']:.2f} / "
        f"{100 * fields['macro_regret']:.1f}% {'yes' if ok else 'no'}"
    )


def referee_pairs(folder: Path, variant: str, merge: str, args) -> list[dict] | None:
    """Issue 25's bar against each pair of the cell's ``--repeats`` training seeds as the
    referee (the issue's ``--repeats 2`` is the pair (0, 1)), for the proxies and, as the
    like-for-like ceiling, for the mean of two *other* seeds used as the proxy. None where a
    real model of the sample is not scored."""

    ev, chosen = cell_sample(folder, args, pool=variant)
    if (got := real_runs(folder, ev, chosen, args.repeats)) is None:
        return None
    runs, tokens = got
    proxy = proxy_nll(folder, variant, merge, args)
    es = ev.eval_set
    out = []
    for pair in itertools.combinations(range(args.repeats), 2):
        ref = runs[list(pair)]
        rest = [r for r in range(args.repeats) if r not in pair]
        row = {"referee": pair}
        for who, guess in (("proxy", proxy), ("other_seeds", runs[rest[:2]].mean(axis=0))):
            fields = judge(guess, ref, tokens, es, args.seed)
            row[who] = {k: fields[k] for k in BAR_FIELDS} | {"bar": meets_bar(fields)}
        out.append(row)
    return out


# What ``meets_bar`` reads.
BAR_FIELDS = (
    "macro",
    "single",
    "ceiling",
    "median_domain",
    "single_median_domain",
    "ceiling_median_domain",
    "macro_regret",
)


def print_referee_pairs(rows: list[dict]) -> None:
    """Per cell: the pairs of seeds under which the proxy (and two other seeds) meet the
    bar, and which parts each misses; then per pair, how many cells meet it at once."""
    print(
        "| corpus | seed/unit | proxy meets the bar | misses rank / median / pick "
        "| two other seeds meet it | misses rank / median / pick | where the proxy misses |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        pairs = r["pairs"]
        cols = []
        for who in ("proxy", "other_seeds"):
            misses = [bar_misses(p[who]) for p in pairs]
            counts = " / ".join(
                str(sum(k in m for m in misses)) for k in ("rank", "median", "pick")
            )
            cols += [f"{sum(not m for m in misses)} of {len(pairs)}", counts]
        where = "; ".join(
            f"seeds {tuple(p['referee'])}: {', '.join(m.values())}"
            for p in pairs
            if (m := bar_misses(p["proxy"]))
        )
        print(f"| {r['corpus']} | {r['setting']} | {' | '.join(cols)} | {where} |")
    n = len(rows[0]["pairs"])
    for who, label in (("proxy", "proxy"), ("other_seeds", "two other seeds")):
        per_pair = [sum(not bar_misses(r["pairs"][k][who]) for r in rows) for k in range(n)]
        print(
            f"cells meeting the bar at once, {label}, per referee pair "
            f"{[tuple(p['referee']) for p in rows[0]['pairs']]}: {per_pair} of {len(rows)} "
            f"(mean {sum(per_pair) / n:.1f})"
        )


def print_pick_ceilings(rows: list[dict]) -> None:
    print("| corpus | seed/unit | seeds | pick ceiling, judged on them | judged on 2 |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['corpus']} | {r['setting']} | {r['repeats']} | {r['judged_on_repeats']:.2f} "
            f"| {r['judged_on_two']:.2f} |"
        )
    both = [math.prod(r[k] for r in rows) for k in ("judged_on_repeats", "judged_on_two")]
    print(f"| all at once (product) | | | {both[0]:.2f} | {both[1]:.2f} |")


LAW_VARIANTS = ("real alone", "proxies alone", "both: indicator", "both: offset")


def law_row(folder: Path, corpus: str, setting: str, variant: str, merge: str, args):
    """The multi-fidelity comparison of one cell (``MixtureLaw.fit_from``, target macro): a
    law on the 16 real mixtures alone vs the proxies of every subset alone vs both, each by
    leave-one-out on the real mixtures (cached like the rows)."""
    from ablate import MixtureLaw

    name = (variant if merge == "average" else f"{variant}+{merge}") + level_tag(args)
    tag = name + (f"-b{args.fisher_batches}" if merge in MERGE_NEEDS_FISHER else "")
    cache = folder / f"laws-{tag}-s{args.sample}-r{args.repeats}-seed{args.seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    if args.print_only or not (folder / variant / "pool.json").is_file():
        return None
    ev, v = _validate(merge_pool(folder, variant, merge, args), folder / "eval.jsonl", args, merge)
    law = MixtureLaw.fit_from(ev, v, target="macro", seed=args.seed)
    c = law.fidelity.comparison
    row = {
        "corpus": corpus,
        "setting": setting,
        "variant": name,
        "kept": law.fidelity.method,
        "proxies": int(law.fidelity.proxies),
        **{f"rho {k}": float(c.loc[k, "loo_spearman"]) for k in LAW_VARIANTS},
        **{f"rmse {k}": float(c.loc[k, "loo_rmse"]) for k in LAW_VARIANTS},
    }
    write_json(cache, row)  # temp file, then rename: an interrupted run leaves no half row
    print(json.dumps(row), flush=True)
    return row


def print_laws(rows: list[dict]) -> None:
    head = ["corpus", "seed/unit", "proxies of", "join kept"]
    head += [f"LOO rho: {k}" for k in LAW_VARIANTS] + [f"LOO RMSE: {k}" for k in LAW_VARIANTS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 4 + "---:|" * 2 * len(LAW_VARIANTS))
    for r in rows:
        cells = [r["corpus"], r["setting"], r["variant"], r["kept"]]
        cells += [f"{r[f'rho {k}']:.2f}" for k in LAW_VARIANTS]
        cells += [f"{r[f'rmse {k}']:.3f}" for k in LAW_VARIANTS]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/fidelity", help="where everything is built and kept")
    ap.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["300000:30000", "900000:30000", "300000:60000"],
        metavar="SEED:UNIT",
        help="seed tokens : unit tokens (the demo corpus uses --demo-setting)",
    )
    ap.add_argument("--demo-setting", default="450000:60000", metavar="SEED:UNIT")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--sample", type=int, default=16, help="Dirichlet mixtures")
    ap.add_argument(
        "--repeats", type=int, default=2, help="real models per mixture (noise ceiling)"
    )
    ap.add_argument("--seed", type=int, default=1, help="corpus shuffle, recipe and sample seed")
    ap.add_argument(
        "--proxy-level",
        default="none",
        choices=list(PROXY_LEVELS),
        help="how every evaluator reads the proxies per domain (ablate.engine.levels); rows "
        "at a level other than none are named VARIANT[+MERGE]@LEVEL",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        default=["average"],
        choices=list(POOL_MERGES),
        help="how proxies merge each variant's members: rows VARIANT for the average, "
        "VARIANT+MERGE for the others (on a copy of the variant's pool, which must exist)",
    )
    ap.add_argument(
        "--fisher-batches",
        type=int,
        default=16,
        help="batches per member of the Fisher estimate (--merge fisher)",
    )
    ap.add_argument(
        "--laws",
        action="store_true",
        help="also fit the multi-fidelity law of each cell (proxies of every subset + the 16 "
        "real mixtures, MixtureLaw.fit_from) against a law on the real mixtures alone",
    )
    ap.add_argument(
        "--base",
        metavar="DIR",
        help="a local Hugging Face checkpoint as every cell's seed instead of a tiny seed trained "
        "on the cell's seed data (its tokenizer too; SEED in --settings then sizes only the "
        "seed data of variants that read it: mix, precond)",
    )
    ap.add_argument(
        "--method",
        choices=["full", "lora"],
        default="full",
        help="train members and real models as full weights or as LoRA adapters (cells of "
        "their own: folder and label end in -lora)",
    )
    ap.add_argument(
        "--lora-targets",
        nargs="+",
        default=[],
        metavar="NAME",
        help="LoRA targets (default: the product's choice for the architecture)",
    )
    ap.add_argument(
        "--seq-len", type=int, default=SEQ_LEN, help="members' and real models' sequence length"
    )
    ap.add_argument("--batch", type=int, default=BATCH, help="sequences per step")
    ap.add_argument("--lr", type=float, default=LR, help="peak learning rate")
    ap.add_argument(
        "--eval-docs", type=int, default=EVAL_DOCS, help="held-out documents per domain"
    )
    ap.add_argument("--print-only", action="store_true", help="print the rows already measured")
    ap.add_argument(
        "--referee-pairs",
        action="store_true",
        help="judge issue 25's bar against every pair of the cell's --repeats seeds (the first "
        "--variants and --merge; proxies kept in the cell folder), beside two other seeds used "
        "as the proxy",
    )
    ap.add_argument(
        "--pick-ceilings",
        action="store_true",
        help="only print each cell's macro pick ceiling (how often a perfect proxy's pick is "
        "within 1%% of fresh seeds' best) from its cached real scores, and their product",
    )
    args = ap.parse_args()
    work = Path(args.work)
    if args.pick_ceilings:
        found = []
        for corpus, seed_tokens, unit_tokens, folder in cells(work, args):
            label = setting_label(seed_tokens, unit_tokens, args)
            got = pick_ceilings(folder, args)
            if got is None:
                print(
                    f"skipped {corpus} {label}: no real scores of {args.repeats} seeds cached "
                    f"in {folder} (measure the cell with --repeats {args.repeats} first)",
                    file=sys.stderr,
                )
                continue
            found.append({"corpus": corpus, "setting": label, **got})
        if not found:
            sys.exit(f"bench_fidelity: error: no cell under {work} has what --pick-ceilings reads")
        print_pick_ceilings(found)
        return
    if args.referee_pairs:
        if args.repeats < 4:
            sys.exit(
                "bench_fidelity: error: --referee-pairs needs --repeats 4 or more (two seeds "
                "referee, two others stand in as the proxy)"
            )
        found = []
        for corpus, seed_tokens, unit_tokens, folder in cells(work, args):
            label = setting_label(seed_tokens, unit_tokens, args)
            pairs = None
            if (folder / args.variants[0] / "pool.json").is_file():
                pairs = referee_pairs(folder, args.variants[0], args.merge[0], args)
            if pairs is None:
                print(
                    f"skipped {corpus} {label}: no real scores of {args.repeats} seeds cached "
                    f"in {folder}",
                    file=sys.stderr,
                )
                continue
            found.append({"corpus": corpus, "setting": label, "pairs": pairs})
            print(json.dumps(found[-1]), flush=True)
        if not found:
            sys.exit(f"bench_fidelity: error: no cell under {work} has what --referee-pairs reads")
        print()
        print_referee_pairs(found)
        return
    rows = []
    for corpus, seed_tokens, unit_tokens, folder in cells(work, args):
        first = len(rows)
        for variant in args.variants:
            if "average" not in args.merge:
                continue
            name = variant + level_tag(args)
            cache = folder / f"row-{name}-s{args.sample}-r{args.repeats}-seed{args.seed}.json"
            if (row := cached_row(cache, args.repeats, stale=args.print_only)) is not None:
                rows.append(row)
                continue
            if args.print_only:
                continue
            start = time.perf_counter()
            pools = build_pools(
                folder,
                corpus,
                seed_tokens,
                unit_tokens,
                argparse.Namespace(**{**vars(args), "variants": [variant]}),
            )
            measured = measure(*pools[variant], args)
            rows.append(
                _keep_row(cache, corpus, seed_tokens, unit_tokens, name, measured, start, args)
            )
        for variant in args.variants:
            for merge in (m for m in args.merge if m != "average"):
                row = _merge_row(folder, corpus, seed_tokens, unit_tokens, variant, merge, args)
                if row is not None:
                    rows.append(row)
        if len(rows) > first:  # the text the cell trained on, hashed once per cell
            digest = corpus_digest(folder)
            for row in rows[first:]:
                row["corpus_digest"] = digest
    print()
    print_table(rows)
    if args.laws:
        laws = []
        for corpus, seed_tokens, unit_tokens, folder in cells(work, args):
            label = setting_label(seed_tokens, unit_tokens, args)
            for variant in args.variants:
                for merge in args.merge:
                    row = law_row(folder, corpus, label, variant, merge, args)
                    if row is not None:
                        laws.append(row)
        print()
        print_laws(laws)


if __name__ == "__main__":
    main()
