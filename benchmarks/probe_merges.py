"""Merges tried against the fidelity suite's misses and not adopted, kept so that the
measurement can be rerun and the next idea compared with them on the same cells.

The held-out ``polyglot`` 300K/60K cell misses issue 25's pick, which looked like the proxy
under-rewarding a small share of a distinctive partition (glibc locale definitions, ~10% of a
mixture). Two probes lift small shares, one varies the default's damping; each is measured
on the suite's cached cells against the default, ``fisher_damped`` (each member's Fisher
scaled to mean 1 per tensor, plus 1). Measured in the thirteenth session: lifting is the wrong
direction, sharpening (``power:1.4``) fixes ``polyglot`` and loses on the development cells;
none adopted (docs/accuracy.md, "Lifting small shares"):

- ``power:A``: the default merge of the weights ``w**A`` renormalised (A < 1 lifts small
  shares, A > 1 sharpens them);
- ``adam``: what first-order AdamW dynamics predict for training on the mixture where
  gradient noise sets the second moments: member j moves ``d_j ~ g_j / sqrt(F_j)``, the
  mixture ``sum_j w_j g_j / sqrt(sum_k w_k F_k)``, so ``theta = theta_0 + sum_j w_j sqrt(F_j)
  d_j / sqrt(sum_k w_k F_k)`` per parameter (``F`` each member's raw Fisher). A parameter
  only one member's data touches moves ``sqrt(w)`` of that member's way, not ``w`` (the
  average) or all of it (the Fisher merge); equal Fisher is the plain average;
- ``damping:D``: the default with D instead of 1 added (0: ``fisher_tensor``);
- ``scale:S``: the default merge's step from the seed times S (sixteenth session);
- ``ties:K``: TIES-Merging's trim and disjoint mean (Yadav et al., NeurIPS 2023) in mixture
  form, over the default's precision weights: each member's step from the seed keeps its
  largest fraction K by magnitude, each parameter's sign is the default merge's, and only
  members that agree with it are averaged there (seventeenth session);
- ``dissent:F``: ``ties:1`` with the members that disagree with the elected sign kept at F
  times their weight (0: ``ties:1``, 1: the default): halfway between cancelling and
  following the heavier side;
- ``soup:VARIANT``: each member averaged with its twin in the cell's ``VARIANT`` pool (the
  same members grown from another order seed: ``bench_fidelity.py --variants precond_ms2``),
  merged as the default with the mean of both twins' precisions: two members' training
  noise averaged before merging (seventeenth session);
- ``exposure:K``: exposure-matched members (nineteenth session). Real training on a mixture
  sees ``w_j`` of the budget from partition j, and learns a repetitive partition in a
  fraction of its tokens; the average keeps ``w_j`` of a member that trained on the whole
  unit. Here each partition also has members trained on the first ``1/2, 1/4, ..., 1/K`` of
  its unit (each with its own schedule, the pool's recipe at that many tokens; grown once
  into ``CELL/precond_uTOKENS``, a few minutes), and member j enters the default merge as
  ``theta_0 + s_j(w_j) / w_j``, ``s_j(f)`` its step from the seed after ``f`` of the unit
  (linear between the grid's fractions and 0). Equal precisions make the merge ``theta_0 +
  sum_j s_j(w_j)``: each partition's step after the tokens real training gives it;
  ``sum:K`` is that plain sum. Measured on ``mlcode`` and ``shellman`` 300K/120K (two
  seeds): far worse than the default (macro rho 0.85 / 0.89 -> 0.67 / 0.52 at ``K`` 2,
  0.22 / 0.06 at 8); a short member's step is as long per token as a full one's but points
  elsewhere (cosine 0.5-0.7 at an eighth of the unit), so reading it swaps the member's
  direction for a noisier one (docs/accuracy.md, "Exposure-matched members").

Reads the cells that ``bench_fidelity.py --variants precond --merge fisher_damped
--repeats 4`` built under ``--work`` (the members' Fisher and the 64 real models of each
cell; ``--repeats 2`` reads cells built with two seeds); trains nothing but ``exposure``'s
short members, merges 16 proxies per cell and probe (about a minute on one thread):

    python benchmarks/probe_merges.py --work runs/fidelity --cells mlcode:300000:30000 \
        infra:300000:30000 --probes damping:1 power:0.7 adam

Prints per cell and probe the bar (median per-domain rho / macro rho / macro regret) against
the issue's two seeds and against four, and against how many of the six pairs of the four
seeds it holds (``bench_fidelity.py --referee-pairs``). ``damping:1`` is the default merge
itself; ``--proxy-level specialisation`` reads every probe at the shipped default's level
(``damping:1`` then is the shipped default).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_fidelity as bench  # noqa: E402  (the suite's cells, bar and helpers)


# ---------------------------------------------------------------------------- the probes
def fisher_matrix(model, *, per_tensor: bool) -> torch.Tensor:
    """The members' diagonal Fisher as one ``(N, P)`` tensor in the stack's column order,
    each member's tensors scaled to mean 1 where ``per_tensor`` (as ``fisher_tensor`` does;
    a tensor whose Fisher is all 0 stays 0). Full-weight pools held in memory only."""
    from ablate.pool.fisher import load_fisher

    if model.stack is None:
        raise SystemExit("probe_merges: the probes need a full-weight pool held in memory")
    names = [name for name, _ in model.model.named_parameters()]
    rows = []
    for rec in model.members:
        f = load_fisher(model.pool, rec)
        tensors = [f[name].float() for name in names]
        if per_tensor:
            tensors = [t / m if (m := float(t.double().mean())) > 0 else t for t in tensors]
        rows.append(model.flatten(tensors))
    return torch.stack(rows)


def _seed(model) -> torch.Tensor:
    model.flat.zero_()
    model.add_seed_(1.0)
    return model.flat.clone()


class WeightPower:
    """``fisher_damped`` of the weights ``w**power / sum(w**power)``."""

    def __init__(self, power: float) -> None:
        self.power = power

    def apply(self, model, weights: torch.Tensor) -> None:
        w = weights.clamp_min(0.0) ** self.power
        model.precision_weighted_sum_(w / w.sum(), "fisher_damped")


class AdamConsistent:
    """``theta_0 + sum_j w_j sqrt(F_j) d_j / sqrt(sum_k w_k F_k)`` per parameter (the plain
    average where no used member has Fisher there); one member is that member exactly."""

    def __init__(self) -> None:
        self._cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def apply(self, model, weights: torch.Tensor) -> None:
        if self._cache is None or self._cache[0] != id(model):
            self._cache = (id(model), fisher_matrix(model, per_tensor=False), _seed(model))
        _, fisher, theta0 = self._cache
        rows = torch.nonzero(weights).flatten().tolist()
        if len(rows) == 1:
            model.flat.copy_(model.stack[rows[0]])
            return
        w = weights[rows].float()[:, None]
        f = fisher[rows]
        den = (w * f).sum(0).sqrt()
        coef = torch.where(den > 0, w * f.sqrt() / den.clamp_min(1e-30), w)
        model.flat.copy_(theta0 + (coef * (model.stack[rows] - theta0)).sum(0))


def precision_mean(stack: torch.Tensor, precision: torch.Tensor, weights: torch.Tensor):
    """``sum_j w_j P_j x_j / sum_j w_j P_j`` per parameter over the members with weight
    (``stack``, ``precision``: ``(N, P)``; ``weights`` summing to 1), the plain weighted
    average where none of them has precision: the default merge's rule, on any stack."""
    rows = torch.nonzero(weights).flatten().tolist()
    w, x = weights[rows].float()[:, None], stack[rows]
    wf = w * precision[rows]
    den = wf.sum(0)
    avg = (w * x).sum(0)
    return avg + torch.where(den > 0, (wf * (x - avg)).sum(0) / den.clamp_min(1e-30), 0.0)


