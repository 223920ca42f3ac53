"""The per-domain level correction ``ablate validate`` reports: offsets from the real runs, a
macro that ranks like real training where the proxy's levels alone misled it, never a
mixture ranked with its own real score, and a ``--target`` any search takes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ablate.objective import Target
from ablate.validation.levels import LevelCorrection, leave_one_out_offsets, level_correction


def _pairs(proxy: np.ndarray, real: np.ndarray, domains=("code", "prose")) -> pd.DataFrame:
    rows = [
        {"mixture": f"m{i}", "domain": d, "proxy": proxy[i, j], "real": real[i, j]}
        for i in range(len(proxy))
        for j, d in enumerate(domains)
    ]
    return pd.DataFrame(rows)


def test_a_domain_the_proxy_overstates_misleads_its_macro_and_the_correction_fixes_it():
    # Real macro is best at m0; the proxy puts prose at 3x its real perplexity, so its macro
    # follows prose and picks m1 (prose best there), 25% worse for real.
    real = np.array([[10.0, 30.0], [30.0, 20.0], [20.0, 40.0], [40.0, 35.0]])
    proxy = real * np.array([1.0, 3.0])
    lc = level_correction(_pairs(proxy, real))
    assert lc is not None and lc.mixtures == 4
    assert lc.offsets == pytest.approx({"code": 0.0, "prose": -math.log(3.0)})
    assert lc.regret == pytest.approx(25 / 20 - 1)  # proxy picks m1: 25 vs the best 20
    assert lc.regret_corrected == 0.0 and lc.spearman_corrected == pytest.approx(1.0)
    assert lc.spearman < 1.0
    assert lc.weights == pytest.approx({"code": 0.75, "prose": 0.25})
    # The target any search takes is that corrected macro: same weights, same pick.
    target = Target.parse(lc.target)
    assert dict(target.weights) == pytest.approx(lc.weights, rel=1e-3)
    scores = [target.score({"code": p[0], "prose": p[1]}) for p in proxy]
    assert int(np.argmin(scores)) == 0
    assert lc.helps and "--target weighted:code=0.75,prose=0.25" in lc.text()
    doc = lc.json()
    assert doc["target"] == lc.target and doc["regret_corrected"] == 0.0


def test_each_mixture_is_corrected_by_the_other_mixtures_only():
    ratio = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 6.0]])
    assert leave_one_out_offsets(ratio) == pytest.approx(
        np.array([[1.5, 4.0], [1.0, 3.5], [0.5, 1.5]])
    )
    with pytest.raises(ValueError, match="two"):
        leave_one_out_offsets(ratio[:1])
    rng = np.random.default_rng(0)
    real = rng.uniform(5, 50, (6, 3))
    proxy = real * rng.uniform(0.5, 2.0, (6, 3))  # levels that differ by mixture too
    lc = level_correction(_pairs(proxy, real, ("a", "b", "c")))
    corrected = []
    for i in range(6):  # by hand: mixture i's offsets from the five others
        others = [j for j in range(6) if j != i]
        c = np.log(real[others] / proxy[others]).mean(axis=0)
        corrected.append((proxy[i] * np.exp(c)).mean())
    truth = real.mean(axis=1)
    assert lc.spearman_corrected == pytest.approx(stats.spearmanr(corrected, truth).statistic)
    assert lc.regret_corrected == pytest.approx(truth[np.argmin(corrected)] / truth.min() - 1)
    assert lc.spearman == pytest.approx(stats.spearmanr(proxy.mean(axis=1), truth).statistic)


def test_the_correction_is_recommended_only_where_it_decides_better():
    def lc(regret, corrected, rho=0.5, rho_c=0.6):
        return LevelCorrection({"a": 0.0, "b": 0.1}, rho, rho_c, regret, corrected, 16)

    assert lc(0.03, 0.0).helps  # a better pick
    assert not lc(0.0, 0.03, rho_c=0.9).helps  # a worse pick, whatever the ranking
    assert lc(0.0, 0.0005).helps  # the same pick (within 0.1%) and a better ranking
    assert not lc(0.0, 0.0, rho_c=0.5).helps and not lc(0.0, 0.0, rho_c=0.4).helps
    assert "keep --target macro" in lc(0.0, 0.0, rho_c=0.4).text()
    assert "--target weighted:a=" in lc(0.03, 0.0).text()
    assert lc(0.0, 0.0, rho_c=0.4).json()["helps"] is False


def test_nothing_to_correct_is_none():
    real = np.array([[10.0, 30.0], [30.0, 20.0], [20.0, 40.0]])
    assert level_correction(_pairs(real[:2], real[:2])) is None  # two mixtures
    one = _pairs(real[:, :1], real[:, :1], ("code",))
    assert level_correction(one) is None  # one domain: the macro is that domain
    zero = real.copy()
    zero[0, 0] = 0.0
    assert level_correction(_pairs(zero, real)) is None
    assert level_correction(_pairs(real, real)) is not None
