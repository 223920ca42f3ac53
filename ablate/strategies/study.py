"""A finished search: every scored mixture, the best one, its Pareto front and a plot."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ablate.mixture import Mixture
from ablate.pool.errors import AblateError
from ablate.present.heatmap import save_figure
from ablate.strategies.base import Trial
from ablate.strategies.space import SearchSpace, Target

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ablate.racing.policy import RaceStats


@dataclass(frozen=True)
class Best:
    """The winning mixture: target score, per-domain perplexities, held-out score."""

    mixture: Mixture
    score: float
    ppl: dict[str, float]
    heldout_score: float | None = None  # None when the search used every eval document
    heldout_ppl: dict[str, float] | None = None


@dataclass
class Study:
    """The outcome of ``ablate.search``.

    Attributes:
        strategy: Registered strategy name.
        target: What was minimised.
        space: Where the search looked.
        trials: Distinct mixtures in the order the search scored them.
        heldout: Fraction of eval documents kept out of the search (0: none).
        notes: Things worth telling the user (e.g. why no held-out split was made).
        raced_out: Mixtures a race dropped early; their ``score`` is an estimate and their
            ``result`` a ``PartialResult``. ``trials`` holds full scores only.
        race: Tokens and mixtures a race scored, when the search raced.
    """

    strategy: str
    target: Target
    space: SearchSpace
    trials: list[Trial]
    heldout: float = 0.0
    best: Best | None = None
    notes: list[str] = field(default_factory=list)
    raced_out: list[Trial] = field(default_factory=list)  # dropped by --race: partial scores
    race: RaceStats | None = None  # what racing cost and saved (None: no race)

    @property
    def evaluations(self) -> int:
        """Mixtures scored by this search, store hits included."""
        return len(self.trials)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.trials[0].result.scores) if self.trials else ()

    @property
    def frame(self) -> pd.DataFrame:
        """One row per mixture, best first: score, per-domain perplexity, weights."""
        import pandas as pd

        records = []
        for t in self.trials:
            rec = {
                "mixture": str(t.mixture),
                "size": len(t.mixture.names),
                "score": t.score,
                "evaluation": t.evaluation,
                "cached": t.result.cached,
            }
            rec.update({f"ppl:{d}": p for d, p in t.result.ppl.items()})
            rec.update({f"acc:{n}": s.acc for n, s in getattr(t.result, "tasks", {}).items()})
            rec["weights"] = t.mixture.as_dict()
            records.append(rec)
        frame = pd.DataFrame.from_records(records)
        if frame.empty:
            return frame
        frame = frame.sort_values(["score", "evaluation"], kind="stable").reset_index(drop=True)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="rank")
        return frame

    def pareto(self, domains: Sequence[str] | None = None) -> pd.DataFrame:
        """Mixtures no other mixture beats on every one of ``domains`` (default: the target's).

        Sorted by the first domain's perplexity.
        """
        domains = list(domains) if domains is not None else list(self.target.domains(self.domains))
        unknown = [d for d in domains if d not in self.domains]
        if unknown:
            raise AblateError(
                f"unknown eval domain(s) {', '.join(unknown)}; the study has: {', '.join(self.domains)}"
            )
        frame = self.frame
        if frame.empty:
            return frame
        cols = [f"ppl:{d}" for d in domains]
        values = frame[cols].to_numpy()  # (mixtures, domains)
        keep = []
        for row in values:
            dominated = ((values <= row).all(axis=1) & (values < row).any(axis=1)).any()
            keep.append(not dominated)
        return frame[keep].sort_values(cols, kind="stable")

    def best_so_far(self) -> list[float]:
        """Best target score after each evaluation (what the plot draws)."""
        out, best = [], math.inf
        for t in self.trials:
            best = min(best, t.score)
            out.append(best)
        return out

    def to_json(self) -> dict:
        """The ``--json`` record: best mixture, its scores, and the number of evaluations."""
        b = self.best
        return {
            "best": None
            if b is None
            else {
                "mixture": b.mixture.as_dict(),
                "score": b.score,
                "heldout_score": b.heldout_score,
            },
            "evaluations": self.evaluations,
            "strategy": self.strategy,
        }

    def plot(
        self, path: str | os.PathLike | None = None, *, compare: Sequence[Study] = ()
    ) -> Figure:
        """Best score vs evaluations (this study and ``compare``); Pareto front for two domains.

        Args:
            path: Write the figure here (PNG, SVG, PDF by suffix) when given.
            compare: Other studies of the same target to draw beside this one.

        Returns:
            The matplotlib ``Figure`` (drawn with the Agg canvas; no display needed).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        domains = self.target.domains(self.domains) if self.trials else ()
        two = len(domains) == 2
        fig = Figure(figsize=(11 if two else 6, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2 if two else 1, squeeze=False)[0]
        ax = axes[0]
        for s in (self, *compare):
            xs = range(1, s.evaluations + 1)
            line = ax.step(xs, s.best_so_far(), where="post", label=f"{s.strategy} (best so far)")[
                0
            ]
            ax.scatter(xs, [t.score for t in s.trials], s=10, alpha=0.35, color=line.get_color())
        ax.set_xlabel("mixtures evaluated")
        ax.set_ylabel(f"target perplexity ({self.target})")
        ax.set_title("search progress")
        if self.trials:
            ax.legend(loc="upper right", fontsize="small")
        if two:
            ax2 = axes[1]
            frame, front = self.frame, self.pareto(domains)
            x, y = (f"ppl:{d}" for d in domains)
            ax2.scatter(frame[x], frame[y], s=12, alpha=0.5, label="evaluated mixtures")
            ax2.plot(front[x], front[y], "o-", color="C3", label="Pareto front")
            if self.best is not None:
                ax2.scatter(
                    [self.best.ppl[domains[0]]],
                    [self.best.ppl[domains[1]]],
                    marker="*",
                    s=160,
                    color="black",
                    zorder=3,
                    label=f"best: {self.best.mixture}"[:60],
                )
            ax2.set_xlabel(f"{domains[0]} perplexity")
            ax2.set_ylabel(f"{domains[1]} perplexity")
            ax2.set_title("Pareto front")
            ax2.legend(loc="best", fontsize="small")
        fig.suptitle(
            f"ablate search: {self.strategy}, target {self.target}, {self.evaluations} evaluations"
        )
        if path is not None:
            save_figure(fig, path, dpi=120)
        return fig
