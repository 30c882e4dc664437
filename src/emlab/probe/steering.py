"""Steering and ablation with a direction, always beside random directions of equal norm.

    emlab probe steer --direction em.safetensors --layers 15 --alpha 2 --alpha 4 --random 20
    emlab probe steer ... --sample --suite builtin --samples-per-paraphrase 1 --judge mini          # and the judged rate

Two effects are measured for every cell (layers x alpha, or ablation):

- judge-free: the likelihood measure (`emlab.probe.likelihood`) with the hooks on - the
  change in mean log-probability per token of misaligned minus aligned GPT-4o-judged
  reference answers, steered minus unsteered (nats per token);
- judged (with `--sample`): the suite is sampled with the hooks on as its own model variant
  (`Variant.steer`, adapter id `<weights>+steer:<id>`), judged, and the misaligned rate read
  from the store - reruns generate and judge nothing.

Each real-direction effect is reported with the same effect of `n_random` random directions
of the same norm per layer (seeds 0..n-1, fixed): the percentile of |real effect| among the
|random effects|, with a bootstrap CI (questions, then references, resampled jointly for
all directions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from emlab.errors import EmlabError
from emlab.models.hooks import steered
from emlab.probe.likelihood import BUILTIN_TO_PAPER, reference_bank, score_variant, shift
from emlab.specs import SteerSpec, Variant


@dataclass(frozen=True)
class SteerEffect:
    layers: tuple[int, ...]
    alpha: float
    mode: str
    effect: float  # real direction, nats per token (or rate difference for judged effects)
    low: float
    high: float
    random_mean: float
    random_sd: float
    percentile: float  # share of random directions with a smaller |effect|, 0-100
    percentile_low: float
    percentile_high: float
    n_random: int

    def as_dict(self) -> dict:
        return asdict(self)


def _classes(questions: list[str], misaligned: list[bool]) -> list[tuple[list[int], list[int]]]:
    """(misaligned ref indices, aligned ref indices) of every question that has both."""
    out = []
    for q in sorted(set(questions)):
        bad = [i for i, (qq, m) in enumerate(zip(questions, misaligned)) if qq == q and m]
        good = [i for i, (qq, m) in enumerate(zip(questions, misaligned)) if qq == q and not m]
        if bad and good:
            out.append((bad, good))
    return out


def _point_weights(questions: list[str], misaligned: list[bool]) -> np.ndarray:
    """[n_refs] weights w such that D @ w is the mean over questions of (mean of misaligned
    refs - mean of aligned refs): `emlab.probe.likelihood.shift`'s estimate."""
    classes = _classes(questions, misaligned)
    w = np.zeros(len(questions))
    for bad, good in classes:
        w[bad] += 1.0 / (len(bad) * len(classes))
        w[good] -= 1.0 / (len(good) * len(classes))
    return w


def _boot_weights(questions: list[str], misaligned: list[bool], n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_refs] weights: row b gives the bootstrap replicate b of that estimate
    (questions resampled, then references within each class)."""
    classes = _classes(questions, misaligned)
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, len(questions)))
    for b in range(n_boot):
        for k in rng.choice(len(classes), size=len(classes)):
            for idx, sign in zip(classes[k], (1.0, -1.0)):
                draws = rng.integers(0, len(idx), len(idx))
                np.add.at(w[b], np.asarray(idx)[draws], sign / (len(idx) * len(classes)))
    return w


def percentile_ci(real: np.ndarray, randoms: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """95% bootstrap interval of the percentile of |real effect| among |random effects|.
    `real` is the per-reference score difference [n_refs], `randoms` [k, n_refs]; a
    replicate's effects are D @ w for each row w of `weights`."""
    boot_real = np.abs(weights @ real)  # [n_boot]
    boot_rand = np.abs(weights @ randoms.T)  # [n_boot, k]
    boot_pct = 100 * (boot_rand < boot_real[:, None]).mean(1)
    lo, hi = np.quantile(boot_pct, [0.025, 0.975])
    return float(lo), float(hi)


