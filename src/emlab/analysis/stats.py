"""Confidence intervals and tests for misalignment rates.

- `wilson`: Wilson score interval for one proportion;
- `bootstrap_ci`: percentile bootstrap over answers;
- `hierarchical_bootstrap_ci`: resample finetuning seeds, then answers within each seed;
- `compare`: difference of two conditions' rates with a bootstrap CI and a permutation p-value.
Every function takes its seed and resample count and reports them back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    method: str
    n: int
    resamples: int = 0
    seed: int | None = None
    level: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def wilson(k: int, n: int, level: float = 0.95) -> Interval:
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "wilson", 0, level=level)
    z = norm.ppf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Interval(p, low, high, "wilson", n, level=level)


def bootstrap_ci(flags, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    x = np.asarray(flags, dtype=float)
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "bootstrap", 0, n_resamples, seed, level)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(x.mean()), float(lo), float(hi), "bootstrap", len(x), n_resamples, seed, level)


def hierarchical_bootstrap_ci(groups: list, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """`groups`: one array of 0/1 flags per finetuning seed. Each resample draws seeds with
    replacement, then answers with replacement within each drawn seed."""
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    n = sum(len(a) for a in arrays)
    if not arrays:
        return Interval(float("nan"), float("nan"), float("nan"), "hierarchical-bootstrap", 0, n_resamples, seed, level)
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([a.mean() for a in arrays]))
    stats = np.empty(n_resamples)
    for r in range(n_resamples):
        picked = rng.integers(0, len(arrays), size=len(arrays))
        stats[r] = np.mean([arrays[i][rng.integers(0, len(arrays[i]), size=len(arrays[i]))].mean() for i in picked])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(lo), float(hi), "hierarchical-bootstrap", n, n_resamples, seed, level)


@dataclass(frozen=True)
class Comparison:
    difference: float  # rate(b) - rate(a)
    low: float
    high: float
    p_value: float  # two-sided permutation test
    n_a: int
    n_b: int
    resamples: int
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def compare(a_flags, b_flags, n_resamples: int = 5000, seed: int = 0, level: float = 0.95) -> Comparison:
    a, b = np.asarray(a_flags, dtype=float), np.asarray(b_flags, dtype=float)
    rng = np.random.default_rng(seed)
    diff = b.mean() - a.mean()
    boots = (b[rng.integers(0, len(b), size=(n_resamples, len(b)))].mean(1)
             - a[rng.integers(0, len(a), size=(n_resamples, len(a)))].mean(1))
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    pooled = np.concatenate([a, b])
    perm = np.empty(n_resamples)
    for r in range(n_resamples):
        rng.shuffle(pooled)
        perm[r] = pooled[len(a):].mean() - pooled[:len(a)].mean()
    p = (np.sum(np.abs(perm) >= abs(diff) - 1e-12) + 1) / (n_resamples + 1)
    return Comparison(float(diff), float(lo), float(hi), float(p), len(a), len(b), n_resamples, seed)


def pct(x) -> str:
    """A rate as a percentage with one decimal; a dash for a missing one."""
    import pandas as pd

    return "–" if pd.isna(x) else f"{100 * x:.1f}%"
