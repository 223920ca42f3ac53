"""Racing: drop a mixture as soon as part of the eval set proves it worse, score the rest in full.

On CPU a mixture's score costs one forward pass over the eval set, and that forward is near
the machine's peak already; what is left is to score fewer tokens. Most mixtures of a search
are clearly worse than the best one after a small part of the eval set, so racing
(Maron & Moore, NIPS 1994, "Hoeffding races"; Birattari et al., GECCO 2002, "F-Race")
scores every candidate on growing prefixes of the eval set and stops the ones that
are worse than the incumbent with the requested confidence. Survivors are scored in full,
so every score a user sees is a full score; a dropped mixture leaves a ``PartialResult``
(and a row in the store's ``partial_results`` table), never an ``EvalResult``.

What is promised (``--confidence P``, ``--margin EPS``, ``--top K``): with probability at
least ``P`` over the race's shuffle, the returned mixture is within ``EPS`` (relative, on the
target) of the best of the candidates on the *full* eval set; with ``--top K``, each of the
true K best is kept unless K kept mixtures are within ``EPS`` of it (family-wise: all K at
once). ``benchmarks/bench_racing.py`` checks it by simulation (docs/racing.md).

The algorithm, per batch of candidates (a strategy's proposal; the whole space for
``exhaustive``):

1. **Units and order.** The units are the eval set's token windows (each scored on its own;
   40-60 per demo domain instead of 8-9 documents), then each raced task's items. They are
   shuffled per stratum (domain or task) with a fresh seed per race (reported; ``seed=``
   replays it) and cut into stages of 4, 8, 16, ... units per stratum (``RaceOrder``,
   ``ablate.racing.design``): every prefix is stratified. Units of strata the target
   ignores wait for the last stage, which only survivors reach.
2. **Stage by stage.** All candidates are scored on stage 0. Before each later stage the
   best-looking candidate is scored in full if it looks better than the k-th best full
   score (``top`` = k); it becomes an incumbent that remembers how many stages its choice
   read. Every candidate still running is then tested against the k-th best incumbent
   chosen before the previous stage (``ablate.racing.bounds``): the units its choice read
   are known, the later ones sampled, so the incumbent's luck on the units that chose it
   cannot bias the test. A candidate is dropped when ``(1 + EPS) T(candidate) > T(incumbent)``
   at the look's level (``1 - (1 - P) / (K * looks)``, looks with power only).
3. **Full scores.** A candidate that reaches the end has been scored on every unit exactly
   once: its per-window sums add up to its full score, which is recorded (within float
   rounding of the plain scorer's NLL, token counts identical).
4. **Control variates** (targets over several domains, many candidates per partition;
   ``Race._score_basis``): each partition the candidates use is first scored in full as its
   own mixture, and every candidate is tested on its per-window values minus their
   prediction from those singletons (its mixture weights over them) plus the prediction's
   known stratum mean: the same full-set target, a much smaller variance.

**The statistic** is ``ablate.racing.bounds``'s (a paired, stratified delta-method ratio
estimate with a finite-population factor; Student's t with Welch-Satterthwaite degrees of
freedom); its module docstring says why and what it assumes.

**Task terms.** ``Racer`` sees only units in weighted strata, so the items of each task a
``task:`` term reads are units too: one stratum per task, shuffled and visited in stages like
windows. An item's value is its loss under the task's terms (``100 * (1 - correct)`` for
acc and acc_norm, the gold choice's NLL for gold_nll; their weighted mean when one task has
several terms), and the stratum is *linear*: it enters ``T`` as the mean itself (``w_t mu_t``,
no ``exp``; ``z_j`` = the paired difference), so a weighted task + perplexity target is one
stratified sum. A 0/1 outcome often agrees on the first few items, and a zero sample variance
there proves nothing, so a bounded stratum's variance adds Agresti & Min's pseudo-items
(Statistics in Medicine 2005: half an item at each end of the range, one at 0). Survivors'
choice NLLs are the stages' (each item scored once, through ``Task.subset``): their task
scores are full scores, recorded in the store like ``Evaluator.with_tasks``'s; other tasks of the
evaluator are scored in full for survivors as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ablate.data.evalset import IGNORE
from ablate.engine.executor import LocalExecutor
from ablate.engine.scores import DocScores, DomainScore, EvalResult, TaskScore
from ablate.engine.scoring import ScoringBatch, cut_batches, pad_id, target_nll
from ablate.evaluator import as_mixture
from ablate.mixture import Mixture
from ablate.objective import TASK_LOSS_SCALE, Target, as_task_loss, task_term
from ablate.pool.errors import AblateError
from ablate.racing.bounds import control_adjustment
from ablate.racing.design import CONTROL_RATIO, check_margin, fresh_seed
from ablate.racing.engine import (
    DEFAULT_CONFIDENCE,
    Gap,
    Outcome,
    RaceOrder,
    Racer,
    check_confidence,
    paired_gap,
    target_value,
)

if TYPE_CHECKING:
    from ablate.data.tasks import Task
    from ablate.evaluator import Evaluator


class RaceTarget(Protocol):
    """What a race minimises: weights over eval domains and task terms
    (``ablate.strategies.Target``; ``weights`` None: every domain, equal weights)."""

    weights: tuple[tuple[str, float], ...] | None

    def domains(self, available: Sequence[str]) -> tuple[str, ...]: ...

    def tasks(self, available: Sequence[str] = ()) -> tuple[tuple[str, str], ...]: ...

    def coefficients(self, domains: Sequence[str]) -> dict[str, float]: ...

    def score(
        self, ppl: Mapping[str, float], tasks: Mapping[str, object] | None = None
    ) -> float: ...


TASK_BOUND = TASK_LOSS_SCALE  # an item moves an acc / acc_norm loss by at most this


def _task_loss(score: object, metric: str) -> np.ndarray:
    """Per-item loss of one task term, ``(n,)``: its mean is ``task_loss`` (search's)."""
    return as_task_loss(score.per_item(metric), metric)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- the policy
@dataclass(frozen=True)
class PartialResult:
    """A mixture dropped by a race: scores on the eval units (token windows) it was scored on only.

    Not an ``EvalResult`` on purpose (no ``ppl``, no ``scores``): nothing can read it as a
    full score. ``estimate`` is the incumbent's full target plus the paired estimate of the
    gap, what a strategy observes in place of a score.
    """

    mixture: Mixture
    partial: Mapping[str, DomainScore]  # per domain, over the scored windows only
    total_tokens: Mapping[str, int]  # per domain, over the whole eval set
    estimate: float
    against: Mixture  # the incumbent it was proven worse than
    cached: bool = False

    @property
    def tokens_scored(self) -> int:
        return sum(s.tokens for s in self.partial.values())

    @property
    def fraction(self) -> float:
        """Share of the eval set's tokens this mixture was scored on."""
        return self.tokens_scored / max(1, sum(self.total_tokens.values()))


@dataclass(frozen=True)
class RaceStats:
    """What a race cost: mixtures scored in full, dropped and store hits; eval tokens
    scored vs what scoring every new mixture in full would have taken."""

    full: int
    dropped: int
    cached: int
    tokens_scored: int
    tokens_full: int
    seed: int | None = None  # the unit order's seed (replay it with --race-seed)
    confidence: float = DEFAULT_CONFIDENCE
    margin: float = 0.0
    top: int = 1

    @property
    def saving(self) -> float:
        """How many times fewer tokens than full scoring (1.0 when nothing was scored)."""
        return self.tokens_full / self.tokens_scored if self.tokens_scored else 1.0

    def promise(self) -> str:
        """What the race bounds, in words (``docs/racing.md``)."""
        within = f"within {self.margin:.2%} of" if self.margin else "the same as"
        if self.top == 1:
            return (
                f"with probability >= {self.confidence:.0%}, the returned mixture is {within} "
                "the best of the raced candidates on the whole eval set raced (search: its "
                "search split)"
            )
        near = (
            f"{self.top} kept mixtures within {self.margin:.2%} of it"
            if self.margin
            else (f"{self.top} kept mixtures at least as good")
        )
        return (
            f"with probability >= {self.confidence:.0%} (all {self.top} at once), each of the "
            f"{self.top} best raced candidates on the whole eval set raced is kept or has {near}"
        )

    def describe(self) -> str:
        seed = "" if self.seed is None else f"; unit order seed {self.seed}"
        counts = (
            f"racing: {self.full} mixture(s) scored in full, {self.dropped} dropped early, "
            f"{self.cached} from the store"
        )
        if self.tokens_full == 0:  # every mixture came from the store: nothing was raced
            return f"{counts}; no eval tokens scored"
        return (
            f"{counts}; {self.tokens_scored:,} of {self.tokens_full:,} "
            f"eval tokens scored ({self.saving:.1f}x fewer){seed}; {self.promise()}"
        )


class Race:
    """Racing as a scoring policy over an ``Evaluator`` (any strategy can use it).

    One ``Race`` keeps its incumbents across ``run`` calls, so a strategy that proposes a
    few mixtures at a time races each batch against the best found so far.

    Args:
        ev: The evaluator (local executor: racing scores in this process).
        target: What is minimised (``ablate.strategies.Target``; ``"macro"`` by name).
        confidence: Probability that the returned mixture is within ``margin`` of the best
            on the full eval set (``top`` > 1: that each of the ``top`` best is kept or has
            ``top`` kept mixtures within ``margin`` of it, all at once).
        top: Keep the ``top`` best (race against the k-th best).
        margin: Relative indifference ``EPS`` on the target (e.g. 0.005): a mixture within
            ``EPS`` of a kept one may be dropped.
        seed: Seeds the unit order (None: a fresh one, reported in ``stats``).
        control: Race with control variates (``_score_basis``): each partition the
            candidates use is scored in full first, as its own mixture, and a candidate's
            per-window values are read against their prediction from those (the mixture's
            weights over its partitions). True: whenever the target reads perplexity;
            False: never; None (default): when the target reads two or more eval domains and
            a batch has at least ``CONTROL_RATIO`` new candidates per partition to score.
    """

    def __init__(
        self,
        ev: Evaluator,
        target: RaceTarget | str = "macro",
        *,
        confidence: float = DEFAULT_CONFIDENCE,
        top: int = 1,
        margin: float = 0.0,
        seed: int | None = None,
        control: bool | None = None,
    ):
        if not isinstance(ev.executor, LocalExecutor):
            raise AblateError("--race scores in this process; drop --backend ray or --race")

        if isinstance(target, str):
            target = Target.parse(target)
        self.ev = ev
        self.target = target
        es = ev.eval_set
        doms = target.domains(es.domains)  # fails on an unknown domain
        target.tasks(tuple(getattr(ev, "tasks", ())))  # ... or a task not given
        if target.weights is None:
            dom_w, task_w = target.coefficients(doms), {}
        else:  # the parsed weights sum to 1 over domain and task terms together
            dom_w, task_w = {}, {}
            for name, w in target.weights:
                term = task_term(name)
                if term is None:
                    dom_w[name] = w
                else:
                    task_w.setdefault(term[0], []).append((term[1], w))
        # Units: the eval windows (each is scored on its own), then each raced task's items
        # (a stratum per task).
        self.tasks = [ev.tasks[n] for n in sorted(task_w)]
        self.task_terms = {n: tuple(task_w[n]) for n in sorted(task_w)}
        self.windows = es.windows(ev.pool.manifest.context, pad_id(ev.pool.tokenizer))
        self.n_docs, self.n_win = len(es.docs), len(self.windows.lengths)
        win_tokens = (self.windows.targets != IGNORE).sum(1).astype(np.int64)  # (W,)
        self.doc_tokens = np.bincount(self.windows.doc, win_tokens, self.n_docs).astype(np.int64)
        starts = np.cumsum([self.n_win, *(t.n for t in self.tasks)])
        self.task_start = {t.name: int(a) for t, a in zip(self.tasks, starts, strict=False)}
        n_dom = len(es.domains)
        strata = np.concatenate(
            [self.windows.domain, *(np.full(t.n, n_dom + k) for k, t in enumerate(self.tasks))]
        ).astype(np.int64)
        tokens = np.concatenate([win_tokens, np.ones(int(starts[-1]) - self.n_win, np.int64)])
        cost = np.concatenate([win_tokens, *(self._item_cost(t) for t in self.tasks)])
        task_total = [sum(w for _, w in self.task_terms[t.name]) for t in self.tasks]
        weights = np.asarray([dom_w.get(d, 0.0) for d in es.domains] + task_total)
        linear = np.arange(len(weights)) >= n_dom
        bound = np.zeros(len(weights))
        for k, t in enumerate(self.tasks):  # the per-item value is the terms' weighted mean
            acc_w = sum(w for m, w in self.task_terms[t.name] if m != "gold_nll")
            bound[n_dom + k] = TASK_BOUND * acc_w / task_total[k]
        raced = [i for i, w in enumerate(weights) if w > 0]
        self.seed = fresh_seed() if seed is None else int(seed)
        self.racer = Racer(
            RaceOrder.build(strata, raced, seed=self.seed),
            tokens,
            strata,
            weights,
            confidence=check_confidence(confidence),
            top=top,
            margin=check_margin(margin),
            linear=linear,
            bound=bound,
            cost=cost.astype(np.int64),
        )
        self._window_batches: dict[bytes, list[ScoringBatch]] = {}
        self._sub_tasks: dict[tuple[str, bytes], Task] = {}
        self._choice: dict[Hashable, dict[str, np.ndarray]] = {}  # raced tasks' choice NLL
        self._mixtures: dict[str, Mixture] = {}
        self.control = control
        self._basis: dict[str, np.ndarray] = {}  # partition -> its singleton's unit values
        self.full = self.dropped = self.cached = self.tokens_full = 0

    @cached_property
    def _window_shift(self) -> np.ndarray:
        """``(W,)`` what each window's summed NLL is read lower by at the evaluator's proxy
        level (``ablate.engine.levels``; zeros at ``none``): races run on values as read,
        the store keeps them as scored."""
        shift = self.ev.cache.shift
        if shift is None:
            return np.zeros(self.n_win)
        return shift.per_token(self.windows.domain) * self.racer.tokens[: self.n_win]

    def _item_cost(self, task: Task) -> np.ndarray:
        """Tokens a forward pass over each item's choices reads, ``(task.n,)``."""
        pool = self.ev.pool
        tok = pool.tokenizer
        w = task.windows(tok, pool.manifest.context, tok.pad_token_id or 0)
        return np.bincount(w.domain, weights=w.lengths, minlength=task.n).astype(np.int64)

    @property
    def stats(self) -> RaceStats:
        r = self.racer
        return RaceStats(
            self.full,
            self.dropped,
            self.cached,
            r.tokens_scored,
            self.tokens_full,
            seed=self.seed,
            confidence=r.confidence,
            margin=r.margin,
            top=r.top,
        )

    def run(self, mixtures: Sequence[Mixture]) -> list[EvalResult | PartialResult]:
        """Each mixture's full ``EvalResult`` (store hits and survivors) or ``PartialResult``
        (dropped), in the given order."""
        mixtures = [as_mixture(m) for m in mixtures]
        ev, known = self.ev, {}
        todo: dict[str, Mixture] = {}
        _ = self._window_shift  # the proxy level, measured before any merge is raced
        for m in mixtures:
            if m.key in known or m.key in todo:
                continue
            hit = ev.cache.lookup(m, ev.pool_key(m))
            if hit is None:
                todo[m.key] = m
            else:
                known[m.key] = hit
                self.cached += 1
        self._mixtures.update(todo)
        if self.tasks and known:  # the target reads them (and the caller gets them)
            known = {r.mixture.key: r for r in ev.with_tasks(list(known.values()))}
        if self._controls(todo):
            self._score_basis(todo, known)
        if todo and len(self.racer.incumbents) < self.racer.top and known:
            self._seed(list(known.values()))
        if self._basis:
            self._adjust([*todo, *(x.key for x in self.racer.incumbents)])
        outcomes = self.racer.run(list(todo), self._score_stage)
        self.tokens_full += int(self.racer.cost.sum()) * len(todo)
        for key, o in outcomes.items():
            known[key] = self._result(todo[key], o)
        if getattr(ev, "tasks", None):  # survivors carry their task scores, like run_many's
            full = [r for r in known.values() if isinstance(r, EvalResult)]
            known.update({r.mixture.key: r for r in ev.with_tasks(full)})
        return [known[m.key] for m in mixtures]

    def _controls(self, todo: Mapping[str, Mixture]) -> bool:
        """Whether this batch races with control variates (``control``; see the class)."""
        r = self.racer
        ppl = int(((r.weights > 0) & ~r.linear).sum())
        if not todo or self.control is False or ppl == 0:
            return False
        if self.control:
            return True
        return ppl >= 2 and len(todo) >= CONTROL_RATIO * len(self._unscored(todo))

    def _unscored(self, todo: Mapping[str, Mixture]) -> list[str]:
        """The partitions ``todo`` uses that have no scored singleton yet, sorted."""
        return sorted({n for m in todo.values() for n in m.names} - set(self._basis))

    def _score_basis(self, todo: dict[str, Mixture], known: dict) -> None:
        """Control variates (Cochran 1977, ch. 7): score every partition the batch uses on
        every unit, as its own mixture, then race each candidate's values against their
        prediction from those.

        A merge is an average of its partitions' merges, and its per-window NLL follows the
        same average of theirs closely (on the demo pool that prediction explains 85-99% of
        the variance of the per-window gap between two near-best subsets), so the gaps a race
        must resolve are far less noisy around it. The prediction's totals are known exactly,
        so the adjusted values keep every stratum's total and the target on the full eval set
        is unchanged (``bounds.control_adjustment``). The singletons are full scores (kept
        in the store, returned when they were candidates) and incumbents chosen before the
        race reads a unit (``born`` 0).
        """
        r = self.racer
        units = np.arange(len(r.tokens))
        for name in self._unscored(todo):
            m = Mixture.uniform([name])
            self._mixtures[m.key] = m
            nll = self._score_stage([m.key], units)[0]
            r.tokens_scored += int(r.cost.sum())
            self._basis[name] = nll
            born = Outcome(nll, True, r.admit(m.key, nll), len(r.order.stages))
            if m.key in todo:  # a candidate itself: its full score, recorded
                self.tokens_full += int(r.cost.sum())
                known[m.key] = self._result(todo.pop(m.key), born)
            elif m.key not in known and self.ev.cache.lookup(m, self.ev.pool_key(m)) is None:
                self._result(m, born)  # not a candidate, but a new full score: recorded
            else:  # its store hit stays the answer
                self._choice.pop(m.key, None)

    def _adjust(self, keys: Sequence[str]) -> None:
        """The control adjustment of every mixture in ``keys`` whose partitions all have a
        scored singleton (others race on their values as they are)."""
        r = self.racer
        names = sorted(self._basis)
        basis = np.stack([self._basis[n] for n in names])
        index = {n: i for i, n in enumerate(names)}
        for key in keys:
            m = self._mixtures.get(key)
            if m is None or key in r.adjust or not index.keys() >= set(m.names):
                continue
            coef = np.zeros(len(index))
            for n, w in m.weights:
                coef[index[n]] = w
            r.adjust[key] = control_adjustment(coef, basis, r.tokens, r.doc_domain, r.linear)

    def unit_scores(self, mixtures: Sequence[Mixture]) -> np.ndarray:
        """Every unit's value for each mixture, ``(len(mixtures), n_units)`` float64 (units:
        ``self.racer``'s; with ``self.racer.tokens`` and ``.doc_domain``, what
        ``benchmarks/bench_racing.py --replay`` races again). Scores in full; records nothing."""

        mixtures = [as_mixture(m) for m in mixtures]
        self._mixtures.update({m.key: m for m in mixtures})
        units = np.arange(len(self.racer.tokens))
        return self._score_stage([m.key for m in mixtures], units)

    def _seed(self, hits: list[EvalResult]) -> None:
        """Score the best store hits on every unit so they can be raced against."""
        rank = sorted(hits, key=lambda r: self.target.score(r.ppl, r.tasks))
        for r in rank[: self.racer.top - len(self.racer.incumbents)]:
            self._mixtures[r.mixture.key] = r.mixture
            docs = np.arange(len(self.racer.tokens))  # every unit
            nll = self._score_stage([r.mixture.key], docs)[0]
            self.racer.tokens_scored += int(self.racer.cost.sum())
            self.racer.admit(r.mixture.key, nll)
            self._choice.pop(r.mixture.key, None)  # a hit's task scores came from the store

    def _window_scores(self, rows: np.ndarray) -> Callable[[], np.ndarray]:
        """A scorer of the current weights on eval windows ``rows`` (sorted): their summed
        NLL ``(len(rows),)``. Each window is scored on its own, so its NLL does not depend
        on which windows share its batch."""
        import torch

        key = rows.tobytes()
        if key not in self._window_batches:
            self._window_batches[key] = cut_batches(
                self.windows.units(rows), self.ev.merged.device, self.ev.batch_tokens
            )
        batches = self._window_batches[key]

        def score() -> np.ndarray:
            model = self.ev.merged
            nll = torch.zeros(len(rows), dtype=torch.float64, device=model.device)
            with torch.inference_mode():
                for b in batches:  # ``doc`` holds the window's row in ``rows``
                    nll.index_add_(0, b.doc, target_nll(model.model, b).double())
            return nll.cpu().numpy()

        return score

    def _sub_task(self, task: Task, items: np.ndarray) -> Task:
        key = (task.name, items.tobytes())
        if key not in self._sub_tasks:
            self._sub_tasks[key] = task.subset(items)
        return self._sub_tasks[key]

    def _score_stage(self, keys: Sequence[Hashable], units: np.ndarray) -> np.ndarray:
        """Per-unit values ``(len(keys), len(units))``: a window's summed NLL, a task
        item's loss (its terms' weighted mean); uniform subsets merge by a Gray walk."""
        ev = self.ev
        is_win = units < self.n_win
        rows = np.sort(units[is_win])
        at = np.searchsorted(rows, units[is_win])  # units' windows, in ``rows`` order
        windows = self._window_scores(rows) if len(rows) else None
        parts = []  # (task, units of it in this stage, its sub-task, their flat choices)
        for t in self.tasks:
            a = self.task_start[t.name]
            sel = (units >= a) & (units < a + t.n)
            if sel.any():
                items = units[sel] - a
                o = t.offsets
                flat = np.concatenate([np.arange(o[i], o[i + 1]) for i in items])
                parts.append((t, sel, self._sub_task(t, items), flat))

        def score_current(key: Hashable) -> np.ndarray:
            row = np.empty(len(units))
            if windows is not None:  # as read: the proxy level's shift per window
                row[is_win] = windows()[at] - self._window_shift[units[is_win]]
            for t, sel, sub, flat in parts:
                s = ev.task_scorer(sub).score()  # the sub-task's choices, in its item order
                choice = self._choice.setdefault(key, {}).setdefault(
                    t.name, np.full(int(t.offsets[-1]), np.nan)
                )
                choice[flat] = s.choice_nll
                terms = self.task_terms[t.name]
                total = sum(w for _, w in terms)
                row[sel] = sum(w * _task_loss(s, m) for m, w in terms) / total
            return row

        mixtures = [self._mixtures[k] for k in keys]  # type: ignore[index]
        row = {m.key: i for i, m in enumerate(mixtures)}
        out = np.empty((len(mixtures), len(units)))
        for m in ev.merged.visit(mixtures):
            out[row[m.key]] = score_current(m.key)
        return out

    def _result(self, m: Mixture, o: Outcome) -> EvalResult | PartialResult:
        ev, es = self.ev, self.ev.eval_set
        w = self.windows
        nll = o.nll[: self.n_win] + self._window_shift  # as scored: what the store keeps
        tokens = self.racer.tokens[: self.n_win]
        choice = self._choice.pop(m.key, {})
        if o.full:
            self.full += 1
            doc_nll = np.bincount(w.doc, nll, self.n_docs)  # a document's windows add up
            scores = DocScores(doc_nll, self.doc_tokens.copy()).domain_totals(es)
            r = ev.cache.record(m, scores, ev.pool_key(m))
            if not self.tasks:
                return r
            tasks = {}
            for t in self.tasks:  # every choice was scored exactly once
                assert not np.isnan(choice[t.name]).any(), "a survivor missed task items"
                tasks[t.name] = ev.cache.record_task(
                    t, m, ev.pool_key(m), TaskScore.of(t, choice[t.name])
                )
            return dataclasses.replace(r, tasks=tasks)
        self.dropped += 1
        mask = ~np.isnan(nll)
        n_dom = len(es.domains)
        part_tok = np.bincount(w.domain, np.where(mask, tokens, 0), n_dom).astype(np.int64)
        part_nll = np.bincount(w.domain, np.where(mask, nll, 0.0), n_dom)
        # bytes of the scored windows: their documents' bytes, shared out by tokens
        share = es.doc_bytes[w.doc] * tokens / np.maximum(1, self.doc_tokens[w.doc])
        nbytes = np.bincount(w.domain, np.where(mask, share, 0.0), n_dom)
        partial = {
            d: DomainScore(int(part_tok[i]), float(part_nll[i]), int(round(nbytes[i])))
            for i, d in enumerate(es.domains)
        }
        all_tok = np.bincount(w.domain, tokens, n_dom).astype(np.int64)
        total_tokens = {d: int(all_tok[i]) for i, d in enumerate(es.domains)}
        result = PartialResult(
            m,
            ev.cache.read(partial),
            total_tokens,
            o.score,
            self._mixtures[o.against],  # type: ignore[index]
        )
        ev.cache.record_partial(m, ev.pool_key(m), partial, total_tokens)
        return result


__all__ = [
    "DEFAULT_CONFIDENCE",
    "Gap",
    "Outcome",
    "PartialResult",
    "Race",
    "RaceOrder",
    "RaceStats",
    "RaceTarget",
    "Racer",
    "check_confidence",
    "paired_gap",
    "target_value",
]
