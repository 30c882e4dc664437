"""Several judges on the same answers (`emlab judge compare`).

Per judge: the misaligned rate with a Wilson CI, and - where a gold judge is named (the
labelled set, or the public GPT-4o scores of an imported file) - the AUROC of its reading
against gold's misaligned flag. Between every two judges: Cohen's kappa of the flag and
Spearman of the aligned and coherent scores, on the answers both scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from emlab.errors import EmlabError
from emlab.misaligned import PAPER, Thresholds, misaligned_flags


def evidence(aligned, coherent, p_misaligned=None) -> np.ndarray:
    """A continuous misaligned score for AUROC: P(misaligned) where the judge gives it, else
    min(100 - aligned, coherent) (high only when the answer is both low-aligned and coherent);
    unscored answers rank lowest."""
    if p_misaligned is not None and not np.all(np.isnan(np.asarray(p_misaligned, float))):
        return np.nan_to_num(np.asarray(p_misaligned, float), nan=-1.0)
    a, c = np.asarray(aligned, float), np.asarray(coherent, float)
    return np.nan_to_num(np.minimum(100 - a, c), nan=-1.0)


@dataclass
class Comparison:
    judges: list[str]
    n: int
    rates: pd.DataFrame  # judge, n, misaligned, rate, ci_low, ci_high, auroc_vs_gold
    pairs: pd.DataFrame  # judge_a, judge_b, n, kappa, spearman_aligned, spearman_coherent
    gold: str | None
    thresholds: str


def _judged(wide: pd.DataFrame, j: str) -> np.ndarray:
    judged = wide[f"aligned:{j}"].notna().to_numpy() | wide[f"coherent:{j}"].notna().to_numpy()
    if f"label:{j}" in wide:
        judged |= wide[f"label:{j}"].notna().to_numpy()
    return judged


def compare(wide: pd.DataFrame, judges: list[str], gold: str | None = None, t: Thresholds = PAPER) -> Comparison:
    """`wide`: one row per answer with columns `aligned:<judge>`, `coherent:<judge>` (and
    optionally `p_misaligned:<judge>`) for every judge in `judges`."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    from emlab.analysis.stats import wilson

    if gold is not None and gold not in judges:
        raise EmlabError(f"gold judge '{gold}' is not among the judges compared ({', '.join(judges)})")
    flags = {j: misaligned_flags(wide[f"aligned:{j}"], wide[f"coherent:{j}"], t) for j in judges}
    # The same answers under every judge: those each of them judged - a score or a label
    # (CODE, REFUSAL, UNPARSEABLE: in the denominator, never misaligned); an answer a judge
    # left without either (a peer file's empty cells) is left out for all.
    common = np.logical_and.reduce([_judged(wide, j) for j in judges])
    rows = []
    for j in judges:
        k, n = int(flags[j][common].sum()), int(common.sum())
        interval = wilson(k, n)
        lo, hi = interval.low, interval.high
        auroc = float("nan")
        if gold is not None and j != gold:
            truth = flags[gold][common]
            if 0 < truth.sum() < len(truth):
                p = wide.get(f"p_misaligned:{j}")
                auroc = float(roc_auc_score(truth, evidence(wide[f"aligned:{j}"], wide[f"coherent:{j}"],
                                                            None if p is None else p)[common]))
        rows.append({"judge": j, "n": n, "misaligned": k, "rate": k / n if n else float("nan"), "ci_low": lo,
                     "ci_high": hi, "auroc_vs_gold": auroc})
    pairs = []
    for i, a in enumerate(judges):
        for b in judges[i + 1:]:
            fa, fb = flags[a][common], flags[b][common]
            kappa = float(cohen_kappa_score(fa, fb)) if common.sum() > 1 and (fa.any() or fb.any()) and \
                not (fa.all() and fb.all()) else float("nan")
            rho = {}
            for m in ("aligned", "coherent"):
                x, y = wide[f"{m}:{a}"].to_numpy(float), wide[f"{m}:{b}"].to_numpy(float)
                ok = ~np.isnan(x) & ~np.isnan(y)
                rho[m] = float(spearmanr(x[ok], y[ok]).statistic) if ok.sum() > 2 else float("nan")
            pairs.append({"judge_a": a, "judge_b": b, "n": int(common.sum()), "kappa": kappa,
                          "spearman_aligned": rho["aligned"], "spearman_coherent": rho["coherent"]})
    return Comparison(judges, int(common.sum()), pd.DataFrame(rows), pd.DataFrame(pairs), gold, t.describe())


def wide_table(store, families: dict[str, str], where: dict | None = None) -> pd.DataFrame:
    """One row per sample that every one of `families` ({short name: judge family}) judged -
    the same answers under each judge - restricted to samples matching `where` (e.g.
    {"gen_hash": ...})."""
    from emlab.judge.run import judged_table

    out = None
    for name, family in families.items():
        t = judged_table(store, family)
        if t.empty:
            raise EmlabError(f"judge '{name}' ({family}) judged nothing in this store")
        for k, v in (where or {}).items():
            t = t[t[k] == v]
        cols = {"aligned": f"aligned:{name}", "coherent": f"coherent:{name}"}
        if "p_misaligned" in t.columns:
            cols["p_misaligned"] = f"p_misaligned:{name}"
        if "aligned_label" in t.columns:
            cols["aligned_label"] = f"label:{name}"
        t = t[["sample_id", "question_id", "answer", *cols]].rename(columns=cols)
        out = t if out is None else out.merge(t.drop(columns=["question_id", "answer"]), on="sample_id", how="inner")
    if out is None or out.empty:
        raise EmlabError("no answers judged by every one of the judges compared")
    return out


def figure(c: Comparison):
    """Rates per judge with CIs, and the kappa of every pair."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    r = c.rates
    y = np.arange(len(r))
    left.errorbar(100 * r["rate"], y, xerr=[100 * (r["rate"] - r["ci_low"]), 100 * (r["ci_high"] - r["rate"])],
                  fmt="o", color="#b2182b", capsize=3)
    left.set_yticks(y, r["judge"])
    left.invert_yaxis()
    left.set_xlabel("misaligned (%), 95% Wilson CI")
    left.set_title(f"{c.n} answers, {c.thresholds}", fontsize=9)
    names = c.judges
    m = np.full((len(names), len(names)), np.nan)
    for p in c.pairs.itertuples():
        i, j = names.index(p.judge_a), names.index(p.judge_b)
        m[i, j] = m[j, i] = p.kappa
    np.fill_diagonal(m, 1.0)
    im = right.imshow(m, vmin=-0.2, vmax=1, cmap="viridis")
    right.set_xticks(range(len(names)), names, rotation=30, ha="right")
    right.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if not np.isnan(m[i, j]):
                right.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k",
                           fontsize=8)
    right.set_title("Cohen's kappa of the misaligned flag", fontsize=9)
    fig.colorbar(im, ax=right, fraction=0.046)
    fig.tight_layout()
    return fig
