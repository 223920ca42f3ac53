"""The proxy's per-domain level corrected from real runs (what ``ablate validate`` reports
and, where it decides better, recommends as a ``--target``), measured on the fidelity suite
so that the measurement can be rerun and the next correction compared with it.

The macro target is the *arithmetic* mean of the domains' perplexities, so a domain whose
perplexity the proxy overstates weighs more in the proxy's macro than in the real one (on
``polyglot`` 300K/60K the merged models put ``locales`` at 1.7x its real perplexity and pick
the wrong mixture). Per-domain Spearman cannot see a level, the macro can. The correction adds
to each domain's proxy log perplexity the mean residual (real minus proxy) of the real runs
of *other* mixtures (``level_shift``: leave one mixture out, so that no mixture is corrected
with its own real score), which ``ablate validate`` trains anyway.

Reads the cells that ``bench_fidelity.py --variants precond --merge fisher_damped --repeats 4``
built under ``--work`` (``--method lora``: ``--variants plain --merge fisher``, each method's
default; a pretrained base's cell by its folder, e.g. ``infra/base-smollm2-135m-...``, with
``--repeats 2``). Their proxies and real models are stored; nothing is trained or merged, a
few seconds per cell:

    python benchmarks/probe_calibration.py --work runs/fidelity --cells mlcode:300000:30000 \
        polyglot:300000:60000

Prints per cell: the issue's bar (median per-domain rho / macro rho / macro regret) against
two seeds and all of them for the default proxy and the corrected one (corrected from those same
seeds, leave one mixture out); with three seeds or more, the bar with the correction fitted
on one seed and judged against each pair of the others (no seed both corrects and referees);
each pair of seeds as the validation and the rest (two or more) as the referee: uncorrected,
always corrected, and corrected where ``ablate validate``'s rule (``LevelCorrection.helps``)
says so from the pair's own numbers; and, from one seed, the shift taken from only ``k``
real runs (random mixtures, ``--draws`` per seed), what a user with fewer runs gets.

``--affine`` asks whether any per-domain reading of the proxies could do better than a
level: each domain's log perplexity mapped by the straight line (slope and intercept) that
fits the real runs of the other mixtures (leave one out), the most a per-domain monotone
reading fitted on real runs can be expected to give; the bar against two seeds and all, and
each domain's fitted slope (real log perplexity per unit of the proxy's) beside its gain.

``--blend MERGE`` reads each mixture as the mean of the default's and ``MERGE``'s proxy log
perplexities (both as stored by ``bench_fidelity.py``; e.g. ``average``), at level ``none``
and at the pool's ``specialisation`` level: two merges that fail on different cells, joined.

``--switch MERGE`` measures what a user gets who validates with both merges (the real
models are shared) and keeps ``MERGE`` only where it meets the bar and the default does not:
each pair of four seeds validates, the other pair judges (six cases per cell), the
default, ``MERGE`` and the rule side by side; read at the pool's ``specialisation`` level.
The same 16 mixtures choose and are judged, so read it as an upper bound.

``--transfer`` asks whether the members' gains explain what the proxies miss: each domain's
proxy log perplexity (at the level) plus ``b * own + c * cross``, ``own`` the mixture's share of
the domain's own partition times that member's gain over the seed on it, ``cross`` the
other members' gains there weighted by their shares (``transfer_features``); ``(b, c)`` fitted
on the *other* cells (no real run of the cell: a correction a pool could ship), and, as an
oracle, on the cell's own real runs of the other mixtures with each domain's level.

``--gain ALPHA ...`` measures a correction that needs no real run: the offsets follow how much
a domain's best member gains over the seed (``specialisation``; the more a partition's own
training helps its domain, the more the merge overstates that domain's perplexity), so the
proxy's log perplexity minus ``alpha`` times that gain (to the power ``--gain-power``; with
``--gain-relative``, the gain over the cell's mean gain), per alpha (0: the default).

Every mode reads each cell's default members; ``--variant precond_ms2`` reads the same recipe's
members from another data order instead (a second member draw, grown by ``bench_fidelity.py
--variants precond_ms2``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import bench_fidelity as bench  # noqa: E402  (the suite's cells, bar and helpers)


# ---------------------------------------------------------------------------- the correction
def domain_log_ppl(nll: np.ndarray, tokens: np.ndarray, doc_domain: np.ndarray, n: int):
    """``(M, n)`` log perplexity per mixture and domain from per-document summed NLL."""
    from ablate.validation.decisions import target_ppl

    return np.log(target_ppl(nll, tokens, doc_domain, n)[:, :n])


def as_document_nll(log_ppl: np.ndarray, tokens: np.ndarray, doc_domain: np.ndarray):
    """Per-document summed NLL ``(M, n_docs)`` whose domains have ``log_ppl`` exactly (every
    document at its domain's rate), the form the suite's bar reads."""
    return log_ppl[:, doc_domain] * tokens[None, :]


def level_shift(proxy: np.ndarray, real: np.ndarray, rows: np.ndarray | None = None):
    """``proxy`` (``(M, D)`` log perplexity) plus each domain's mean residual ``real - proxy``.

    ``rows=None``: leave one mixture out (mixture i is shifted by the mean over the others,
    as ``ablate validate`` reports it); otherwise the mean over ``rows`` shifts every mixture
    (``real`` is read there only).
    """
    from ablate.validation.levels import leave_one_out_offsets

    resid = real - proxy
    if rows is not None:
        return proxy + resid[rows].mean(axis=0)
    return proxy + leave_one_out_offsets(resid)


def affine_reading(proxy: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``proxy`` (``(M, D)`` log perplexity) read through each domain's least-squares line
    to ``real``, mixture i's line fitted on the others; and each domain's slope on all."""

    def slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xc, yc = x - x.mean(0), y - y.mean(0)
        return (xc * yc).sum(0) / (xc * xc).sum(0)

    m = len(proxy)
    read = np.empty_like(proxy)
    for i in range(m):
        keep = np.arange(m) != i
        x, y = proxy[keep], real[keep]
        read[i] = y.mean(0) + slopes(x, y) * (proxy[i] - x.mean(0))
    return read, slopes(proxy, real)


# ---------------------------------------------------------------------------- measuring
def load_cell(folder: Path, args):
    """``(ev, proxy, runs, tokens, chosen)`` of one cell, its evaluator opened once: the
    sample's stored proxies (``(M, n_docs)``, what ``validate`` scored), real runs (``(R, M,
    n_docs)``) and mixtures. Stops with the build command where a real model is not
    scored."""
    from ablate.validation.validate import proxy_scores

    ev, chosen = _open(folder, args, args.merge)
    got = bench.real_runs(folder, ev, chosen, args.repeats)
    if got is None:
        ev.close()
        raise SystemExit(
            f"probe_calibration: {folder} lacks scored real models for {args.repeats} seeds; "
            f"build it with bench_fidelity.py --repeats {args.repeats}"
        )
    proxy = np.stack([proxy_scores(ev, m)[0].nll for m in chosen])
    return ev, proxy, *got, chosen


def _open(folder: Path, args, merge: str):
    """``(evaluator, sample)`` of the cell's variant pool merging by ``merge``."""
    ns = argparse.Namespace(
        sample=args.sample, seed=args.seed, repeats=args.repeats, fisher_batches=16
    )
    pool = bench.merge_pool(folder, args.variant, merge, ns)
    return bench.cell_sample(folder, ns, pool=pool.path.name, merge=merge)


def other_proxies(folder: Path, args, merge: str) -> np.ndarray:
    """The same sample's proxies merged by ``merge`` (``(M, n_docs)``, as scored; scored and
    stored where ``bench_fidelity.py`` did not), without reading the real runs again."""
    from ablate.validation.validate import proxy_scores

    ev, chosen = _open(folder, args, merge)
    try:
        return np.stack([proxy_scores(ev, m)[0].nll for m in chosen])
    finally:
        ev.close()


def measure(ev, proxy, runs, tokens, args) -> dict:
    """The bar's verdicts for the default proxy and the level-shifted one (module docstring);
    the one-seed-corrects part needs three seeds or more."""
    es = ev.eval_set
    dd, n = np.asarray(es.doc_domain), len(es.domains)
    lp = domain_log_ppl(proxy, tokens, dd, n)

    def shifted(real_nll, rows=None):
        lr = domain_log_ppl(real_nll, tokens, dd, n)
        return as_document_nll(level_shift(lp, lr, rows), tokens, dd)

    row: dict = {}
    for label, ref in (("two", runs[:2]), ("all", runs)):
        row[label] = (
            bench.verdict(proxy, ref, tokens, es, args.seed),
            bench.verdict(shifted(ref.mean(axis=0)), ref, tokens, es, args.seed),
        )
    rng = np.random.default_rng(args.seed)
    counts = {"default": 0, "shift": 0} | {f"k{k}": 0 for k in args.k}
    cases = draws = 0
    for s in range(args.repeats if args.repeats >= 3 else 0):
        others = [r for r in range(args.repeats) if r != s]
        guesses = {"default": [proxy], "shift": [shifted(runs[s])]}
        for k in args.k:
            guesses[f"k{k}"] = [
                shifted(runs[s], rng.choice(len(lp), k, replace=False)) for _ in range(args.draws)
            ]
        for pair in itertools.combinations(others, 2):
            ref = runs[list(pair)]
            cases += 1
            draws += args.draws
            for name, gs in guesses.items():
                counts[name] += sum(bench.verdict(g, ref, tokens, es, args.seed)[1] for g in gs)
    row["cross"] = counts
    row["cases"], row["draws"] = cases, draws
    row["rule"] = validate_rule(proxy, lp, runs, tokens, es, args.seed)
    return row


def validate_rule(proxy, lp, runs, tokens, es, seed: int) -> dict:
    """Each pair of seeds as the validation (``LevelCorrection.helps`` decides, on their
    leave-one-out numbers, whether to use the correction), the remaining seeds as the
    referee: how often the bar holds uncorrected, always corrected, and by the rule."""
    from ablate.validation.levels import level_correction

    dd, n = np.asarray(es.doc_domain), len(es.domains)
    out = {"default": 0, "shift": 0, "rule": 0, "chosen": 0, "cases": 0}
    for pair in itertools.combinations(range(len(runs)), 2):
        rest = [r for r in range(len(runs)) if r not in pair]
        if len(rest) < 2:
            continue
        lr = domain_log_ppl(runs[list(pair)].mean(axis=0), tokens, dd, n)
        shifted = as_document_nll(level_shift(lp, lr), tokens, dd)
        lc = level_correction(domain_pairs(lp, lr, es.domains))
        ok = {
            name: bench.verdict(g, runs[rest], tokens, es, seed)[1]
            for name, g in (("default", proxy), ("shift", shifted))
        }
        out["default"] += ok["default"]
        out["shift"] += ok["shift"]
        out["rule"] += ok["shift"] if lc.helps else ok["default"]
        out["chosen"] += lc.helps
        out["cases"] += 1
    return out


def gain_feature(gain: np.ndarray, power: float, *, relative: bool = False) -> np.ndarray:
    """What ``--gain`` multiplies by alpha: each domain's specialisation to ``power``, its
    sign kept (a domain no member helps is <= 0). ``relative`` divides by the cell's mean
    absolute gain first, so the correction does not grow with the units: the offsets the
    real runs give stay about as large while the gains double from 30K- to 120K-token units
    (docs/accuracy.md, eighteenth session)."""
    g = np.asarray(gain, dtype=np.float64)
    if relative and (scale := np.abs(g).mean()) > 0:  # no gain anywhere: nothing to correct
        g = g / scale
    return np.sign(g) * np.abs(g) ** power


def gain_rows(ev, proxy, runs, tokens, args) -> list[dict]:
    """The proxy-only correction ``log ppl - alpha * specialisation`` per ``--gain`` alpha:
    the bar against two seeds, all of them and each pair; and how well the specialisation
    tracks the offsets the real runs give (Pearson over domains, both centred)."""
    es = ev.eval_set
    dd, n = np.asarray(es.doc_domain), len(es.domains)
    gain = ev.specialisation().gain  # the pool's own measure (ablate.engine.levels), stored
    lp = domain_log_ppl(proxy, tokens, dd, n)
    offsets = (domain_log_ppl(runs.mean(axis=0), tokens, dd, n) - lp).mean(axis=0)
    track = float(np.corrcoef(offsets, gain)[0, 1])
    rows = []
    shaped = gain_feature(gain, args.gain_power, relative=args.gain_relative)
    for alpha in [0.0, *args.gain]:
        guess = as_document_nll(lp - alpha * shaped, tokens, dd)
        rows.append(
            {
                "alpha": alpha,
                "two": bench.verdict(guess, runs[:2], tokens, es, args.seed),
                "all": bench.verdict(guess, runs, tokens, es, args.seed),
                "pairs": sum(
                    bench.verdict(guess, runs[list(p)], tokens, es, args.seed)[1]
                    for p in itertools.combinations(range(len(runs)), 2)
                ),
                "cases": len(list(itertools.combinations(range(len(runs)), 2))),
                "track": track,
            }
        )
    return rows


def weight_response(lp: np.ndarray, lr: np.ndarray, share: np.ndarray, below: float = 1.0):
    """Per domain, real training's slope of log perplexity on ``log(share + 0.01)`` (the
    domain's own partition's weight) over the proxies' slope, fitted on the mixtures whose
    share is below ``below``: how much more steeply training answers a weight."""
    x = np.log(share + 0.01)
    keep = share < below
    return np.array(
        [
            np.polyfit(x[keep[:, j], j], lr[keep[:, j], j], 1)[0]
            / np.polyfit(x[keep[:, j], j], lp[keep[:, j], j], 1)[0]
            for j in range(lp.shape[1])
        ]
    )


def affine_row(ev, proxy, runs, tokens, chosen, args) -> dict:
    """The bar with ``affine_reading`` (fitted on the mean of all seeds, leave one mixture
    out) against two seeds and all of them; each domain's slope and gain; and the median
    over domains of ``weight_response`` on all mixtures and on shares below 0.35 (domains
    named like a partition). The proxies as scored: a level is a constant per domain, which
    the line absorbs."""
    es = ev.eval_set
    dd, n = np.asarray(es.doc_domain), len(es.domains)
    lp = domain_log_ppl(proxy, tokens, dd, n)
    lr = domain_log_ppl(runs.mean(axis=0), tokens, dd, n)
    read, slope = affine_reading(lp, lr)
    guess = as_document_nll(read, tokens, dd)
    own = [j for j, d in enumerate(es.domains) if d in ev.partitions]
    share = np.array([[m.as_dict().get(es.domains[j], 0.0) for j in own] for m in chosen])
    return {
        "two": bench.verdict(guess, runs[:2], tokens, es, args.seed),
        "all": bench.verdict(guess, runs, tokens, es, args.seed),
        "slopes": dict(zip(es.domains, slope.tolist(), strict=True)),
        "gain": dict(zip(es.domains, ev.specialisation().gain.tolist(), strict=True)),
        "response": tuple(
            float(np.median(weight_response(lp[:, own], lr[:, own], share, below)))
            for below in (1.0, 0.35)
        ),
    }


def blend_rows(ev, proxy, runs, tokens, other, args) -> dict:
    """The bar for the mean of two merges' log perplexities (``proxy`` and ``other``, ``(M,
    n_docs)`` as scored) per level: ``{level: (two seeds, all seeds)}``."""
    es = ev.eval_set
    dd, n = np.asarray(es.doc_domain), len(es.domains)
    mean = (domain_log_ppl(proxy, tokens, dd, n) + domain_log_ppl(other, tokens, dd, n)) / 2
    out = {}
    for level, nats in (("none", 0.0), ("specialisation", ev.specialisation().nats)):
        guess = as_document_nll(mean - nats, tokens, dd)
        out[level] = (
            bench.verdict(guess, runs[:2], tokens, es, args.seed),
            bench.verdict(guess, runs, tokens, es, args.seed),
        )
    return out


def switch_row(ev, proxy, runs, tokens, other, args) -> dict[str, int]:
    """``--switch``: over each pair of seeds validating and the other pair judging, how
    often the bar holds for the default (``proxy``), ``other`` and the rule that keeps
    ``other`` where it alone meets the bar on the validating pair (both at the level)."""
    es = ev.eval_set
    dd, n = np.asarray(es.doc_domain), len(es.domains)
    nats = ev.specialisation().nats
    guesses = [
        as_document_nll(domain_log_ppl(p, tokens, dd, n) - nats, tokens, dd) for p in (proxy, other)
    ]
    out = {"default": 0, "other": 0, "rule": 0, "switched": 0, "cases": 0}
    for pair in itertools.combinations(range(len(runs)), 2):
        rest = [r for r in range(len(runs)) if r not in pair]
        if len(rest) < 2:
            continue
        val = [bench.verdict(g, runs[list(pair)], tokens, es, args.seed)[1] for g in guesses]
        ok = [bench.verdict(g, runs[rest], tokens, es, args.seed)[1] for g in guesses]
        switch = val[1] and not val[0]
        out["default"] += ok[0]
        out["other"] += ok[1]
        out["rule"] += ok[1] if switch else ok[0]
        out["switched"] += switch
        out["cases"] += 1
    return out


def transfer_features(
    share: np.ndarray, partitions, domains, seed_lp: np.ndarray, parts_lp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(own, cross)``, each ``(M, D)``: per mixture (``share``: ``(M, N)`` weights in
    ``partitions`` order) and eval domain, the weighted gain over the seed (``seed_lp``
    ``(D,)`` minus ``parts_lp`` ``(N, D)``) of the domain's own partition's member, and of
    the others'."""
    gain = seed_lp[None, :] - parts_lp
    mine = np.array([[p == d for d in domains] for p in partitions])
    return share @ np.where(mine, gain, 0.0), share @ np.where(mine, 0.0, gain)


def transfer_cell(ev, proxy, runs, tokens, chosen) -> dict:
    """What ``--transfer`` reads of one cell: the proxies' log perplexity at the pool's
    level, the real runs' (mean of all seeds) and the features."""
    from ablate.engine.levels import specialisation_shift

    es = ev.eval_set
    dd, n = np.asarray(es.doc_domain), len(es.domains)
    share = np.array([[m.as_dict().get(p, 0.0) for p in ev.partitions] for m in chosen])
    seed_lp, parts_lp = ev.partition_log_ppl()  # the level's own inputs, read once
    scored = (ev.partitions, es.domains, seed_lp, parts_lp)
    own, cross = transfer_features(share, *scored)
    uniform = np.full((1, len(ev.partitions)), 1.0 / len(ev.partitions))
    return {
        "uniform": transfer_features(uniform, *scored),
        "lp": domain_log_ppl(proxy, tokens, dd, n) - specialisation_shift(seed_lp, parts_lp),
        "lr": domain_log_ppl(runs.mean(axis=0), tokens, dd, n),
        "own": own,
        "cross": cross,
        "runs": runs,
        "tokens": tokens,
        "es": es,
    }


def _centred(a: np.ndarray) -> np.ndarray:
    return (a - a.mean(axis=0)).ravel()


def transfer_fit(cells: list[dict], rows: np.ndarray | None = None) -> np.ndarray:
    """``(b, c)``: least squares of real minus proxy on ``own`` and ``cross``, each centred
    per cell and domain (a level is the proxy level's business), pooled over ``cells``
    (``rows``: only those mixtures, one cell)."""
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    x = np.concatenate(
        [np.stack([_centred(pick(c["own"])), _centred(pick(c["cross"]))], 1) for c in cells]
    )
    y = np.concatenate([_centred(pick(c["lr"] - c["lp"])) for c in cells])
    return np.linalg.lstsq(x, y, rcond=None)[0]


def transfer_rows(cells: dict[str, dict], seed: int) -> dict[str, dict]:
    """Per cell: ``(b, c)`` fitted on the other cells and the bar with it (two seeds, all),
    also with the features less the uniform mixture's (the level there unchanged); the
    oracle (the cell's own other mixtures, each domain's level too) and its bar."""
    out = {}
    for name, c in cells.items():
        b = transfer_fit([o for k, o in cells.items() if k != name])
        pooled = c["lp"] + b[0] * c["own"] + b[1] * c["cross"]
        centred = pooled - b[0] * c["uniform"][0] - b[1] * c["uniform"][1]
        m = len(c["lp"])
        oracle = np.empty_like(c["lp"])
        for i in range(m):
            rest = np.arange(m) != i
            bi = transfer_fit([c], rest)
            level = (c["lr"] - c["lp"] - bi[0] * c["own"] - bi[1] * c["cross"])[rest].mean(0)
            oracle[i] = c["lp"][i] + bi[0] * c["own"][i] + bi[1] * c["cross"][i] + level
        row: dict = {"coef": tuple(b.tolist())}
        dd = np.asarray(c["es"].doc_domain)
        for label, read in (("pooled", pooled), ("centred", centred), ("oracle", oracle)):
            guess = as_document_nll(read, c["tokens"], dd)
            row[label] = tuple(
                bench.verdict(guess, ref, c["tokens"], c["es"], seed)
                for ref in (c["runs"][:2], c["runs"])
            )
        out[name] = row
    return out


def domain_pairs(lp: np.ndarray, lr: np.ndarray, domains) -> pd.DataFrame:
    """A validation's ``pairs`` (mixture x domain perplexities) from log perplexities."""
    return pd.DataFrame(
        [
            {
                "mixture": f"m{i:03d}",
                "domain": str(d),
                "proxy": np.exp(lp[i, j]),
                "real": np.exp(lr[i, j]),
            }
            for i in range(len(lp))
            for j, d in enumerate(domains)
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/fidelity", help="bench_fidelity.py's --work")
    ap.add_argument("--cells", nargs="+", required=True, metavar="CORPUS:SEED:UNIT")
    ap.add_argument("--k", type=int, nargs="*", default=[1, 2, 4], help="real runs per shift")
    ap.add_argument("--draws", type=int, default=5, help="random k-run draws per seed")
    ap.add_argument("--sample", type=int, default=16, help="Dirichlet mixtures (as built)")
    ap.add_argument("--seed", type=int, default=1, help="sample seed (as built)")
    ap.add_argument("--repeats", type=int, default=4, help="training seeds of the cell (>= 2)")
    ap.add_argument("--method", choices=("full", "lora"), default="full")
    ap.add_argument(
        "--gain",
        type=float,
        nargs="*",
        default=[],
        metavar="ALPHA",
        help="also the proxy-only correction by each member's specialisation (scores the seed "
        "and every member once per cell)",
    )
    ap.add_argument(
        "--gain-power",
        type=float,
        default=1.0,
        metavar="P",
        help="--gain corrects by alpha * specialisation**P (P > 1: convex, most for the most "
        "specialised domains)",
    )
    ap.add_argument(
        "--gain-relative",
        action="store_true",
        help="--gain corrects by alpha * (specialisation / the cell's mean)**P: the same size "
        "at every unit size",
    )
    ap.add_argument(
        "--affine",
        action="store_true",
        help="also each domain's straight-line reading fitted on the real runs (leave one "
        "mixture out) and its slopes",
    )
    ap.add_argument(
        "--blend",
        metavar="MERGE",
        choices=list(bench.POOL_MERGES),
        help="also the mean of the default's and MERGE's proxy log perplexities (MERGE's "
        "proxies as bench_fidelity.py stored them)",
    )
    ap.add_argument(
        "--switch",
        metavar="MERGE",
        choices=list(bench.POOL_MERGES),
        help="also: validate with both merges on each pair of seeds, keep MERGE where it "
        "alone meets the bar, judge on the other pair (needs four seeds)",
    )
    ap.add_argument(
        "--transfer",
        action="store_true",
        help="also the proxies read with the members' own and cross-domain gains, the "
        "coefficients fitted on the other cells (and, as an oracle, on the cell's real runs)",
    )
    ap.add_argument(
        "--variant",
        choices=list(bench.VARIANTS),
        help="the cells' member pool (default: the method's, precond or plain); e.g. "
        "precond_ms2, the same recipe's members from another data order",
    )
    args = ap.parse_args()
    # each method's default pool variant and merge, as the suite's cells were built
    variant, args.merge = (
        ("precond", "fisher_damped") if args.method == "full" else ("plain", "fisher")
    )
    args.variant = args.variant or variant
    if args.repeats < 2:
        ap.error("--repeats: the bar needs two training seeds or more")
    if args.transfer and len(args.cells) < 2:
        ap.error("--transfer fits its coefficients on the other cells: give two --cells or more")
    if args.switch and args.repeats < 4:
        ap.error("--switch: one pair of seeds validates and another judges: --repeats 4")
    if any(k < 1 or k >= args.sample for k in args.k):
        ap.error(f"--k takes run counts from 1 to {args.sample - 1}")
    folders = bench.probe_cells(
        ap,
        args.work,
        args.cells,
        args.variant,
        f"bench_fidelity.py --method {args.method} --variants {args.variant} "
        f"--merge {args.merge} --repeats {args.repeats}",
        tag="" if args.method == "full" else "-lora",
    )
    ks = " | ".join(f"shift from {k} run(s)" for k in args.k)
    print(
        "| cell | two seeds: default | two seeds: shifted | all seeds: default "
        "| all seeds: shifted | one seed corrects, two others referee: default | shifted "
        f"| two seeds validate, the rest referee: default | shifted | validate's rule | {ks} |"
    )
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(args.k))
    gains, affine, blends, switches, transfer = {}, {}, {}, {}, {}
    for cell, folder in folders.items():
        ev, proxy, runs, tokens, chosen = load_cell(folder, args)
        r = measure(ev, proxy, runs, tokens, args)
        if args.gain:
            gains[cell] = gain_rows(ev, proxy, runs, tokens, args)
        if args.affine:
            affine[cell] = affine_row(ev, proxy, runs, tokens, chosen, args)
        if args.transfer:
            transfer[cell] = transfer_cell(ev, proxy, runs, tokens, chosen)
        for merge in dict.fromkeys(m for m in (args.blend, args.switch) if m):
            other = other_proxies(folder, args, merge)
            if merge == args.blend:
                blends[cell] = blend_rows(ev, proxy, runs, tokens, other, args)
            if merge == args.switch:
                switches[cell] = switch_row(ev, proxy, runs, tokens, other, args)
        ev.close()
        bars = " | ".join(
            bench.verdict_text(*r[label][i]) for label in ("two", "all") for i in (0, 1)
        )
        c, n, d = r["cross"], r["cases"], r["draws"]
        ks = " | ".join(f"{c[f'k{k}']} of {d}" for k in args.k)
        v = r["rule"]
        rule = (
            f"{v['default']} of {v['cases']} | {v['shift']} of {v['cases']} | "
            f"{v['rule']} of {v['cases']} (chose it in {v['chosen']})"
        )
        print(
            f"| {cell} | {bars} | {c['default']} of {n} | {c['shift']} of {n} | {rule} | {ks} |",
            flush=True,
        )
    if args.gain:
        print(
            "\n| cell | offsets vs specialisation (Pearson) | alpha | two seeds | all seeds | pairs |"
        )
        print("|---|---:|---:|---|---|---:|")
        for cell, rows in gains.items():
            for g in rows:
                print(
                    f"| {cell} | {g['track']:.2f} | {g['alpha']:g} | "
                    f"{bench.verdict_text(*g['two'])} | {bench.verdict_text(*g['all'])} | "
                    f"{g['pairs']} of {g['cases']} |",
                    flush=True,
                )

    if args.affine:
        print(
            "\n| cell | affine, two seeds | affine, all seeds | weight response, all / shares "
            "< 0.35 | slope per domain (gain) |"
        )
        print("|---|---|---|---|---|")
        for cell, a in affine.items():
            slopes = ", ".join(f"{d} {b:.2f} ({a['gain'][d]:.2f})" for d, b in a["slopes"].items())
            print(
                f"| {cell} | {bench.verdict_text(*a['two'])} | {bench.verdict_text(*a['all'])} "
                f"| {a['response'][0]:.2f} / {a['response'][1]:.2f} | {slopes} |",
                flush=True,
            )
    if args.transfer:
        print(
            "\n| cell | b, c from the other cells | two seeds | all seeds | less the uniform "
            "mixture's: two seeds | all seeds | oracle: two seeds | oracle: all seeds |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for cell, t in transfer_rows(transfer, args.seed).items():
            print(
                f"| {cell} | {t['coef'][0]:+.2f}, {t['coef'][1]:+.2f} | "
                + " | ".join(
                    bench.verdict_text(*v) for k in ("pooled", "centred", "oracle") for v in t[k]
                )
                + " |",
                flush=True,
            )
    if args.blend:
        print(f"\n| cell | level | {args.merge} and {args.blend}: two seeds | all seeds |")
        print("|---|---|---|---|")
        for cell, b in blends.items():
            for level, (two, every) in b.items():
                print(
                    f"| {cell} | {level} | {bench.verdict_text(*two)} | "
                    f"{bench.verdict_text(*every)} |",
                    flush=True,
                )
    if args.switch:
        print(
            f"\n| cell | {args.merge} (bar held, of cases) | {args.switch} | the rule "
            "(switched in) |"
        )
        print("|---|---:|---:|---:|")
        for cell, w in switches.items():
            c = w["cases"]
            print(
                f"| {cell} | {w['default']} of {c} | {w['other']} of {c} | {w['rule']} of {c} "
                f"({w['switched']}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