def likelihood_effects(store, model_name: str, direction: str, cells: list[tuple[tuple[int, ...], float]],
                       mode: str = "add", n_random: int = 20, questions: list[str] | None = None,
                       per_class: int = 8, seed: int = 0, n_boot: int = 1000, console=None) -> list[SteerEffect]:
    """The judge-free effect of steering (see the module docstring) for each (layers, alpha)."""
    from emlab import progress as show
    from emlab.probe.activations import load_with_adapter

    if n_random < 1:
        raise EmlabError("at least one random direction is needed to compare against (20 or more recommended)")
    refs = reference_bank(questions or list(BUILTIN_TO_PAPER.values()), per_class, seed)  # default: all
    if not refs:
        raise EmlabError("no reference answers for these questions in the public judged data")
    qids, mis = [r.question_id for r in refs], [r.misaligned for r in refs]
    weights, point = _boot_weights(qids, mis, n_boot, seed), _point_weights(qids, mis)
    model, tokenizer = load_with_adapter(model_name)
    out = []
    with show.stage(console, "steer (likelihood)", len(refs) * (1 + len(cells) * (1 + n_random))) as advance:
        base = score_variant(store, model_name, None, "base", refs, loaded=(model, tokenizer), progress=advance)
        for (layers, alpha), variants in steer_variants(direction, cells, mode, n_random).items():
            diffs = []
            for v in variants:  # the real direction, then the random ones
                with steered(model, v.steer):
                    s = score_variant(store, model_name, None, v.adapter_id, refs, loaded=(model, tokenizer),
                                      progress=advance)
                diffs.append(s - base)
            real, rand = diffs[0], np.array(diffs[1:])
            est = shift(real + base, base, qids, mis, n_boot=n_boot, seed=seed)
            rand_effects = rand @ point
            lo, hi = percentile_ci(real, rand, weights)
            pct = 100 * float((np.abs(rand_effects) < abs(est.estimate)).mean())
            out.append(SteerEffect(tuple(layers), alpha, mode, est.estimate, est.low, est.high,
                                   float(rand_effects.mean()), float(rand_effects.std()), pct, lo, hi, n_random))
    return out


def steer_variants(direction: str, cells: list[tuple[tuple[int, ...], float]], mode: str, n_random: int,
                   adapter_path: str | None = None) -> dict[tuple, list[Variant]]:
    """{(layers, alpha): [real variant, random variants...]} for sampling into the store."""
    out = {}
    for layers, alpha in cells:
        vs = []
        for r in [None, *range(n_random)]:
            spec = SteerSpec(direction=direction, layers=layers, alpha=alpha, mode=mode, random_seed=r)
            vs.append(Variant(label=spec.describe(), adapter_path=adapter_path, steer=spec))
        out[(tuple(layers), alpha)] = vs
    return out


def judged_effects(store, family: str, unsteered: Variant, grid: dict[tuple, list[Variant]], suite: str,
                   gen_hash: str, mode: str, n_boot: int = 1000, seed: int = 0) -> list[SteerEffect]:
    """Misaligned-rate change (steered minus unsteered) of the real direction and its random
    controls, from judgments already in the store; CIs by bootstrap over answers."""
    from emlab.judge.run import judged_table
    from emlab.misaligned import misaligned_flags

    table = judged_table(store, family)
    table = table[(table["suite"] == suite) & (table["gen_hash"] == gen_hash)]

    def flags(v: Variant) -> np.ndarray:
        sub = table[table["adapter"] == v.adapter_id]
        if sub.empty:
            raise EmlabError(f"no judged answers for variant {v.label} ({v.adapter_id}) in the store")
        return misaligned_flags(sub["aligned"], sub["coherent"]).astype(float)

    base = flags(unsteered)
    rng = np.random.default_rng(seed)
    out = []
    for (layers, alpha), variants in grid.items():
        rates = [flags(v) for v in variants]
        effects = np.array([r.mean() - base.mean() for r in rates])
        boots = np.array([[rng.choice(r, len(r)).mean() - rng.choice(base, len(base)).mean() for r in rates]
                          for _ in range(n_boot)])
        lo, hi = np.quantile(boots[:, 0], [0.025, 0.975])
        pct_boot = 100 * (np.abs(boots[:, 1:]) < np.abs(boots[:, :1])).mean(1)
        plo, phi = np.quantile(pct_boot, [0.025, 0.975])
        rand = effects[1:]
        out.append(SteerEffect(tuple(layers), alpha, mode, float(effects[0]), float(lo), float(hi),
                               float(rand.mean()), float(rand.std()),
                               100 * float((np.abs(rand) < abs(effects[0])).mean()), float(plo), float(phi),
                               len(rand)))
    return out
