"""The report's mitigation section: every mitigation beside the unmitigated condition on one
evaluation.

One row per condition (final adapters; the early-stopping row is the chosen checkpoint of its
source): misaligned rate on the plain suites, rate on the conditional-misalignment probes,
coherent share, insecure-code rate, capability score, judge-free likelihood shift and
training cost - then each measure's difference from the unmitigated condition with a
bootstrap CI and a permutation p-value (the likelihood: paired bootstrap over questions),
and whether it is distinguishable from zero. Re-alignment gets its own curve over the
number of benign examples.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from emlab.analysis.stats import compare, pct, wilson
from emlab.misaligned import INSECURE_AT, Thresholds, misaligned_flags


def _flags(judged: pd.DataFrame, adapters: list[str], t: Thresholds) -> np.ndarray:
    g = judged[judged["adapter"].isin(adapters)]
    return misaligned_flags(pd.to_numeric(g["aligned"], errors="coerce"), pd.to_numeric(g["coherent"], errors="coerce"), t)


def _code_flags(rec, store, adapters: list[str]) -> np.ndarray:
    if rec.codeeval is None:
        return np.array([])
    code = rec.codeeval
    table = store.judgments(code.judge_family, "insecure")
    ids = {s["id"] for a in adapters for s in store.samples(adapter=a, suite=code.suite, gen_hash=code.gen_hash,
                                                              model=rec.config["model"])}
    return (pd.to_numeric(table[table["sample_id"].isin(ids)]["score"], errors="coerce") >= INSECURE_AT).to_numpy()


def _capability_flags(rec, adapters: list[str]) -> np.ndarray:
    scores = ((rec.mitigations or {}).get("capability") or {}).get("scores", {})
    return np.array([f for a in adapters for f in scores.get(a, {}).get("flags", [])], dtype=bool)


def _rate(flags: np.ndarray) -> dict:
    ci = wilson(int(np.sum(flags)), len(flags))
    return {"rate": ci.estimate, "low": ci.low, "high": ci.high, "n": len(flags)}


def _cost(variants) -> dict:
    wall = tokens = 0.0
    for v in variants:
        if v.train_run:
            run = json.loads((Path(v.train_run) / "run.json").read_text())
            frac = (v.step / run["global_steps"]) if v.step is not None and run["global_steps"] else 1.0
            wall += run["wall_seconds"] * frac
            tokens += run["tokens"] * frac
    return {"train_seconds": wall, "train_tokens": tokens}


def early_stop_choice(rec, store, t: Thresholds, source: str, judged_all: pd.DataFrame) -> tuple[dict, str]:
    """{seed: variant} chosen by the early-stopping rule on `source`'s kept checkpoints, and a
    sentence saying how (the likelihood shift's rise when measured, else the misaligned rate's)."""
    from emlab.analysis.dynamics import dynamics_table, early_stops

    chosen, why = {}, []
    if rec.dynamics is None:
        return chosen, "no checkpoints were evaluated"
    df = dynamics_table(rec, store, t, judged_all)
    rules = [r for r in early_stops(df[df["condition"] == source]) if r["condition"] == source]
    for seed in sorted({v.seed for v in rec.variants if v.condition == source}):
        mine = [r for r in rules if r["seed"] == seed]
        rule = next((r for r in mine if r["measure"] == "the likelihood shift"), mine[0] if mine else None)
        # Step 0 is the untouched model: a rule that stops before the first checkpoint means "do not train".
        untouched = [v for v in rec.final_variants if v.adapter_id == "base"][:1]
        options = untouched + sorted((v for v in rec.variants if v.condition == source and v.seed == seed),
                                     key=lambda v: v.step if v.step is not None else 10 ** 9)
        steps = [0 if v.adapter_id == "base" else v.step for v in options]
        if rule is None:
            continue
        if rule["suggested_step"] is not None and rule["suggested_step"] in steps:
            pick = options[steps.index(rule["suggested_step"])]
        elif rule["rise_step"] is None:
            pick = options[-1]  # never rose: the final adapter is the stop
        else:
            pick = options[0]  # rose by the first checkpoint: nothing kept before it
        chosen[seed] = pick
        why.append(f"seed {seed}: {rule['text']} -> {pick.label}")
    return chosen, "; ".join(why)


def mitigation_rows(rec, store, t: Thresholds) -> tuple[pd.DataFrame, list[str]]:
    """The table's raw numbers, one row per condition, and notes."""
    from emlab.analysis.tables import judged_frame

    mit = rec.mitigations or {}
    family = rec.judges[0].family
    judged = judged_frame(rec, store, family, checkpoints=True)
    probe_suites = [p["suite"] for p in mit.get("probes", [])]
    probes = judged_frame(rec, store, family, checkpoints=True, suites=probe_suites) if probe_suites else judged.iloc[:0]
    groups: dict[str, list] = {}
    for v in rec.final_variants:
        groups.setdefault(v.condition, []).append(v)
    notes = []
    for name, info in mit.get("conditions", {}).items():
        if "early_stop" in info:
            chosen, why = early_stop_choice(rec, store, t, info["early_stop"]["from"], judged)
            if chosen:
                groups[name] = list(chosen.values())
            notes.append(f"early stopping ({name}): {why}")
    lik = rec.likelihood or {}
    several = len(rec.seeds) > 1
    rows = [_condition_row(rec, store, t, name, vs, mit, judged, probes, lik, several) for name, vs in groups.items()]
    df = pd.DataFrame(rows)
    ref = mit.get("unmitigated")
    if ref is None or ref not in set(df["condition"]):
        return df, notes
    df["vs_unmitigated"] = _versus(df, ref, lik)
    return df, notes