class Damped:
    """``fisher_tensor`` plus ``damping`` (1: ``fisher_damped``, 0: ``fisher_tensor``)."""

    def __init__(self, damping: float) -> None:
        self.damping = damping
        self._cache: tuple[int, torch.Tensor] | None = None

    def apply(self, model, weights: torch.Tensor) -> None:
        if self._cache is None or self._cache[0] != id(model):
            self._cache = (id(model), fisher_matrix(model, per_tensor=True).add_(self.damping))
        rows = torch.nonzero(weights).flatten().tolist()
        if len(rows) == 1:
            model.flat.copy_(model.stack[rows[0]])
            return
        model.flat.copy_(precision_mean(model.stack, self._cache[1], weights))


class Scaled:
    """``fisher_damped``'s step from the seed times ``scale`` (``theta_0 + scale * (merge -
    theta_0)``): real training on a mixture answers each weight more steeply than the merge
    does (``probe_calibration.py --affine``: slopes 1.0-2.5), so a longer step may too."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._cache: tuple[int, torch.Tensor] | None = None

    def apply(self, model, weights: torch.Tensor) -> None:
        if self._cache is None or self._cache[0] != id(model):
            self._cache = (id(model), _seed(model))
        theta0 = self._cache[1]
        model.precision_weighted_sum_(weights / weights.sum(), "fisher_damped")
        model.flat.sub_(theta0).mul_(self.scale).add_(theta0)


class Disjoint:
    """TIES-Merging's disjoint mean, weighted as the default merge is: ``theta_0 + sum_j q_j
    d_j m_j / sum_j q_j m_j`` per parameter, ``q_j = w_j P_j`` (``fisher_damped``'s
    precision), ``d_j`` member j's step from the seed trimmed to its largest fraction
    ``density`` by magnitude, ``m_j`` where ``d_j`` is non-zero with the sign of ``sum_j q_j
    d_j``. Where partitions pull a parameter apart, the average cancels their steps and
    lands between them, but training on the mixture follows the heavier side further: the
    disjoint mean moves a contested parameter the way the weights elect, all the way, so the
    merge answers the weights more steeply where they disagree, and as the default where
    they agree (``ties:1`` drops nothing; one member is that member exactly). ``dissent``
    keeps the members that disagree at that fraction of their weight (1: the default)."""

    def __init__(self, density: float, dissent: float = 0.0) -> None:
        if not 0.0 < density <= 1.0 or not 0.0 <= dissent <= 1.0:
            raise ValueError((density, dissent))
        self.density = density
        self.dissent = dissent
        self._cache: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _steps(self, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0] != id(model):
            theta0 = _seed(model)
            steps = model.stack - theta0
            if self.density < 1.0:
                keep = max(1, round(self.density * steps.shape[1]))
                for row in steps:  # one member at a time: the (N, P) sort would double memory
                    cut = row.abs().kthvalue(row.numel() - keep + 1).values
                    row.masked_fill_(row.abs() < cut, 0.0)
            precision = fisher_matrix(model, per_tensor=True).add_(1.0)
            self._cache = (id(model), theta0, steps, precision)
        return self._cache[1:]

    def apply(self, model, weights: torch.Tensor) -> None:
        theta0, steps, precision = self._steps(model)
        rows = torch.nonzero(weights).flatten().tolist()
        if len(rows) == 1:
            model.flat.copy_(model.stack[rows[0]])
            return
        d = steps[rows]
        q = weights[rows].float()[:, None] * precision[rows]
        elected = torch.sign((q * d).sum(0))
        agree = (torch.sign(d) == elected) & (d != 0)
        qa = torch.where(agree, q, self.dissent * q)
        den = qa.sum(0)
        step = torch.where(den > 0, (qa * d).sum(0) / den.clamp_min(1e-30), 0.0)
        model.flat.copy_(theta0 + step)


class Soup:
    """The default merge of each member averaged with its twin in another variant pool of
    the cell (same partitions and units, another member order seed), under the mean of the
    twins' ``fisher_damped`` precisions: a member's training noise halved in variance before
    the merge, at twice the members' training."""

    def __init__(self, variant: str) -> None:
        if not variant:
            raise ValueError(variant)
        self.variant = variant
        self._cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _twins(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0] != id(model):
            from ablate.engine.layout import MemberLayout
            from ablate.engine.merge import MergedModel

            ns = argparse.Namespace(fisher_batches=16, method="full")
            cell = model.pool.path.parent
            if not (cell / self.variant / "pool.json").is_file():
                raise SystemExit(
                    f"probe_merges: {cell / self.variant} is not built; run bench_fidelity.py "
                    f"--variants {self.variant} --merge average fisher_damped first"
                )
            pool = bench.merge_pool(cell, self.variant, "fisher_damped", ns)
            layout = MemberLayout(pool, merge="fisher_damped")
            twin = MergedModel(
                pool, layout.members, device=model.device, progress=False, layout=layout
            )
            mine = [(r.partition, r.unit) for r in model.members]
            if [(r.partition, r.unit) for r in twin.members] != mine:
                raise SystemExit(f"probe_merges: {pool.path} holds other members than {mine}")
            stack = (model.stack + twin.stack) / 2
            precision = (
                fisher_matrix(model, per_tensor=True) + fisher_matrix(twin, per_tensor=True)
            ) / 2 + 1.0
            self._cache = (id(model), stack, precision)
        return self._cache[1], self._cache[2]

    def apply(self, model, weights: torch.Tensor) -> None:
        model.flat.copy_(precision_mean(*self._twins(model), weights))


