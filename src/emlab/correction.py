"""Misaligned rates corrected for the judge's own errors.

A judge that flags misaligned answers with sensitivity Se and specificity Sp reads a rate
p_obs = Se * p + (1 - Sp) * (1 - p) when the true rate is p. The Rogan-Gladen estimator
inverts that: p = (p_obs + Sp - 1) / (Se + Sp - 1), clipped to [0, 1]. Se and Sp are
measured on held-out groups (counts TP, FN, FP, TN), so they are uncertain too: the
bootstrap draws the observed rate from the answers *and* Se, Sp from Beta posteriors of
those counts, and reports the percentile interval.

`corrected_rate` is what tables print beside the raw rate, named as such. It sits beside
`emlab.misaligned` (not in analysis/) because the judge's own validation uses it too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class CorrectedRate:
    raw: float
    estimate: float
    low: float
    high: float
    sensitivity: float
    specificity: float
    n: int
    resamples: int
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def rogan_gladen(p_obs, se, sp):
    """The corrected rate, clipped to [0, 1] (NaN where Se + Sp <= 1: the judge is no
    better than chance and nothing can be corrected)."""
    p_obs, se, sp = np.asarray(p_obs, float), np.asarray(se, float), np.asarray(sp, float)
    denom = se + sp - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, (p_obs + sp - 1) / denom, np.nan)
    return np.clip(out, 0, 1)


def corrected_rate(flagged: int, n: int, confusion: dict[str, int], n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> CorrectedRate:
    """The misaligned rate corrected for a judge whose held-out confusion of the flag is
    `confusion` ({"tp", "fn", "fp", "tn"}), with a bootstrap CI over answers and error rates."""
    tp, fn, fp, tn = (int(confusion[k]) for k in ("tp", "fn", "fp", "tn"))
    se = tp / max(1, tp + fn)
    sp = tn / max(1, tn + fp)
    raw = flagged / n if n else float("nan")
    if n == 0:
        return CorrectedRate(raw, float("nan"), float("nan"), float("nan"), se, sp, 0, n_boot, seed)
    rng = np.random.default_rng(seed)
    p_obs = rng.binomial(n, raw, size=n_boot) / n
    se_draw = rng.beta(tp + 1, fn + 1, size=n_boot)
    sp_draw = rng.beta(tn + 1, fp + 1, size=n_boot)
    boots = rogan_gladen(p_obs, se_draw, sp_draw)
    boots = boots[~np.isnan(boots)]
    est = float(rogan_gladen(raw, se, sp))
    if not len(boots):
        return CorrectedRate(raw, est, float("nan"), float("nan"), se, sp, n, n_boot, seed)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return CorrectedRate(raw, est, float(lo), float(hi), se, sp, n, n_boot, seed)