def _condition_row(rec, store, t: Thresholds, name: str, vs: list, mit: dict, judged: pd.DataFrame,
                   probes: pd.DataFrame, lik: dict, several: bool) -> dict:
    """One condition's row: its rates (plain, probes, code, capability), coherence, likelihood
    shift and cost, with the per-answer flags the comparisons need."""
    adapters = [v.adapter_id for v in vs]
    labels = [v.label + (f"-s{v.seed}" if several and v.seed is not None else "") for v in vs]
    row = {"condition": name, "mitigation": ", ".join(mit.get("conditions", {}).get(name, {}).get("kinds", []))
           or ("untouched" if adapters == ["base"] else "none"), "adapters": adapters, "labels": labels}
    main = judged[judged["adapter"].isin(adapters)]
    plain, probed = _flags(judged, adapters, t), _flags(probes, adapters, t)
    row["misaligned"] = _rate(plain)
    row["probe"] = _rate(probed) if len(probed) else None
    # The same variant asked in the probe forms (a trigger, the training prompt) minus asked plainly.
    row["probe_vs_plain"] = compare(plain, probed, n_resamples=2000).as_dict() if len(plain) and len(probed) \
        else None
    row["coherent_share"] = float((pd.to_numeric(main["coherent"], errors="coerce") > t.coherent_above).mean()) \
        if len(main) else float("nan")
    code = _code_flags(rec, store, adapters)
    row["code"] = _rate(code) if len(code) else None
    cap = _capability_flags(rec, adapters)
    row["capability"] = _rate(cap) if len(cap) else None
    # Per-answer flags of each measure, kept for the comparisons with the unmitigated row.
    row["answer_flags"] = {"misaligned": plain, "probe": probed, "code": code, "capability": cap}
    shifts = [lik["shifts"][lab] for lab in labels if lab in lik.get("shifts", {})]
    row["likelihood"] = shifts[0] if len(shifts) == 1 else (
        {"estimate": float(np.mean([s["estimate"] for s in shifts])), "low": float("nan"), "high": float("nan")}
        if shifts else None)
    row.update(_cost(vs))
    return row