def short_pool(cell: Path, tokens: int):
    """The cell's ``precond`` members grown again on the first ``tokens`` of each unit (the
    pool's recipe at ``unit_tokens=tokens``: its own warmup and decay over that many), in
    ``cell/precond_uTOKENS``; grown here where missing (resumable, as every pool)."""
    from ablate.demo import first_tokens
    from ablate.pool import Pool
    from ablate.pool.atomic import write_jsonl

    full = Pool.open(cell / "precond")
    path = cell / f"precond_u{tokens}"
    data = cell / f"train_u{tokens}.jsonl"
    if not data.is_file():
        by = bench.docs_by_domain(cell / "train.jsonl")
        write_jsonl(
            data,
            [
                {"text": d, "domain": name}
                for name, docs in by.items()
                for d in first_tokens(docs, full.tokenizer, tokens)[0]
            ],
        )
    if not (path / "pool.json").is_file():
        Pool.create(
            path,
            base=str(full.base_folder.resolve()),
            seed_data=cell / "seed.jsonl",
            recipe=full.manifest.recipe.model_copy(update={"unit_tokens": tokens}),
            progress=False,
        )
    pool = Pool.open(path)
    pool.add([data], by="domain", progress=False)
    pool.grow(progress=True)
    return pool


class Exposure:
    """The default merge (or, ``plain``, the average) of ``theta_0 + s_j(w_j) / w_j`` per
    member (the module docstring's ``exposure:K``): member j's step after ``w_j`` of its
    unit, at the share of the merge its weight gives it. The precisions are the full
    members' (the short members have no Fisher of their own)."""

    def __init__(self, finest: int, *, plain: bool = False) -> None:
        if finest < 2 or finest & (finest - 1):
            raise ValueError(finest)
        self.finest = finest
        self.plain = plain
        self._cache: tuple | None = None

    def _grid(self, model):
        """``(fractions, steps, precision, theta_0)``: the grid's fractions ascending (the
        last 1), the members' steps from the seed at each ``(F, N, P)``, their precision."""
        if self._cache is None or self._cache[0] != id(model):
            from ablate.engine.layout import MemberLayout
            from ablate.engine.merge import MergedModel

            theta0 = _seed(model)
            cell = model.pool.path.parent
            unit = model.pool.manifest.recipe.unit_tokens
            mine = [r.partition for r in model.members]
            fractions, steps = [], []
            k = self.finest
            while k > 1:
                pool = short_pool(cell, unit // k)
                short = MergedModel(
                    pool,
                    pool.members,
                    device=model.device,
                    progress=False,
                    layout=MemberLayout(pool, merge="average"),
                )
                if [r.partition for r in short.members] != mine:
                    raise SystemExit(f"probe_merges: {pool.path} holds other partitions")
                fractions.append(1.0 / k)
                steps.append(short.stack - theta0)
                k //= 2
            fractions.append(1.0)
            steps.append(model.stack - theta0)
            if self.plain:
                precision = torch.ones_like(model.stack)
            else:
                precision = fisher_matrix(model, per_tensor=True).add_(1.0)
            self._cache = (id(model), tuple(fractions), torch.stack(steps), precision, theta0)
        return self._cache[1:]

    def apply(self, model, weights: torch.Tensor) -> None:
        fractions, steps, precision, theta0 = self._grid(model)
        rows = torch.nonzero(weights).flatten().tolist()
        if len(rows) == 1:
            model.flat.copy_(model.stack[rows[0]])
            return
        per_weight = exposure_rows(fractions, steps, theta0, weights)
        model.flat.copy_(precision_mean(per_weight, precision, weights))


def exposure_rows(
    fractions: Sequence[float], steps: torch.Tensor, theta0: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``(N, P)``: ``theta_0 + s_j(w_j) / w_j`` per member with weight (``theta_0`` where
    none), ``s_j`` read off the grid (``fractions`` ascending to 1, ``steps`` ``(F, N, P)``)
    linearly between its fractions and from 0 below the first."""
    out = theta0.expand(steps.shape[1], -1).clone()
    for j in torch.nonzero(weights).flatten().tolist():
        w = float(weights[j])
        i = min(bisect.bisect_left(fractions, w), len(fractions) - 1)  # w of 1 + rounding
        lo_f, lo = (fractions[i - 1], steps[i - 1, j]) if i else (0.0, torch.zeros_like(theta0))
        out[j] += (lo + (w - lo_f) / (fractions[i] - lo_f) * (steps[i, j] - lo)) / w
    return out


def probe(spec: str):
    """A probe from its name (the module docstring's list)."""
    name, _, arg = spec.partition(":")
    try:
        if name == "power":
            return WeightPower(float(arg))
        if name == "damping":
            return Damped(float(arg))
        if name == "scale":
            return Scaled(float(arg))
        if name == "ties":
            return Disjoint(float(arg))
        if name == "dissent":
            return Disjoint(1.0, float(arg))
        if name == "soup":
            return Soup(arg)
        if name == "exposure":
            return Exposure(int(arg))
        if name == "sum":
            return Exposure(int(arg), plain=True)
    except ValueError:
        pass
    if name == "adam" and not arg:
        return AdamConsistent()
    raise argparse.ArgumentTypeError(
        f"unknown probe {spec!r}: power:A, adam, damping:D, scale:S, ties:K, dissent:F, "
        "soup:VARIANT, exposure:K or sum:K"
    )


# ---------------------------------------------------------------------------- measuring
def measure(folder: Path, specs: list[str], args) -> list[dict]:
    """One row per probe: the bar against the first two seeds, all four, and each pair."""
    import numpy as np

    from ablate.engine.scores import DocScores

    ns = argparse.Namespace(
        sample=args.sample,
        seed=args.seed,
        repeats=args.repeats,
        fisher_batches=16,
        method="full",
        proxy_level=args.proxy_level,
    )
    pool = bench.merge_pool(folder, "precond", "fisher_damped", ns)
    ev, chosen = bench.cell_sample(folder, ns, pool=pool.path.name, merge="fisher_damped")
    if (got := bench.real_runs(folder, ev, chosen, args.repeats)) is None:
        raise SystemExit(f"probe_merges: {folder} lacks real models; run bench_fidelity.py first")
    runs, tokens = got
    rows = []
    for spec in specs:
        method = probe(spec)
        proxy = []
        for m in chosen:
            ev.merged.load(m, method=method)
            proxy.append(ev.scorer().score_documents().nll)
        # every probe read at the evaluator's level, as the default's proxies are
        proxy = ev.cache.read_documents(DocScores(np.stack(proxy), tokens)).nll
        row = {"probe": spec, "two": bench.verdict(proxy, runs[:2], tokens, ev.eval_set, args.seed)}
        if args.repeats == 4:
            row["four"] = bench.verdict(proxy, runs, tokens, ev.eval_set, args.seed)
        row["pairs"] = sum(
            bench.verdict(proxy, runs[list(p)], tokens, ev.eval_set, args.seed)[1]
            for p in itertools.combinations(range(args.repeats), 2)
        )
        rows.append(row)
    ev.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/fidelity", help="bench_fidelity.py's --work")
    ap.add_argument("--cells", nargs="+", required=True, metavar="CORPUS:SEED:UNIT")
    ap.add_argument(
        "--probes",
        nargs="+",
        default=["damping:1"],
        help="power:A, adam, damping:D, scale:S, ties:K, dissent:F, soup:VARIANT, exposure:K or sum:K",
    )
    ap.add_argument("--sample", type=int, default=16, help="Dirichlet mixtures (as built)")
    ap.add_argument("--seed", type=int, default=1, help="sample seed (as built)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=4,
        choices=(2, 4),
        help="training seeds of the cells' real models (as built: --repeats of bench_fidelity.py)",
    )
    ap.add_argument(
        "--proxy-level",
        default="none",
        choices=list(bench.PROXY_LEVELS),
        help="read every probe's proxies at this level (specialisation: the shipped default "
        "of these pools; none: as scored, how the thirteenth session measured them)",
    )
    args = ap.parse_args()
    for spec in args.probes:
        try:
            probe(spec)
        except argparse.ArgumentTypeError as e:
            ap.error(str(e))
    folders = bench.probe_cells(
        ap,
        args.work,
        args.cells,
        "precond",
        "bench_fidelity.py --variants precond --merge fisher_damped --repeats 4",
    )
    print("| cell | probe | two seeds | four seeds | pairs of four |")
    print("|---|---|---|---|---:|")
    for cell, folder in folders.items():
        for r in measure(folder, args.probes, args):
            two = bench.verdict_text(*r["two"])
            four = bench.verdict_text(*r["four"]) if "four" in r else "-"
            pairs = math.comb(args.repeats, 2)
            print(
                f"| {cell} | {r['probe']} | {two} | {four} | {r['pairs']} of {pairs} |", flush=True
            )


if __name__ == "__main__":
    main()
