"""``validate``: train real models on mixtures and measure how well the simulator predicts them.

Na et al. (EMNLP 2024), section 4: for a sample of mixtures, the perplexity of the
parameter average of the mixture's unit models (the proxy) is compared with the
perplexity of a model continued from the same seed, with the same recipe, on the union of
those units (k units of tokens for k units). Real models are stored in the pool and reused,
so a validation can be extended later without retraining anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ablate.mixture import Mixture, MixtureError
from ablate.validation.report import ValidationReport, gap_table
from ablate.validation.stats import POOLED, bootstrap_correlations, correlations

if TYPE_CHECKING:
    from ablate.evaluator import Evaluator, MixtureLike

log = logging.getLogger(__name__)


def sample_mixtures(
    partitions: Sequence[str], n: int, sizes: Iterable[int] = (2, 3, 4), seed: int = 0
) -> list[Mixture]:
    """``n`` distinct uniform subsets: a size drawn from ``sizes``, then a subset of that size.

    The draw is sequential, so a larger ``n`` with the same seed extends a smaller one
    (a validation can grow without discarding its trained models).
    """
    from math import comb

    names = sorted(partitions)
    usable = sorted({s for s in sizes if 1 <= s <= len(names)})
    if not usable:
        raise MixtureError(
            f"no subset size in {sorted(set(sizes))} fits a pool of {len(names)} partition(s)"
        )
    if n < 1:
        raise MixtureError(f"--sample must be at least 1, got {n}")
    available = sum(comb(len(names), s) for s in usable)
    if n > available:
        log.warning("only %d subsets of sizes %s exist; validating all of them", available, usable)
        n = available
    rng = np.random.default_rng(seed)
    seen: dict[tuple[str, ...], None] = {}
    while len(seen) < n:
        size = int(rng.choice(usable))
        pick = tuple(sorted(rng.choice(names, size=size, replace=False).tolist()))
        seen.setdefault(pick, None)
    return [Mixture.uniform(s) for s in seen]


def validate(
    ev: Evaluator,
    *,
    mixtures: Iterable[MixtureLike] | None = None,
    sample: int | None = None,
    sizes: Iterable[int] = (2, 3, 4),
    seed: int = 0,
    bootstrap: int = 1000,
    level: float = 0.95,
    progress: bool | None = None,
    device: str | None = None,
) -> ValidationReport:
    """Train (or reuse) a real model per mixture, score it and its proxy, compare them.

    Args:
        ev: The evaluator: its pool, eval set and domains define the comparison.
        mixtures: Mixtures to validate (names, ``"a,b"``, ``{"a": 1, "b": 3}``, Mixture).
        sample: Instead of ``mixtures``: validate this many random uniform subsets.
        sizes: Subset sizes to sample from.
        seed: Seed of the sample (and of the bootstrap).
        bootstrap: Bootstrap resamples of eval documents for the intervals.
        level: Coverage of the bootstrap intervals.
        progress: Progress bars (default: the evaluator's setting).
        device: Device for training the real models (default: the evaluator's).

    Returns:
        A ``ValidationReport`` (``.correlations``, ``.calibrate()``, ``.write(out)``).
    """
    import pandas as pd
    import torch

    from ablate.evaluator import as_mixture
    from ablate.validation.models import ensure_trained, load_into, plan_for

    if (mixtures is None) == (sample is None):
        raise MixtureError("say what to validate: mixtures=[...] or sample=N (not both)")
    if mixtures is not None:
        chosen = list(dict.fromkeys(as_mixture(m) for m in mixtures))  # unique, in order
    else:
        chosen = sample_mixtures(ev.partitions, sample, sizes, seed)  # type: ignore[arg-type]
    if not chosen:
        raise MixtureError("no mixtures to validate")
    if bootstrap < 0 or not 0 < level < 1:
        raise MixtureError(f"need bootstrap >= 0 and 0 < level < 1, got {bootstrap} and {level}")
    if POOLED in ev.domains:
        raise MixtureError(
            f"an eval domain is named {POOLED!r}, which the report uses for all domains; rename it"
        )
    plans = [plan_for(ev, m) for m in chosen]  # checks every name before anything trains
    show = ev.progress if progress is None else progress
    records, trained = ensure_trained(ev, plans, progress=show, device=device or ev.device_name)

    eval_set = ev.eval_set
    scorer = ev.scorer()  # per-document sums: the bootstrap resamples documents
    proxy_docs, real_docs, rows = [], [], []
    for m, rec in zip(chosen, records, strict=True):
        key = ev.pool_key(m)
        proxy = ev.cache.lookup(m, key)  # the store's answer, if any
        ev.merged.merge(torch.from_numpy(ev.member_weights(m)).float())
        p_docs = scorer.score_documents()  # the simulator's answer, per document
        if proxy is None:  # its domain totals are the proxy's scores: no second forward pass
            proxy = ev.cache.record(m, p_docs.domain_totals(eval_set), key)
        load_into(ev, rec)
        r_docs = scorer.score_documents()
        real = r_docs.domain_totals(eval_set)
        proxy_docs.append(p_docs.nll)
        real_docs.append(r_docs.nll)
        for d in ev.domains:
            rows.append(
                {"mixture": str(m), "domain": d, "proxy": proxy.scores[d].ppl, "real": real[d].ppl}
            )
    tokens = r_docs.tokens

    pairs = pd.DataFrame(rows, columns=["mixture", "domain", "proxy", "real"])
    corr = {
        d: correlations(g["proxy"].to_numpy(), g["real"].to_numpy())
        for d, g in pairs.groupby("domain", sort=True)
    }
    corr[POOLED] = correlations(pairs["proxy"].to_numpy(), pairs["real"].to_numpy())
    corr_frame = pd.DataFrame.from_dict(corr, orient="index").rename_axis("domain")
    corr_frame["n"] = corr_frame["n"].astype(int)
    intervals = bootstrap_correlations(
        np.stack(proxy_docs),
        np.stack(real_docs),
        tokens,
        eval_set.doc_domain,
        eval_set.domains,
        replicates=bootstrap,
        level=level,
        seed=seed,
    )
    return ValidationReport(
        pairs=pairs,
        correlations=corr_frame,
        intervals=intervals.loc[corr_frame.index],
        gaps=gap_table(pairs).loc[corr_frame.index],
        records=tuple(records),
        trained=trained,
        level=level,
    )
