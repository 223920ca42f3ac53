"""Proxy vs real scores on multiple-choice tasks, and whether a task has items enough.

Validation compares, per task and metric (``acc``, ``acc_norm``, ``gold_nll``), the merged
proxy's score with the really trained model's over the sampled mixtures (Pearson,
Spearman, Kendall), as it does for perplexity per eval domain.

A task's score is an average over few items, so it is noisy. Every model answers the same
items, so what blurs a comparison between mixtures is how differently they do item by
item: with ``v`` the variance over items of one model's per-item score minus the mean of
all models on that item (paired, as McNemar's test is), one model's score is uncertain
relative to the others by about ``sqrt(v / n)`` on ``n`` items. When that is not small
beside how much the real models' scores differ between mixtures (their standard deviation
``sd``), the correlation mostly measures item noise. The rule here: the item noise must be
at most half the spread, i.e. ``n >= 4 v / sd^2``; a task with fewer items gets a note
that says how many it needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ablate.objective import TASK_METRICS
from ablate.validation.stats import correlations

if TYPE_CHECKING:
    import pandas as pd

    from ablate.engine.scores import TaskScore

NOISE_SHARE = 0.5  # item noise (standard error) may be at most this share of the real spread


def items_needed(per_item_var: float, spread: float) -> float:
    """Items for the standard error over items to be ``NOISE_SHARE`` of ``spread`` (inf when
    the real scores do not differ at all)."""
    if spread <= 0 or not math.isfinite(spread):
        return math.inf
    return math.ceil(per_item_var / (NOISE_SHARE * spread) ** 2)


def _paired_variance(per_item: np.ndarray) -> float:
    """Mean over models of the variance over items of (score - all models' mean on the
    item), ``per_item`` ``(M, items)``; one model alone: the plain variance over items."""
    m = per_item.shape[0]
    if m < 2:
        return float(per_item.var(axis=1, ddof=1).mean())
    resid = per_item - per_item.mean(axis=0, keepdims=True)  # (M, items)
    return float(resid.var(axis=1, ddof=1).mean() * m / (m - 1))  # centring removed 1/m


def task_table(
    proxy: Sequence[Mapping[str, TaskScore]],
    real: Sequence[Sequence[Mapping[str, TaskScore]]],
) -> tuple[pd.DataFrame, list[str]]:
    """Correlations per (task, metric) and notes about tasks with too few items.

    Args:
        proxy: Per mixture, the proxy's ``{task: TaskScore}``.
        real: Per mixture, per repeat, the real model's ``{task: TaskScore}`` (repeats are
            averaged per item).

    Returns:
        A frame indexed by (``task``, ``metric``) with ``pearson``, ``spearman``,
        ``kendall``, ``n`` (mixtures), ``items``, ``proxy_mean``, ``real_mean``,
        ``real_sd`` (spread over mixtures), ``item_se`` (paired standard error of one
        model's score over items), ``items_needed``; and one note per task that has too few
        items.
    """
    import pandas as pd

    rows, notes = [], []
    names = list(proxy[0]) if proxy else []
    for name in names:
        for metric in TASK_METRICS:
            p = np.array([s[name].metric(metric) for s in proxy])  # (M,)
            per_item = np.stack(
                [np.mean([rep[name].per_item(metric) for rep in reps], axis=0) for reps in real]
            )  # (M, items) real models, repeats averaged
            r = per_item.mean(1)  # (M,)
            n_items = per_item.shape[1]
            var = _paired_variance(per_item) if n_items > 1 else math.nan
            spread = float(r.std(ddof=1)) if len(r) > 1 else math.nan
            need = items_needed(var, spread)
            rows.append(
                {
                    "task": name,
                    "metric": metric,
                    **correlations(p, r),
                    "items": n_items,
                    "proxy_mean": float(p.mean()),
                    "real_mean": float(r.mean()),
                    "real_sd": spread,
                    "item_se": math.sqrt(var / n_items) if n_items else math.nan,
                    "items_needed": need,
                }
            )
        acc = next(x for x in rows if x["task"] == name and x["metric"] == "acc")
        if not acc["real_sd"] > 0:  # NaN too: fewer than two real models
            notes.append(
                f"task {name}: the real accuracies of the sampled mixtures do not differ "
                f"(sd {acc['real_sd']:.3f}), so no correlation can be read from them; validate "
                "mixtures further apart (--weights dirichlet:0.3) or use a task the models "
                "do not all answer alike"
            )
        elif not acc["items_needed"] <= acc["items"]:
            need = acc["items_needed"]
            want = "more items than any task has" if math.isinf(need) else f"about {need} items"
            notes.append(
                f"task {name}: {acc['items']} items are too few for its accuracy correlation to "
                f"mean much - one model's accuracy is uncertain by +-{acc['item_se']:.3f} "
                f"(paired standard error over items) while the real accuracies of the sampled mixtures "
                f"differ by {acc['real_sd']:.3f} (sd); it needs {want} (noise at most half "
                "the spread)"
            )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.set_index(["task", "metric"])
    return frame, notes


__all__ = ["NOISE_SHARE", "items_needed", "task_table"]