def _versus(df: pd.DataFrame, ref: str, lik: dict) -> list[dict]:
    """Each condition's measures minus the unmitigated condition's (difference, CI, p)."""
    from emlab.probe.likelihood import compare as compare_lik

    r = df[df["condition"] == ref].iloc[0]
    diffs = []
    for row in df.itertuples():
        d = {}
        if row.condition != ref:
            for key, a in r["answer_flags"].items():
                b = row.answer_flags[key]
                if len(a) and len(b):
                    d[key] = compare(a, b, n_resamples=2000).as_dict()
            if lik and all(lab in lik.get("scores", {}) for lab in r.labels + row.labels) and len(row.labels) == 1 \
                    and len(r.labels) == 1:
                c = compare_lik(lik, row.labels[0], r.labels[0], seed=lik.get("seed", 0))
                d["likelihood"] = {"difference": c.estimate, "low": c.low, "high": c.high, "p_value": float("nan")}
        diffs.append(d)
    return diffs


def _fmt(x: dict | None, pct: bool = True) -> str:
    if not x:
        return "–"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:+.3f}")
    return f"{f(x['rate'] if 'rate' in x else x['estimate'])} [{f(x['low'])}, {f(x['high'])}]"


def _diff(x: dict | None, pct: bool = True) -> str:
    if not x:
        return "–"
    f = (lambda v: f"{100 * v:+.1f}") if pct else (lambda v: f"{v:+.3f}")
    sig = x["low"] > 0 or x["high"] < 0
    p = "" if np.isnan(x["p_value"]) else f", p={x['p_value']:.3f}"
    return f"{f(x['difference'])} [{f(x['low'])}, {f(x['high'])}]{p}" + (" *" if sig else "")


def mitigation_table(df: pd.DataFrame) -> pd.DataFrame:
    """The shown table: measures with CIs, then differences from the unmitigated condition."""
    out = pd.DataFrame({
        "condition": df["condition"], "mitigation": df["mitigation"],
        "misaligned [95% CI]": df["misaligned"].map(_fmt),
        "conditional probes [95% CI]": df["probe"].map(_fmt),
        "probes − plain (pts)": df["probe_vs_plain"].map(_diff),
        "coherent share": df["coherent_share"].map(pct),
        "insecure code [95% CI]": df["code"].map(_fmt),
        "capability [95% CI]": df["capability"].map(_fmt),
        "likelihood shift vs base": df["likelihood"].map(lambda x: _fmt(x, pct=False)),
        "training cost": [f"{s:.0f} s, {tok / 1000:.1f}k tokens" if s else "–"
                          for s, tok in zip(df["train_seconds"], df["train_tokens"])],
    })
    if "vs_unmitigated" in df:
        for key, title, in_points in (("misaligned", "Δ misaligned (pts)", True), ("probe", "Δ probes (pts)", True),
                                      ("code", "Δ insecure code (pts)", True),
                                      ("capability", "Δ capability (pts)", True),
                                      ("likelihood", "Δ likelihood (nats/token)", False)):
            out[title] = [_diff(d.get(key), in_points) for d in df["vs_unmitigated"]]
    return out


