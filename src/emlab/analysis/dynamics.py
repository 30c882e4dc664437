"""The report's training-dynamics section: every measure against the training step.

One row per (condition, seed, step): the misaligned rate with its CI (first judge), the
judge-free likelihood shift with its CI, the insecure-code rate with its CI (when the
experiment evaluates code), the training loss, the LoRA B/A cosine to the final adapter and
the answers' projection on a direction. The untouched model is step 0 of every curve.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from emlab.analysis import figures
from emlab.analysis.metrics import insecure_code_rates, summarize
from emlab.misaligned import Thresholds


def judged_points(rec, store) -> pd.DataFrame:
    """The first judge's judgments of every variant, checkpoints included (empty without a judge)."""
    from emlab.analysis.tables import judged_frame

    return judged_frame(rec, store, rec.judges[0].family, checkpoints=True) if rec.judges else pd.DataFrame()


def dynamics_table(rec, store, t: Thresholds, judged: pd.DataFrame) -> pd.DataFrame:
    """One row per curve point; `judged` is `judged_points(rec, store)`."""
    points = pd.DataFrame(rec.dynamics["points"])
    base = points[points["step"] == 0]
    trained = points[points["step"] > 0]
    # The untouched model is step 0 of every trained condition's curve.
    rows = [trained] + [base.assign(condition=c, seed=s) for c, s in
                        trained[["condition", "seed"]].drop_duplicates().itertuples(index=False)]
    df = pd.concat(rows, ignore_index=True)
    for col in ("rate", "rate_low", "rate_high", "likelihood", "likelihood_low", "likelihood_high",
                "insecure", "insecure_low", "insecure_high"):
        df[col] = np.nan
    if not judged.empty:
        summary = summarize(judged.assign(adapter_id=judged["adapter"]), ["adapter_id"], t).set_index("adapter_id")
        for col, src in (("rate", "misaligned_rate"), ("rate_low", "ci_low"), ("rate_high", "ci_high")):
            df[col] = df["adapter_id"].map(summary[src])
    shifts = (rec.likelihood or {}).get("shifts", {})
    for col, key in (("likelihood", "estimate"), ("likelihood_low", "low"), ("likelihood_high", "high")):
        df[col] = [0.0 if a == "base" else shifts.get(label, {}).get(key, np.nan)
                   for a, label in zip(df["adapter_id"], df["label"])]
    if rec.codeeval is not None:
        code = rec.codeeval
        where = {a: {"adapter": a, "suite": code.suite, "gen_hash": code.gen_hash, "model": rec.config["model"]}
                 for a in df["adapter_id"].unique()}
        rates, _ = insecure_code_rates(store, where, code.judge_family)
        rates = rates.set_index("condition")
        for col, src in (("insecure", "rate"), ("insecure_low", "ci_low"), ("insecure_high", "ci_high")):
            df[col] = df["adapter_id"].map(rates[src])
    return df.sort_values(["condition", "seed", "step"], na_position="first").reset_index(drop=True)


def early_stops(df: pd.DataFrame) -> list[dict]:
    """The early-stopping suggestion per trained curve and EM measure."""
    from emlab.probe.dynamics import early_stop

    out = []
    for (cond, seed), g in df.groupby(["condition", "seed"], dropna=False, sort=False):
        if (g["step"] > 0).sum() < 1:
            continue
        base = g[g["step"] == 0]
        for measure, col, low in (("the misaligned rate", "rate", "rate_low"),
                                  ("the likelihood shift", "likelihood", "likelihood_low")):
            if g[col].notna().sum() < 2:
                continue
            baseline = float(base[col].iloc[0]) if len(base) and pd.notna(base[col].iloc[0]) else 0.0
            out.append({"condition": cond, "seed": seed, **early_stop(g.dropna(subset=[col]), measure, low, baseline)})
    return out


