"""What a validation run found, as tables, a report and a scatter plot.

The central table of Na et al. (EMNLP 2024): per eval domain, how well the perplexity of a
merged proxy predicts the perplexity of a model really trained on the same mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.pool.atomic import write_bytes
from ablate.present.tables import save_figure
from ablate.validation.stats import POOLED, Calibration, CalibrationKind

if TYPE_CHECKING:
    import pandas as pd

    from ablate.validation.models import ValidationRecord


@dataclass(frozen=True)
class ValidationFiles:
    csv: Path
    markdown: Path
    scatter: Path


@dataclass(frozen=True)
class ValidationReport:
    """Proxy vs real perplexity for validated mixtures, and how well they agree.

    Attributes:
        pairs: One row per mixture x eval domain: ``mixture``, ``domain``, ``proxy``, ``real``.
        correlations: Eval domain (plus ``pooled``) x ``pearson``, ``spearman``, ``kendall``, ``n``.
        intervals: Bootstrap intervals over eval documents, ``<stat>_lo`` / ``<stat>_hi``.
        gaps: Proxy-minus-real perplexity: ``mean_gap``, ``max_gap`` (largest in size,
            signed) and ``mean_rel_gap`` (mean of gap / real).
        records: The really trained models, one per mixture and repeat (repeat-major).
        trained: How many of them this run trained (the rest were reused).
        level: Coverage of the bootstrap intervals.
        decisions: Per target (each eval domain, then ``macro``): ``spearman``, ``kendall``,
            ``regret`` (of the proxy's pick), ``top3_recall``, ``n``, intervals
            ``spearman_lo/hi``, ``regret_lo/hi``, and ``noise_spearman`` (real vs real over
            repeats; NaN with one repeat). See ``ablate.validation.decisions``.
        budget: ``proportional`` (k units for k units) or ``fixed``.
        budget_tokens: The fixed budget (None when proportional).
        repeats: Real models per mixture (other training seeds).
        extrapolate: lambda of the proxies' merge (1: the plain weighted average).
        tasks: With tasks: per (task, metric), proxy-vs-real correlations over mixtures and
            whether the task has items enough (``ablate.validation.tasks.task_table``).
        task_notes: Tasks with too few items, and how many they would need.
        search_checks: With ``check_search``: per target, the strategy's pick really
            trained vs the sample's really best mixture (``gain`` >= 0: at least as good).
    """

    pairs: pd.DataFrame
    correlations: pd.DataFrame
    intervals: pd.DataFrame
    gaps: pd.DataFrame
    records: tuple[ValidationRecord, ...]
    trained: int
    level: float
    decisions: pd.DataFrame | None = None
    budget: str = "proportional"
    budget_tokens: int | None = None
    repeats: int = 1
    extrapolate: float | str = 1.0
    search_checks: pd.DataFrame | None = None
    tasks: pd.DataFrame | None = None
    task_notes: tuple[str, ...] = ()

    @property
    def domains(self) -> list[str]:
        return [d for d in self.correlations.index if d != POOLED]

    @property
    def mixtures(self) -> int:
        return len(self.records) // self.repeats

    def calibrate(
        self, domain: str | None = None, *, kind: CalibrationKind = "linear", level: float = 0.9
    ) -> Calibration:
        """Fit a map from proxy to real perplexity on one domain's pairs (all pairs if None)."""
        rows = self.pairs if domain is None else self.pairs[self.pairs["domain"] == domain]
        if domain is not None and rows.empty:
            raise KeyError(f"no eval domain {domain!r}; domains: {', '.join(self.domains)}")
        return Calibration(
            kind,
            domain or POOLED,
            rows["proxy"].to_numpy(float),
            rows["real"].to_numpy(float),
            level=level,
        )

    def table(self) -> pd.DataFrame:
        """Correlations with their intervals and the gaps, one row per domain and pooled."""
        return self.correlations.join(self.intervals).join(self.gaps)

    def json(self) -> dict:
        """The ``--json`` document: settings, ``correlations`` (``json_rows``), ``decisions``
        and, with ``check_search``, ``search_checks``."""
        out: dict = {
            "budget": self.budget,
            "budget_tokens": self.budget_tokens,
            "repeats": self.repeats,
            "extrapolate": self.extrapolate,
            "mixtures": self.mixtures,
            "verdict": self.verdict(),
            "correlations": self.json_rows(),
            "decisions": [],
        }
        if self.decisions is not None:
            for t, r in self.decisions.iterrows():
                row = {"target": str(t), "n": int(r["n"])}
                for k in r.index:
                    if k != "n":
                        row[k] = _num(float(r[k]))
                out["decisions"].append(row)
        if self.tasks is not None:
            out["tasks"] = [
                {
                    "task": str(t),
                    "metric": str(m),
                    **{k: _num(float(v)) for k, v in r.items() if k not in ("n", "items")},
                    "n": int(r["n"]),
                    "items": int(r["items"]),
                }
                for (t, m), r in self.tasks.iterrows()
            ]
            out["task_notes"] = list(self.task_notes)
        if self.search_checks is not None:
            out["search_checks"] = [
                {
                    "target": str(t),
                    **{k: (_num(v) if isinstance(v, float) else v) for k, v in r.items()},
                }
                for t, r in self.search_checks.iterrows()
            ]
        return out

    def json_rows(self) -> list[dict]:
        """Correlations: one record per eval domain and one for ``pooled``."""
        out = []
        for d, r in self.correlations.iterrows():
            out.append(
                {
                    "domain": str(d),
                    **{k: _num(r[k]) for k in ("pearson", "spearman", "kendall")},
                    "n": int(r["n"]),
                }
            )
        return out

    def summary(self) -> str:
        """A short text table for people."""
        lines = [
            f"{'domain':<16} {'n':>4} {'pearson':>18} {'spearman':>18} {'kendall':>18} {'mean gap':>9}"
        ]
        t = self.table()
        for d, r in t.iterrows():
            cells = [_interval(r, s, ",") for s in ("pearson", "spearman", "kendall")]
            lines.append(
                f"{str(d)[:16]:<16} {int(r['n']):>4} "
                + " ".join(f"{c:>18}" for c in cells)
                + f" {r['mean_gap']:>9.3f}"
            )
        if self.decisions is not None:
            lines += ["", self.decisions_text()]
        return "\n".join(lines)

    def decisions_text(self) -> str:
        """The decision metrics as a short text table."""
        lines = [
            f"decisions ({self.budget} budget; regret = real ppl of the proxy's pick / best real - 1)",
            f"{'target':<16} {'n':>4} {'spearman':>18} {'kendall':>8} {'regret':>18} {'top3':>5} {'noise':>6}",
        ]
        for t, r in self.decisions.iterrows():  # type: ignore[union-attr]
            lines.append(
                f"{str(t)[:16]:<16} {int(r['n']):>4} "
                f"{_interval(r, 'spearman', ','):>18} "
                f"{_fmt(r['kendall']):>8} "
                f"{_interval(r, 'regret', ',', _pct):>18} "
                f"{r['top3_recall']:>5.2f} {_fmt(r['noise_spearman']):>6}"
            )
        if self.tasks is not None:
            lines += ["", self.tasks_text()]
        if self.search_checks is not None:
            for t, r in self.search_checks.iterrows():
                lines.append(
                    f"search check {t}: {r['strategy']} picked {r['pick']} -> real {r['pick_real']:.3f} "
                    f"vs sample best {r['sample_best']} {r['sample_best_real']:.3f} "
                    f"({'+' if r['gain'] >= 0 else ''}{100 * r['gain']:.2f}%)"
                )
        return "\n".join(lines)

    def verdict(self) -> str:
        """One line: is the proxy's macro ranking trustworthy on this pool (``macro_verdict``)."""
        if self.decisions is None or "macro" not in self.decisions.index:
            return "no macro target was measured: nothing to judge"
        r = self.decisions.loc["macro"]
        return macro_verdict(
            float(r["spearman"]), float(r["noise_spearman"]), float(r["regret"]), self.repeats
        )

    def tasks_text(self) -> str:
        """Proxy-vs-real task scores as a short text table, then the too-few-items notes."""
        lines = [
            "tasks (proxy vs real over mixtures; items: questions in the task)",
            f"{'task:metric':<22} {'n':>4} {'items':>6} {'pearson':>8} {'spearman':>9} "
            f"{'kendall':>8} {'real mean':>10} {'real sd':>8} {'item se':>8}",
        ]
        for (t, m), r in self.tasks.iterrows():  # type: ignore[union-attr]
            lines.append(
                f"{f'{t}:{m}'[:22]:<22} {int(r['n']):>4} {int(r['items']):>6} "
                f"{_fmt(r['pearson']):>8} {_fmt(r['spearman']):>9} {_fmt(r['kendall']):>8} "
                f"{r['real_mean']:>10.3f} {r['real_sd']:>8.3f} {r['item_se']:>8.3f}"
            )
        lines += [f"note: {n}" for n in self.task_notes]
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def write(
        self, out: str | Path, *, title: str = "ablate validation: proxy vs really trained"
    ) -> ValidationFiles:
        """Write ``validation.csv``, ``report.md`` and ``scatter.png`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        csv = out / "validation.csv"
        write_bytes(
            csv,
            self.pairs[["mixture", "domain", "proxy", "real"]].to_csv(index=False).encode("utf-8"),
        )
        scatter = plot_scatter(self.pairs, out / "scatter.png", title, self.correlations)
        md = out / "report.md"
        write_bytes(md, self._markdown(title).encode("utf-8"))
        return ValidationFiles(csv, md, scatter)

    def _budget_words(self) -> str:
        if self.budget == "fixed":
            return f"fixed, {self.budget_tokens} tokens per real model"
        return "proportional (k base units of tokens for k units)"

    def _markdown(self, title: str) -> str:
        pct = f"{100 * self.level:.0f}%"
        t = self.table()
        lines = [
            f"# {title}",
            "",
            f"{self.mixtures} mixtures x {self.repeats} training seed(s) really trained "
            f"({self.trained} now, {len(self.records) - self.trained} reused) and compared with their "
            f"merged proxies on {len(self.domains)} eval domain(s); budget: {self._budget_words()}"
            + (
                f"; proxies extrapolated with lambda {self.extrapolate:g}"
                if self.extrapolate != 1
                else ""
            )
            + f". Brackets: {pct} bootstrap intervals over eval documents. Gap: proxy minus real perplexity.",
            "",
            "| domain | n | Pearson | Spearman | Kendall | mean gap | largest gap | mean gap / real |",
            "|---|---:|---|---|---|---:|---:|---:|",
        ]
        for d, r in t.iterrows():
            cells = [_interval(r, s, ", ") for s in ("pearson", "spearman", "kendall")]
            lines.append(
                f"| {d} | {int(r['n'])} | "
                + " | ".join(cells)
                + f" | {r['mean_gap']:.3f} | {r['max_gap']:.3f} | {100 * r['mean_rel_gap']:.2f}% |"
            )
        if self.decisions is not None:
            lines += [
                "",
                "## Decisions: would the proxy pick what real training picks?",
                "",
                "Per target (`macro` = mean perplexity over domains): rank agreement, the regret of the "
                "proxy's best mixture (its real perplexity over the best real one, minus 1), top-3 recall, "
                "and the noise ceiling (Spearman between real models of other training seeds).",
                "",
                "| target | n | Spearman | Kendall | regret@1 | top-3 recall | noise ceiling |",
                "|---|---:|---|---:|---|---:|---:|",
            ]
            for t, r in self.decisions.iterrows():
                lines.append(
                    f"| {t} | {int(r['n'])} | {_interval(r, 'spearman', ', ')} "
                    f"| {_fmt(r['kendall'])} | {_interval(r, 'regret', ', ', _pct)} "
                    f"| {r['top3_recall']:.2f} | {_fmt(r['noise_spearman'])} |"
                )
        if self.search_checks is not None:
            lines += [
                "",
                "## The optimizer's pick, really trained",
                "",
                "| target | strategy | pick | real | sample's best | real | pick vs best |",
                "|---|---|---|---:|---|---:|---:|",
            ]
            for t, r in self.search_checks.iterrows():
                lines.append(
                    f"| {t} | {r['strategy']} | {r['pick']} | {r['pick_real']:.3f} | {r['sample_best']} "
                    f"| {r['sample_best_real']:.3f} | {100 * r['gain']:+.2f}% |"
                )
        if self.tasks is not None:
            lines += [
                "",
                "## Tasks: do proxy task scores predict real ones?",
                "",
                "Per task and metric, over the mixtures: correlation of the proxy's score with the "
                "real model's; item se = paired standard error of one model's score over the task's items, "
                "real sd = how much real scores differ between mixtures.",
                "",
                "| task | metric | n | items | Pearson | Spearman | Kendall | real mean | real sd | item se |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for (t, m), r in self.tasks.iterrows():
                lines.append(
                    f"| {t} | {m} | {int(r['n'])} | {int(r['items'])} | {_fmt(r['pearson'])} "
                    f"| {_fmt(r['spearman'])} | {_fmt(r['kendall'])} | {r['real_mean']:.3f} "
                    f"| {r['real_sd']:.3f} | {r['item_se']:.3f} |"
                )
            lines += [f"\n> {n}" for n in self.task_notes]
        lines += ["", "## Calibration (proxy -> real perplexity)", ""]
        for domain in [None, *self.domains]:
            try:
                lines.append(f"- {self.calibrate(domain).describe()}")
            except ValueError as e:
                lines.append(f"- {domain or POOLED}: {e}")
        lines += [
            "",
            "## Mixtures",
            "",
            "| mixture | units | tokens | final loss | train time (s) |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in self.records:
            from ablate.mixture import Mixture

            lines.append(
                f"| {Mixture(r.mixture).brief()} | {len(r.units)} | {r.tokens_seen} | {r.final_loss:.4f} | {r.wall_time_s:.1f} |"
            )
        lines += ["", "![proxy vs real perplexity](scatter.png)", ""]
        return "\n".join(lines)


def gap_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Mean and largest proxy-minus-real gap per domain and pooled."""
    import pandas as pd

    rows = {}
    groups = [(d, g) for d, g in pairs.groupby("domain", sort=True)] + [(POOLED, pairs)]
    for d, g in groups:
        gap = (g["proxy"] - g["real"]).to_numpy()
        rows[d] = {
            "mean_gap": float(gap.mean()),
            "max_gap": float(gap[np.argmax(np.abs(gap))]),
            "mean_rel_gap": float(np.mean(gap / g["real"].to_numpy())),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("domain")


def plot_scatter(
    pairs: pd.DataFrame, path: Path, title: str, correlations: pd.DataFrame | None = None
) -> Path:
    """Proxy vs real perplexity, one colour per eval domain, with the y = x line."""
    # A bare Figure renders headless without switching the process's matplotlib backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    for d, g in pairs.groupby("domain", sort=True):
        label = str(d)
        if (
            correlations is not None
            and d in correlations.index
            and not math.isnan(correlations.loc[d, "pearson"])
        ):
            label += f" (r={correlations.loc[d, 'pearson']:.2f})"
        ax.scatter(g["proxy"], g["real"], label=label, s=28, alpha=0.8)
    lo = float(min(pairs["proxy"].min(), pairs["real"].min()))
    hi = float(max(pairs["proxy"].max(), pairs["real"].max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="real = proxy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("proxy perplexity (merged pool members)")
    ax.set_ylabel("real perplexity (trained on the mixture)")
    if correlations is not None and POOLED in correlations.index:
        title += f"\npooled Pearson {_fmt(correlations.loc[POOLED, 'pearson'])}, Spearman {_fmt(correlations.loc[POOLED, 'spearman'])}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title="eval domain", title_fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


TRUST_SPEARMAN = 0.8  # a macro ranking this close to real training is one to decide on
TRUST_SLACK = 0.05  # ... or this close to the noise ceiling, where real training agrees less


def macro_verdict(spearman: float, ceiling: float, regret: float, repeats: int) -> str:
    """Whether the proxy's macro ranking can be trusted, judged against the noise ceiling.

    The bar is the fidelity suite's (docs/accuracy.md): Spearman >= 0.8, or within 0.05 of
    the seed-vs-seed agreement where that is lower (no proxy can rank better than real
    training agrees with itself). Without repeats there is no ceiling to judge against.
    """
    got = f"proxy-vs-real macro Spearman {_fmt(spearman)}, regret of its pick {_pct(regret)}"
    if math.isnan(spearman):
        return f"verdict: {got}; the sample is too small to rank (validate --sample 16 or more)"
    if repeats < 2 or math.isnan(ceiling):
        return (
            f"verdict: {got}; no noise ceiling to judge it against: rerun with --repeats 2 "
            "(the real models trained now are reused)"
        )
    bar = min(TRUST_SPEARMAN, ceiling - TRUST_SLACK)
    against = f"{got}, noise ceiling {_fmt(ceiling)} (real vs real)"
    if spearman >= bar:
        return f"verdict: macro ranking TRUSTWORTHY on this pool: {against}"
    if ceiling < 0.5:
        return (
            f"verdict: macro ranking NOT decidable here: {against}: real training disagrees "
            "with itself, so these mixtures differ less than training noise; validate "
            "mixtures further apart (--weights dirichlet:0.3) or at a larger --budget-tokens"
        )
    return (
        f"verdict: macro ranking NOT trustworthy on this pool: {against}; decide from really "
        "trained mixtures, or grow a pool whose members stay near the seed (pool init "
        "--member-seed-share 0.5 --member-schedule constant --member-lr LR/10) and validate again"
    )


def _interval(row, stat: str, sep: str, fmt=None) -> str:
    """``value [lo, hi]`` of ``stat`` and its bootstrap interval in one table row."""
    fmt = fmt or _fmt
    return f"{fmt(row[stat])} [{fmt(row[stat + '_lo'])}{sep}{fmt(row[stat + '_hi'])}]"


def _pct(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{100 * x:.2f}%"


def _fmt(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.3f}"


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