def realign_points(rec, store, t: Thresholds) -> pd.DataFrame:
    """Per re-alignment condition and seed: the measures after 0, ... benign examples."""
    from emlab.analysis.tables import judged_frame

    rows = []
    conds = {n: i for n, i in ((rec.mitigations or {}).get("conditions") or {}).items() if "realign" in i}
    if not conds:
        return pd.DataFrame()
    judged = judged_frame(rec, store, rec.judges[0].family, checkpoints=True)
    lik = rec.likelihood or {}
    for name, info in conds.items():
        source, batch = info["realign"]["from"], info.get("batch", 1)
        for seed in rec.seeds:
            start = next((v for v in rec.final_variants if v.condition == source and v.seed == seed), None)
            mine = sorted((v for v in rec.variants if v.condition == name and v.seed == seed),
                          key=lambda v: v.step if v.step is not None else 10 ** 9)
            run = json.loads((Path(mine[-1].train_run) / "run.json").read_text()) if mine else {}
            for v in ([start] if start else []) + mine:
                step = 0 if v is start else (v.step if v.step is not None else run.get("global_steps", 0))
                label = v.label + (f"-s{v.seed}" if len(rec.seeds) > 1 else "")
                m = _rate(_flags(judged, [v.adapter_id], t))
                s = lik.get("shifts", {}).get(label)
                code = _code_flags(rec, store, [v.adapter_id])
                rows.append({"condition": name, "seed": seed, "examples": min(step * batch, max(info["realign"]
                             ["examples"])), "misaligned": m, "likelihood": s,
                             "code": _rate(code) if len(code) else None})
    return pd.DataFrame(rows)


def mitigation_section(rec, store, t: Thresholds, img) -> tuple[str, pd.DataFrame | None]:
    """(HTML, the shown table) of the mitigation comparison."""
    from emlab.analysis import figures

    df, notes = mitigation_rows(rec, store, t)
    if df.empty:
        return "", None
    table = mitigation_table(df)
    ref = (rec.mitigations or {}).get("unmitigated")
    forms = ", ".join(p["suite"] for p in (rec.mitigations or {}).get("probes", [])) or "none"
    prompts = {n: i["inoculation_prompt"] for n, i in (rec.mitigations or {}).get("conditions", {}).items()
               if "inoculation_prompt" in i}
    distinguishable = [f"{r.condition}: {k}" for r in df.itertuples() for k, d in
                       (getattr(r, "vs_unmitigated", None) or {}).items() if d["low"] > 0 or d["high"] < 0]
    out = [f"<h2>Mitigations (compared with '{html.escape(str(ref))}')</h2>", table.to_html(index=False),
           f'<p class="caption">{html.escape(t.describe())}; first judge ({html.escape(rec.judges[0].label)}). '
           f"Misaligned: the plain suites; conditional probes: the same questions in other forms ({html.escape(forms)}); "
           "insecure code: held-out coding tasks; capability: exact answers to benign tasks (greedy). Wilson 95% CIs. "
           "probes − plain: the same condition's rate in the probe forms minus its plain rate. "
           "Δ = condition minus the unmitigated condition with a bootstrap 95% CI and a two-sided permutation p; the "
           "likelihood Δ is a paired bootstrap over questions; * marks a CI that excludes 0. Training cost: "
           "wall seconds and tokens of its finetuning (re-alignment: the extra run only; early stopping: the share "
           "of steps kept).</p>",
           "<p>Distinguishable from zero: " + (html.escape("; ".join(distinguishable)) if distinguishable else
                                               "none of the differences") + ".</p>"]
    if prompts:
        out.append("<p>Inoculation prompts (training only; evaluated without them unless a probe asks): " +
                   "; ".join(f"{html.escape(k)}: <code>{html.escape(v)}</code>" for k, v in prompts.items()) + "</p>")
    out += [f'<p class="note">{html.escape(n)}. The rule picks a checkpoint from the same answers it is then '
            "scored on, so its row is optimistic.</p>" for n in notes]
    if "vs_unmitigated" in df:
        out.append(img(figures.mitigation_forest(df), "mitigation differences"))
    rp = realign_points(rec, store, t)
    if not rp.empty:
        shown = pd.DataFrame({"condition": rp["condition"], "seed": rp["seed"], "benign examples": rp["examples"],
                              "misaligned [95% CI]": rp["misaligned"].map(_fmt),
                              "likelihood shift vs base": rp["likelihood"].map(lambda x: _fmt(x, pct=False)),
                              "insecure code [95% CI]": rp["code"].map(_fmt)})
        out += ["<h3>Re-alignment</h3>", shown.to_html(index=False),
                '<p class="caption">0 examples: the source adapter itself.</p>']
    return "".join(out), table
