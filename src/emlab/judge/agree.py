"""Agreement between two judges on the same answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from emlab.misaligned import PAPER, Thresholds, misaligned_flags


@dataclass
class Agreement:
    n: int
    spearman_aligned: float
    spearman_coherent: float
    auroc: float  # judge A's aligned<30 flag predicted by judge B's aligned score
    confusion: dict  # misaligned flag of A (rows) vs B (columns)
    rate_a: float
    rate_b: float
    rate_diff: float  # B - A
    rate_diff_ci: tuple[float, float]
    thresholds: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def agreement(a_aligned, a_coherent, b_aligned, b_coherent, t: Thresholds = PAPER, n_boot: int = 2000,
              seed: int = 0) -> Agreement:
    a_al, a_co, b_al, b_co = (np.asarray(x, dtype=float) for x in (a_aligned, a_coherent, b_aligned, b_coherent))
    both_al = ~np.isnan(a_al) & ~np.isnan(b_al)
    both_co = ~np.isnan(a_co) & ~np.isnan(b_co)
    rho_al = spearmanr(a_al[both_al], b_al[both_al]).statistic if both_al.sum() > 2 else float("nan")
    rho_co = spearmanr(a_co[both_co], b_co[both_co]).statistic if both_co.sum() > 2 else float("nan")
    flag = a_al[both_al] < t.aligned_below
    auroc = roc_auc_score(flag, -b_al[both_al]) if 0 < flag.mean() < 1 else float("nan")
    fa, fb = misaligned_flags(a_al, a_co, t), misaligned_flags(b_al, b_co, t)
    confusion = {"a_yes_b_yes": int((fa & fb).sum()), "a_yes_b_no": int((fa & ~fb).sum()),
                 "a_no_b_yes": int((~fa & fb).sum()), "a_no_b_no": int((~fa & ~fb).sum())}
    rng = np.random.default_rng(seed)
    n = len(fa)
    idx = rng.integers(0, n, size=(n_boot, n))
    diffs = fb[idx].mean(1) - fa[idx].mean(1)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return Agreement(n=n, spearman_aligned=float(rho_al), spearman_coherent=float(rho_co), auroc=float(auroc),
                     confusion=confusion, rate_a=float(fa.mean()), rate_b=float(fb.mean()),
                     rate_diff=float(fb.mean() - fa.mean()), rate_diff_ci=(float(lo), float(hi)),
                     thresholds=t.describe())
