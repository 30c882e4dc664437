"""Seeds as replicates: is a condition-minus-control difference there in every seed?

A single training seed can show a difference that the next seed does not, so a claim is
made from the spread across seeds. For each seed the difference of means between the
condition's and the control's values (misaligned flags, trait log-probabilities, ...) gets a
bootstrap CI from that seed's rows; across seeds a cluster bootstrap (seeds resampled, then
rows within each drawn seed) gives the interval a headline uses. The verdict "consistent
across seeds" needs every seed's own interval above zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# z(0.975) + z(0.80): a true difference this many standard errors from zero is found with
# 80% power by a two-sided 5% test.
_DETECT_Z = 1.959964 + 0.841621


@dataclass(frozen=True)
class SeedDifference:
    seed: int
    difference: float
    low: float
    high: float
    n_condition: int
    n_control: int


@dataclass(frozen=True)
class SeedConsistency:
    difference: float  # mean over seeds of each seed's difference
    low: float  # cluster-bootstrap CI over seeds (then rows)
    high: float
    spread: float  # standard deviation of the per-seed differences
    detectable: float  # the smallest true difference found with 80% power at this run's size
    consistent: bool  # every seed's own CI lies above zero
    level: float
    per_seed: list[SeedDifference] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def verdict(self) -> str:
        n = len(self.per_seed)
        above = sum(s.low > 0 for s in self.per_seed)
        if self.consistent:
            return f"consistent across seeds: all {n} seeds' {self.level:.0%} intervals lie above zero"
        return (f"not consistent across seeds: {above} of {n} seeds' {self.level:.0%} intervals lie above zero "
                f"(the smallest difference this run detects with 80% power: {self.detectable:.3g})")


def _draw(rng, a: np.ndarray, b: np.ndarray, paired: bool) -> float:
    if paired:
        idx = rng.integers(0, len(a), len(a))
        return float(a[idx].mean() - b[idx].mean())
    return float(a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean())


def seed_consistency(groups: dict[int, tuple], paired: bool = False, n_resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> SeedConsistency:
    """`groups`: {seed: (condition values, control values)}; `paired`: the two arrays of a
    seed are aligned (the same questions), so rows are resampled together."""
    if not groups:
        raise ValueError("no seeds to compare")
    data = {s: (np.asarray(a, float), np.asarray(b, float)) for s, (a, b) in groups.items()}
    for s, (a, b) in data.items():
        if not len(a) or not len(b) or (paired and len(a) != len(b)):
            raise ValueError(f"seed {s}: needs values for both sides" + (" of equal length" if paired else ""))
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2
    per_seed = []
    for s, (a, b) in data.items():
        boots = [_draw(rng, a, b, paired) for _ in range(n_resamples)]
        lo, hi = np.quantile(boots, [tail, 1 - tail])
        per_seed.append(SeedDifference(int(s), float(a.mean() - b.mean()), float(lo), float(hi), len(a), len(b)))
    seeds = list(data)
    cluster = np.empty(n_resamples)
    for r in range(n_resamples):
        cluster[r] = np.mean([_draw(rng, *data[seeds[i]], paired) for i in rng.integers(0, len(seeds), len(seeds))])
    lo, hi = np.quantile(cluster, [tail, 1 - tail])
    diffs = np.array([p.difference for p in per_seed])
    return SeedConsistency(float(diffs.mean()), float(lo), float(hi),
                           float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0,
                           float(_DETECT_Z * cluster.std(ddof=1)), all(p.low > 0 for p in per_seed), level,
                           per_seed)