def paired_differences(rec, df: pd.DataFrame, judged: pd.DataFrame, t: Thresholds) -> pd.DataFrame:
    """At every step two trained conditions share (same seed): the first condition minus each
    other one - likelihood shift (paired bootstrap CI) and misaligned rate (bootstrap CI,
    permutation p) - the insecure-minus-control curve."""
    from emlab.analysis.stats import compare as compare_rates
    from emlab.misaligned import misaligned_flags
    from emlab.probe.likelihood import compare

    trained = df[df["step"] > 0]
    conditions = list(dict.fromkeys(trained["condition"]))
    rows = []
    for other in conditions[1:]:
        a_rows, b_rows = trained[trained["condition"] == conditions[0]], trained[trained["condition"] == other]
        for a in a_rows.itertuples():
            b = b_rows[(b_rows["step"] == a.step) & (b_rows["seed"] == a.seed)]
            if b.empty:
                continue
            b = b.iloc[0]
            row = {"step": a.step, "seed": a.seed, "comparison": f"{conditions[0]} - {other}"}
            if rec.likelihood and a.label in rec.likelihood["scores"] and b["label"] in rec.likelihood["scores"]:
                c = compare(rec.likelihood, a.label, b["label"], seed=rec.likelihood.get("seed", 0))
                row.update(likelihood=c.estimate, likelihood_low=c.low, likelihood_high=c.high)
            if not judged.empty:
                fa, fb = (misaligned_flags(g["aligned"], g["coherent"], t) for g in
                          (judged[judged["adapter"] == a.adapter_id], judged[judged["adapter"] == b["adapter_id"]]))
                if len(fa) and len(fb):
                    c = compare_rates(fb, fa, n_resamples=2000)  # rate(a) - rate(b)
                    row.update(rate=c.difference, rate_low=c.low, rate_high=c.high, rate_p=c.p_value)
            rows.append(row)
    return pd.DataFrame(rows)


def _ci(x, lo, hi, pct: bool) -> str:
    if pd.isna(x):
        return "–"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:+.4f}")
    return f"{f(x)} [{f(lo)}, {f(hi)}]"


def dynamics_section(rec, store, t: Thresholds, img) -> str:
    judged = judged_points(rec, store)  # read once: the table and the differences both use it
    df = dynamics_table(rec, store, t, judged)
    shown = pd.DataFrame({
        "condition": df["condition"], "seed": df["seed"], "step": df["step"],
        "misaligned rate [95% CI]": [_ci(r.rate, r.rate_low, r.rate_high, True) for r in df.itertuples()],
        "likelihood shift vs base": [_ci(r.likelihood, r.likelihood_low, r.likelihood_high, False)
                                     for r in df.itertuples()],
        "insecure code": [_ci(r.insecure, r.insecure_low, r.insecure_high, True) for r in df.itertuples()],
        "train loss": df["train_loss"].map(lambda x: "–" if pd.isna(x) else f"{x:.3f}"),
        "cos(B, final B)": df["b_cosine_to_final"].map(lambda x: "–" if pd.isna(x) else f"{x:.3f}"),
    })
    if "projection" in df:
        shown["projection"] = [f"{p:+.3f} ± {s:.3f}" for p, s in zip(df["projection"], df["projection_se"])]
    stops = early_stops(df)
    diffs = paired_differences(rec, df, judged, t)
    diff_html = ""
    if len(diffs):
        shown_diffs = pd.DataFrame({
            "comparison": diffs["comparison"], "seed": diffs["seed"], "step": diffs["step"],
            "likelihood shift difference": [_ci(r.get("likelihood"), r.get("likelihood_low"), r.get("likelihood_high"),
                                                False) for r in diffs.to_dict("records")],
            "misaligned rate difference": [_ci(r.get("rate"), r.get("rate_low"), r.get("rate_high"), True)
                                           + (f" (p={r['rate_p']:.3f})" if pd.notna(r.get("rate_p")) else "")
                                           for r in diffs.to_dict("records")]})
        diff_html = ("<h3>Condition minus control at each step</h3>" + shown_diffs.to_html(index=False)
                     + '<p class="caption">Likelihood: paired bootstrap over questions then references; rate: '
                       "bootstrap CI over answers and a two-sided permutation p-value.</p>")
    items = "".join(f"<li>{html.escape(str(s['condition']))}: {html.escape(s['text'])}</li>" for s in stops)
    proj = rec.dynamics.get("projection")
    proj_note = (f" Projection: mean over each variant's own answers of the answer-token activation at layer "
                 f"{proj['layer']} on the unit direction from {html.escape(proj['direction'])}.") if proj else ""
    return ("<h2>Training dynamics (checkpoint sweep)</h2>" + shown.to_html(index=False)
            + img(figures.dynamics(df, t), "measures against training step")
            + f'<p class="caption">Step 0 is the untouched model. Misaligned rate: first judge, {html.escape(t.describe())}, '
              "Wilson 95% CIs; likelihood shift: judge-free, nats per token vs the untouched model; insecure code: "
              "static detector on held-out tasks; cos(B, final B): all LoRA B matrices flattened, against the final "
              f"adapter's.{proj_note}</p>" + diff_html
            + "<h3>Early stopping (a suggestion read off these curves, not a guarantee)</h3>"
            + (f"<ul>{items}</ul>" if items else "<p>Too few points for a suggestion.</p>"))
