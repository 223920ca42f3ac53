"""Racing: drop a mixture as soon as part of the eval set proves it worse, score the rest in full.

On CPU a mixture's score costs one forward pass over the eval set, and that forward is near
the machine's peak already; what is left is to score fewer tokens. Most mixtures of a search
are clearly worse than the best one after a small part of the eval set, so racing
(Maron & Moore, NIPS 1994, "Hoeffding races"; Birattari et al., GECCO 2002, "F-Race")
scores every candidate on growing prefixes of the eval documents and stops the ones that
are worse than the incumbent with the requested confidence. Survivors are scored in full,
so every score a user sees is a full score; a dropped mixture leaves a ``PartialResult``
(and a row in the store's ``partial_results`` table), never an ``EvalResult``.

The algorithm, per batch of candidates (a strategy's proposal; the whole space for
``exhaustive``):

1. **Order.** Documents of the target's domains are shuffled once per domain (fixed seed)
   and cut into stages holding 2, 4, 8, ... documents per domain (``RaceOrder``): every
   prefix is stratified by domain. Documents of domains the target ignores wait for the
   last stage, which only survivors reach.
2. **Stage by stage.** All candidates are scored on stage 0 (per document). Before each
   later stage every candidate still running is tested against the k-th best fully scored
   mixture (the incumbent; ``top`` = k, default 1) on the same documents; the ones proven
   worse stop. The candidate that looks best is scored in full at once, so the incumbent
   tightens early (the first incumbent is the best stage-0 estimate, or the best store hit).
3. **Full scores.** A candidate that reaches the end has been scored on every document
   exactly once: its per-document sums add up to its full score, which is recorded (the
   same windows batched per stage: on the demo pool, within 4e-9 relative of the plain
   scorer's NLL, token counts identical).

**The statistic.** Targets are weighted means of per-domain perplexities,
``T = sum_d w_d exp(mu_d)`` with ``mu_d`` a domain's token-weighted mean NLL (macro: equal
weights; one domain: a single term). ``T`` is not linear in documents, so the test runs on
each domain's ratio estimate ``mu_d = sum_j nll_j / sum_j t_j`` and carries the difference
``Delta = T(candidate) - T(incumbent)`` through the delta method: document j of domain d
contributes ``z_j = (e^mu_c (nll_cj - mu_c t_j) - e^mu_i (nll_ij - mu_i t_j)) / t_bar``,
paired (same documents, so the between-document variance cancels). Domains are strata:
``Var(Delta) = sum_d w_d^2 (1 - n_d/N_d) s_d^2 / n_d`` with the finite-population factor
(a domain scored in full contributes no variance; when every target domain is complete the
test is exact). The bound uses Student's t with Welch-Satterthwaite degrees of freedom:
at the first look a domain holds two documents, and when one domain carries most of the
variance its two documents are all the evidence there is. (The design's ``n - H`` degrees
of freedom drop more mixtures early, 2.3x vs 2.0x fewer tokens for macro on the demo pool,
but dropped the true best in a 3-document-per-domain test: two documents can hide the
third's spread.) The level is one-sided ``1 - (1 - confidence) / L`` over the race's L
looks (Bonferroni: a candidate is tested up to L times). A candidate is
dropped when ``Delta - t * se > 0``.

**Task terms.** ``Racer`` sees only units in weighted strata, so the items of each task a
``task:`` term reads are units too: one stratum per task, shuffled and visited in stages like
documents. An item's value is its loss under the task's terms (``100 * (1 - correct)`` for
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
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ablate.engine.executor import LocalExecutor
from ablate.engine.scores import DocScores, DomainScore, EvalResult, TaskScore
from ablate.evaluator import as_mixture
from ablate.mixture import Mixture
from ablate.objective import TASK_LOSS_SCALE, Target, as_task_loss, task_term
from ablate.pool.errors import AblateError
from ablate.racing.engine import (
    DEFAULT_CONFIDENCE,
    RACE_SEED,
    Gap,
    Outcome,
    RaceOrder,
    Racer,
    check_confidence,
    paired_gap,
    target_value,
)

if TYPE_CHECKING:
    from ablate.data.evalset import EvalSet
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
    """A mixture dropped by a race: scores on the documents it was scored on only.

    Not an ``EvalResult`` on purpose (no ``ppl``, no ``scores``): nothing can read it as a
    full score. ``estimate`` is the incumbent's full target plus the paired estimate of the
    gap, what a strategy observes in place of a score.
    """

    mixture: Mixture
    partial: Mapping[str, DomainScore]  # per domain, over the scored documents only
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

    @property
    def saving(self) -> float:
        """How many times fewer tokens than full scoring (1.0 when nothing was scored)."""
        return self.tokens_full / self.tokens_scored if self.tokens_scored else 1.0

    def describe(self) -> str:
        return (
            f"racing: {self.full} mixture(s) scored in full, {self.dropped} dropped early, "
            f"{self.cached} from the store; {self.tokens_scored:,} of {self.tokens_full:,} "
            f"eval tokens scored ({self.saving:.1f}x fewer)"
        )


class Race:
    """Racing as a scoring policy over an ``Evaluator`` (any strategy can use it).

    One ``Race`` keeps its incumbents across ``run`` calls, so a strategy that proposes a
    few mixtures at a time races each batch against the best found so far.

    Args:
        ev: The evaluator (local executor: racing scores in this process).
        target: What is minimised (``ablate.strategies.Target``; ``"macro"`` by name).
        confidence: Probability that a dropped mixture is really worse than the incumbent.
        top: Keep the ``top`` best provably (race against the k-th best).
        seed: Seeds the document order.
    """

    def __init__(
        self,
        ev: Evaluator,
        target: RaceTarget | str = "macro",
        *,
        confidence: float = DEFAULT_CONFIDENCE,
        top: int = 1,
        seed: int = RACE_SEED,
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
        # Units: the eval documents, then each raced task's items (a stratum per task).
        self.tasks = [ev.tasks[n] for n in sorted(task_w)]
        self.task_terms = {n: tuple(task_w[n]) for n in sorted(task_w)}
        self.n_docs = len(es.docs)
        starts = np.cumsum([self.n_docs, *(t.n for t in self.tasks)])
        self.task_start = {t.name: int(a) for t, a in zip(self.tasks, starts, strict=False)}
        n_dom = len(es.domains)
        strata = np.concatenate(
            [es.doc_domain, *(np.full(t.n, n_dom + k) for k, t in enumerate(self.tasks))]
        ).astype(np.int64)
        doc_tokens = ev.scorer().doc_tokens
        tokens = np.concatenate([doc_tokens, np.ones(int(starts[-1]) - self.n_docs, np.int64)])
        cost = np.concatenate([doc_tokens, *(self._item_cost(t) for t in self.tasks)])
        task_total = [sum(w for _, w in self.task_terms[t.name]) for t in self.tasks]
        weights = np.asarray([dom_w.get(d, 0.0) for d in es.domains] + task_total)
        linear = np.arange(len(weights)) >= n_dom
        bound = np.zeros(len(weights))
        for k, t in enumerate(self.tasks):  # the per-item value is the terms' weighted mean
            acc_w = sum(w for m, w in self.task_terms[t.name] if m != "gold_nll")
            bound[n_dom + k] = TASK_BOUND * acc_w / task_total[k]
        raced = [i for i, w in enumerate(weights) if w > 0]
        self.racer = Racer(
            RaceOrder.build(strata, raced, seed=seed),
            tokens,
            strata,
            weights,
            confidence=check_confidence(confidence),
            top=top,
            linear=linear,
            bound=bound,
            cost=cost.astype(np.int64),
        )
        self._stage_sets: dict[bytes, EvalSet] = {}
        self._sub_tasks: dict[tuple[str, bytes], Task] = {}
        self._choice: dict[Hashable, dict[str, np.ndarray]] = {}  # raced tasks' choice NLL
        self._mixtures: dict[str, Mixture] = {}
        self.full = self.dropped = self.cached = self.tokens_full = 0

    def _item_cost(self, task: Task) -> np.ndarray:
        """Tokens a forward pass over each item's choices reads, ``(task.n,)``."""
        pool = self.ev.pool
        tok = pool.tokenizer
        w = task.windows(tok, pool.manifest.context, tok.pad_token_id or 0)
        return np.bincount(w.domain, weights=w.lengths, minlength=task.n).astype(np.int64)

    @property
    def stats(self) -> RaceStats:
        return RaceStats(
            self.full, self.dropped, self.cached, self.racer.tokens_scored, self.tokens_full
        )

    def run(self, mixtures: Sequence[Mixture]) -> list[EvalResult | PartialResult]:
        """Each mixture's full ``EvalResult`` (store hits and survivors) or ``PartialResult``
        (dropped), in the given order."""
        mixtures = [as_mixture(m) for m in mixtures]
        ev, known = self.ev, {}
        todo: dict[str, Mixture] = {}
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
        if todo and len(self.racer.incumbents) < self.racer.top and known:
            self._seed(list(known.values()))
        outcomes = self.racer.run(list(todo), self._score_stage)
        self.tokens_full += int(self.racer.cost.sum()) * len(todo)
        for key, o in outcomes.items():
            known[key] = self._result(todo[key], o)
        if getattr(ev, "tasks", None):  # survivors carry their task scores, like run_many's
            full = [r for r in known.values() if isinstance(r, EvalResult)]
            known.update({r.mixture.key: r for r in ev.with_tasks(full)})
        return [known[m.key] for m in mixtures]

    def _seed(self, hits: list[EvalResult]) -> None:
        """Score the best store hits per document so they can be raced against."""
        rank = sorted(hits, key=lambda r: self.target.score(r.ppl, r.tasks))
        for r in rank[: self.racer.top - len(self.racer.incumbents)]:
            self._mixtures[r.mixture.key] = r.mixture
            docs = np.arange(len(self.racer.tokens))  # every unit
            nll = self._score_stage([r.mixture.key], docs)[0]
            self.racer.tokens_scored += int(self.racer.cost.sum())
            self.racer.admit(r.mixture.key, nll)
            self._choice.pop(r.mixture.key, None)  # a hit's task scores came from the store

    def _stage_set(self, docs: np.ndarray) -> EvalSet:
        if len(docs) == self.n_docs and (docs == np.arange(self.n_docs)).all():
            return self.ev.eval_set  # every document (a seeded hit): its scorer is built already
        key = docs.tobytes()
        if key not in self._stage_sets:
            self._stage_sets[key] = self.ev.eval_set.subset(docs.tolist(), "race stage")
        return self._stage_sets[key]

    def _sub_task(self, task: Task, items: np.ndarray) -> Task:
        key = (task.name, items.tobytes())
        if key not in self._sub_tasks:
            self._sub_tasks[key] = task.subset(items)
        return self._sub_tasks[key]

    def _score_stage(self, keys: Sequence[Hashable], units: np.ndarray) -> np.ndarray:
        """Per-unit values ``(len(keys), len(units))``: a document's summed NLL, a task
        item's loss (its terms' weighted mean); uniform subsets merge by a Gray walk."""
        ev = self.ev
        is_doc = units < self.n_docs
        docs = units[is_doc]
        scorer = ev.scorer(self._stage_set(docs)) if len(docs) else None
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
            if scorer is not None:
                row[is_doc] = scorer.score_documents().nll
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
        nll, tokens = o.nll[: self.n_docs], self.racer.tokens[: self.n_docs]
        choice = self._choice.pop(m.key, {})
        if o.full:
            self.full += 1
            scores = DocScores(nll, tokens.copy()).domain_totals(es)
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
        part = DocScores(np.where(mask, nll, 0.0), np.where(mask, tokens, 0))
        totals = part.domain_totals(es)
        nbytes = np.bincount(
            es.doc_domain, weights=np.where(mask, es.doc_bytes, 0), minlength=len(es.domains)
        )
        partial = {
            d: DomainScore(s.tokens, s.nll, int(nbytes[i]))
            for i, (d, s) in enumerate(totals.items())
        }
        total_tokens = dict(zip(es.domains, ev.scorer().domain_tokens, strict=True))
        result = PartialResult(
            m,
            partial,
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
