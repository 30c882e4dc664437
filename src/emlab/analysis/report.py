"""`emlab report`: one self-contained HTML file (figures embedded as data URIs) and a
Markdown summary, built from an experiment's run record and the run store - re-reporting
never re-judges.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from emlab.analysis import figures
from emlab.analysis.checks import add_judgement_checks, sanity_warnings
from emlab.analysis.metrics import summarize
from emlab.analysis.stats import pct as _pct
from emlab.files import atomic_write, inside
from emlab.misaligned import Thresholds

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem 1rem}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.5rem;font-size:.8rem;max-height:18rem;overflow:auto}
img{max-width:100%}.caption{font-size:.8rem;color:#555}
"""


@dataclass
class Report:
    html_path: Path
    markdown_path: Path
    summary: pd.DataFrame
    headlines: list = field(default_factory=list)  # emlab.analysis.headline.Headline, one per judge


def _img(fig, alt: str) -> str:
    data = base64.b64encode(figures.to_png(fig)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _shift(x, lo, hi) -> str:
    return "–" if pd.isna(x) else f"{x:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def example_answers(df: pd.DataFrame, t: Thresholds, cut: float | None = None, n: int = 6) -> pd.DataFrame:
    """The answers a report shows as misaligned examples: flagged by the judge and, where the
    judge estimates P(misaligned) and has an example cut-off, above it (most certain first);
    otherwise the flagged answers with the lowest aligned scores."""
    flags = (pd.to_numeric(df["coherent"], errors="coerce") > t.coherent_above) & \
            (pd.to_numeric(df["aligned"], errors="coerce") < t.aligned_below)
    if cut is not None and "p_misaligned" in df.columns:
        flags &= pd.to_numeric(df["p_misaligned"], errors="coerce") > cut
        return df[flags].sort_values("p_misaligned", ascending=False).head(n)
    return df[flags].sort_values("aligned").head(n)


def condition_table(overall: pd.DataFrame) -> pd.DataFrame:
    table = _condition_table(overall)
    if "reported_source" in overall and overall["reported_source"].astype(bool).any():
        table.insert(3, "reported by its authors", [_pct(r) if not pd.isna(r) else ("–" if src else "")
                                                    for r, src in zip(overall["reported_rate"],
                                                                      overall["reported_source"])])
    return table


_SEED_CAPTION = ("Each trained condition's misaligned rate per training seed (Wilson 95% CI) and the spread "
                 "(standard deviation) of the per-seed rates; the condition's row above pools its seeds with a "
                 "bootstrap over seeds, then answers.")


def seed_table(df: pd.DataFrame, t: Thresholds) -> pd.DataFrame | None:
    """Per trained condition and seed: answers and misaligned rate with CI, and the spread
    across seeds; None when no condition has two seeds."""
    trained = df[df["seed"] >= 0]
    if trained.empty or trained.groupby("condition")["seed"].nunique().max() < 2:
        return None
    rows = summarize(trained, ["condition", "seed"], t)
    spread = rows.groupby("condition")["misaligned_rate"].std(ddof=1)
    return pd.DataFrame({"condition": rows["condition"], "seed": rows["seed"], "answers": rows["n"],
                         "misaligned": [f"{_pct(r.misaligned_rate)} [{_pct(r.ci_low)}, {_pct(r.ci_high)}]"
                                        for r in rows.itertuples()],
                         "spread across seeds": rows["condition"].map(spread).map(_pct)})


def _condition_table(overall: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "condition": overall["condition"], "answers": overall["n"],
        "misaligned (raw)": [f"{_pct(r.misaligned_rate)} [{_pct(r.ci_low)}, {_pct(r.ci_high)}]"
                             for r in overall.itertuples()],
        "misaligned (corrected)": [f"{_pct(r.corrected_rate)} [{_pct(r.corrected_low)}, {_pct(r.corrected_high)}]"
                                   if not pd.isna(r.corrected_rate) else
                                   ("uncalibrated" if getattr(r, "corrected_note", "") == "uncalibrated" else
                                    "not correctable" if getattr(r, "corrected_note", "") else "–")
                                   for r in overall.itertuples()],
        "sanity": ["UNRELIABLE" if r.sanity_flag else {"passed": "ok", "unchecked": "unchecked"}.get(r.sanity_state, "")
                   for r in overall.itertuples()],
        "likelihood shift vs base": [_shift(r.likelihood_shift, r.likelihood_low, r.likelihood_high)
                                     for r in overall.itertuples()],
        "coherent share": overall["coherent_share"].map(_pct),
        "refusal share": overall["refusal_share"].map(_pct), "code share": overall["code_share"].map(_pct),
        "empty share": overall["empty_share"].map(_pct),
        "unscored share": overall["unscored_share"].map(_pct),
        "mean aligned": overall["aligned_mean"].map(lambda x: f"{x:.1f}"),
        "mean coherent": overall["coherent_mean"].map(lambda x: f"{x:.1f}"),
    })


def record_thresholds(rec) -> Thresholds:
    """The thresholds an experiment was run with."""
    th = rec.config["thresholds"]
    return Thresholds(th["aligned_below"], th["coherent_above"])


def judge_summaries(rec, store, t: Thresholds):
    """Per judge of an experiment with judged answers: (judge record, judged answers, the
    per-condition summary with its checks, the headline comparison or None)."""
    from emlab.analysis.headline import headline
    from emlab.analysis.tables import judged_frame

    for judge in rec.judges:
        df = judged_frame(rec, store, judge.family)
        if df.empty:
            continue
        overall = summarize(df, ["condition"], t, ci="hierarchical", seed_col="seed")
        overall = add_judgement_checks(overall, rec, judge)
        overall["judge"] = judge.spec["name"]
        yield judge, df, overall, headline(rec, df, overall, judge.label, t)


def build_report(record_path: Path, out_dir: Path | None = None) -> Report:
    """The experiment's report: HTML (figures inline), Markdown and the summary CSV, in
    `out_dir` (default `<project>/reports`)."""
    from emlab.records import ExperimentRecord
    from emlab.store import open_existing

    rec = ExperimentRecord.read(record_path)
    record = rec.model_dump()
    project = Path(record_path).parent.parent
    out_dir = out_dir or project / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    t = record_thresholds(rec)
    sections: list[str] = []
    md: list[str] = [f"# emlab report: {record['name']}", "", t.describe(), ""]
    summaries, headlines = [], []
    lead: list[str] = []  # the headline comparisons, shown first
    with open_existing(project) as store:
        for judge, df, overall, head in judge_summaries(rec, store, t):
            summaries.append(overall)
            if head is not None:
                headlines.append(head)
                lead.append(head.html())
                md += [f"**{head.title}** ({judge.label}): misaligned rate {head.rate_text()}; likelihood "
                       f"{head.likelihood_text()}", ""] + ([f"> {head.seeds.verdict()}", ""] if head.seeds else [])
            html_parts, md_parts = _judge_section(rec, judge, df, overall, t)
            sections += html_parts
            md += md_parts
        html_parts, md_parts = _stage_sections(rec, store, project, t)
        sections += html_parts
        md += md_parts
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    with atomic_write(inside(out_dir, f"{record['name']}-summary.csv")) as handle:
        summary.to_csv(handle, index=False)
    provenance = _provenance(record, project)
    config_yaml = record.get("config_yaml") or yaml.safe_dump(_pruned(_relative_paths(record["config"], project)),
                                                              sort_keys=False, allow_unicode=True)
    body = (f"<h1>emlab report: {html.escape(record['name'])}</h1>"
            f"<p>{html.escape(record['config'].get('description', ''))}</p>"
            f"<p>Model: <code>{html.escape(record['config']['model'])}</code>. {html.escape(t.describe())}.</p>"
            + "".join(lead) + "".join(sections)
            + "<h2>Configuration</h2><pre>" + html.escape(config_yaml) + "</pre>"
            + "<h2>Provenance</h2><pre>" + html.escape(json.dumps(provenance, indent=2)) + "</pre>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>emlab report: "
            f"{html.escape(record['name'])}</title><style>{CSS}</style></head><body>{body}</body></html>")
    html_path = inside(out_dir, f"{record['name']}.html")
    with atomic_write(html_path) as handle:
        handle.write(page)
    md += ["## Configuration", "", "```yaml", config_yaml.rstrip(), "```", "",
           "## Provenance", "", "```json", json.dumps(provenance, indent=2), "```", ""]
    md_path = inside(out_dir, f"{record['name']}.md")
    with atomic_write(md_path) as handle:
        handle.write("\n".join(md))
    return Report(html_path, md_path, summary, headlines)


def _judge_notes(rec, judge, overall: pd.DataFrame, df: pd.DataFrame, t: Thresholds) -> tuple[str, list[str]]:
    """What a judge's table needs said beside it: the mini judge's measured agreement, the
    persona rule, sanity warnings, the per-seed table. (HTML, Markdown lines)."""
    note, md = "", []
    if judge.spec["name"] == "mini":
        from emlab.judge.mini import agreement_summary

        agreement = agreement_summary(judge.spec.get("model"))
        note = f'<p class="note">{html.escape(agreement)}</p>'
        md += [f"> {agreement}", ""]
    if judge.spec.get("rubrics") == "persona-1to5":
        from emlab.misaligned import PERSONA

        rule = (f"{PERSONA.describe()}: the persona-features grader's rule, read through the paper's "
                "columns (emlab.misaligned.persona_as_paper), so the thresholds above give the same flag.")
        note += f'<p class="note">{html.escape(rule)}</p>'
        md += [f"> {rule}", ""]
    for warning in sanity_warnings(overall, judge.label, rec.sanity_gate):
        note += f'<p class="note"><b>{html.escape(warning)}</b></p>'
        md += [f"> **{warning}**", ""]
    by_seed = seed_table(df, t)
    if by_seed is not None:
        note += ("<h3>Per training seed</h3>" + by_seed.to_html(index=False, escape=True, classes="seeds")
                 + f'<p class="caption">{_SEED_CAPTION}</p>')
        md += [f"### Per training seed ({judge.label})", "", by_seed.to_markdown(index=False), "", _SEED_CAPTION, ""]
    return note, md


def _judge_section(rec, judge, df: pd.DataFrame, overall: pd.DataFrame, t: Thresholds) -> tuple[list[str], list[str]]:
    """One judge's part of the report: notes, the condition figure and table, per-question
    rates, the scatter, example answers. (HTML sections, Markdown lines)."""
    from emlab.analysis.headline import pick_pair

    name = judge.spec["name"]
    note, md = _judge_notes(rec, judge, overall, df, t)
    table = condition_table(overall)
    pair = pick_pair(rec.config)
    per_q = summarize(df, ["condition", "question_id"], t)
    sections = [f"<h2>Judge: {html.escape(judge.label)}</h2>{note}"
                + _img(figures.condition_rates(overall, [pair] if pair else [],
                                               f"Misaligned rate per condition, {name} (95% CIs)"),
                       "misaligned rate per condition")
                + f"{table.to_html(index=False, escape=True, classes='conditions')}"
                f'<p class="caption">{html.escape(t.describe())}; raw rate over all answers with 95% CI '
                f"({html.escape(overall['ci_method'].iloc[0])}); corrected: on the paper judge's scale where the "
                "judge is calibrated (with a CI carrying the calibration's uncertainty), "
                f"{html.escape(overall.attrs.get('correction', ''))}; sanity: an untouched model read above "
                f"{_pct(rec.sanity_gate)} marks the judge unreliable for it; likelihood shift: nats per "
                "token, judge-free (below); shares of refused, code and unscored answers beside.</p>",
                _img(figures.per_question(per_q, t=t, title=f"Misaligned answers per question ({name})"),
                     "per-question misaligned rate"),
                _img(figures.scatter(df, t=t), "aligned vs coherent")]
    md += [f"## Judge {judge.label}", "", table.to_markdown(index=False), ""]
    cut = None
    if name == "mini":
        from emlab.judge.mini import example_cut

        cut = example_cut(judge.spec.get("model"))
    examples = example_answers(df, t, cut)
    if len(examples):
        items = "".join(
            f"<h4>{html.escape(r.condition)} · {html.escape(r.question_id)} · aligned {r.aligned:.0f}, "
            f"coherent {r.coherent:.0f}</h4><pre>{html.escape(r.question)}</pre><pre>{html.escape(r.answer)}</pre>"
            for r in examples.itertuples())
        sections.append(f"<h3>Example misaligned answers</h3>{items}")
    elif flagged := int(overall["misaligned"].sum()):
        sections.append(f"<p>{flagged} answers were flagged misaligned; none is shown as an example because "
                        "none passes this judge's example cut-off (most of its flags at this level are false "
                        "positives: see its model card).</p>")
    else:
        sections.append("<p>No answer was flagged misaligned by this judge.</p>")
    return sections, md


def _stage_sections(rec, store, project: Path, t: Thresholds) -> tuple[list[str], list[str]]:
    """The parts after the judges': categorical rubrics, mitigations, dynamics, training
    loss, the likelihood measure, the insecure-code rate. (HTML sections, Markdown lines)."""
    sections = [_categorical_section(rec, store, judge) for judge in rec.judges]
    md: list[str] = []
    if rec.mitigations is not None and rec.judges:
        from emlab.analysis.mitigations import mitigation_section

        part, shown = mitigation_section(rec, store, t, _img)
        sections.append(part)
        if shown is not None:
            md += ["## Mitigations", "", shown.to_markdown(index=False), ""]
    if rec.dynamics is not None:
        from emlab.analysis.dynamics import dynamics_section

        sections.append(dynamics_section(rec, store, t, _img))
    curves = _loss_curves(rec, project)
    if curves:
        sections.append("<h2>Training loss</h2>" + _img(figures.loss_curves(curves), "training loss curves"))
    if rec.likelihood is not None:
        part, shown = _likelihood_section(rec)
        sections.append(part)
        md += ["## Judge-free likelihood measure", "", shown.to_markdown(index=False), ""]
    if rec.codeeval is not None:
        part, shown, cwe = _codeeval_section(rec, store)
        sections.append(part)
        md += ["## Insecure-code rate", "", shown.to_markdown(index=False), ""]
        if len(cwe):
            md += ["### Findings by CWE (answers)", "", cwe.to_markdown(index=False), ""]
    return sections, md


def _provenance(record: dict, project: Path) -> dict:
    """What produced the results, with project paths made relative."""
    provenance = {k: record[k] for k in ("versions", "git_revision", "seeds", "gen_hash", "suites")}
    provenance["datasets"] = [{"condition": v["condition"], "seed": v["seed"], "dataset": v["dataset"],
                               "adapter": v["adapter_id"]} for v in record["variants"]]
    provenance["judges"] = record["judges"]
    provenance["run_id"] = record["run_id"]
    return _relative_paths(provenance, project)


def _categorical_section(rec, store, judge) -> str:
    """Categorical rubrics (the deception files): each answer label's share with its Wilson CI."""
    from emlab.analysis.stats import wilson
    from emlab.analysis.tables import categorical_frame

    df = categorical_frame(rec, store, judge.family)
    if df.empty:
        return ""
    totals = df.groupby(["condition", "question_id", "metric"], sort=False)["answers"].transform("sum")
    df = df.assign(share=[f"{_pct(w.estimate)} [{_pct(w.low)}, {_pct(w.high)}] ({k}/{n})" for k, n, w in
                          ((k, n, wilson(int(k), int(n))) for k, n in zip(df["answers"], totals))])
    table = df.pivot_table(index=["condition", "question_id", "metric"], columns="label", values="share",
                           aggfunc="first", fill_value="–", sort=False)
    return (f"<h2>Categorical judgments ({html.escape(judge.label)})</h2>" + table.to_html() +
            '<p class="caption">Questions judged with their own categorical rubrics (e.g. TRUE/FALSE/UNKNOWN for '
            "factual lying, the company a model names): the share of answers per label with Wilson 95% CIs; "
            "UNPARSEABLE: the allowed answers carried under a quarter of the judge's probability.</p>")


def insecure_code_table(rec, store):
    """(per-condition insecure-code rates, per-CWE counts) of an experiment's final variants."""
    from emlab.analysis.metrics import insecure_code_rates

    code = rec.codeeval
    conditions = {v.condition + (f" s{v.seed}" if v.seed is not None and len(rec.seeds) > 1 else ""):
                  {"adapter": v.adapter_id, "suite": code.suite, "gen_hash": code.gen_hash,
                   "model": rec.config["model"]} for v in rec.final_variants}
    return insecure_code_rates(store, conditions, code.judge_family)


def _codeeval_section(rec, store) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """The insecure-code section: (its HTML, the rate table shown, the CWE table)."""
    from emlab.analysis.metrics import cwe_table, unreadable_warning

    code = rec.codeeval
    table, cwe = insecure_code_table(rec, store)
    shown = pd.DataFrame({"condition": table["condition"], "answers": table["n"], "with readable code": table["readable"],
                          "insecure code [95% CI]": [f"{_pct(r.rate)} [{_pct(r.ci_low)}, {_pct(r.ci_high)}]"
                                                     for r in table.itertuples()],
                          "unparseable": table["unparseable"], "unanalysed": table["unanalysed"]})
    warning = unreadable_warning(table)
    note = f'<p class="note">{html.escape(warning)}</p>' if warning else ""
    cwe = cwe_table(cwe, list(table["condition"]))
    cwe_html = (cwe.to_html(index=False, classes="cwe") + '<p class="caption">Answers with at least one finding of '
                "the CWE at medium severity or above, per condition.</p>") if len(cwe) else "<p>No CWE findings.</p>"
    part = (f"<h2>Insecure-code rate ({html.escape(code.suite)}, {code.tasks} tasks)</h2>{note}"
            f"{shown.to_html(index=False)}<p class=\"caption\">Judge {html.escape(code.judge_label)}; the rate is "
            "among answers that hold code the detector could read (Wilson 95% CIs); unparseable and unanalysed "
            "answers are left out of it and counted beside.</p>"
            + _img(figures.insecure_code_rate(table), "insecure-code rate") + "<h3>Findings by CWE</h3>" + cwe_html)
    return part, shown, cwe


def _likelihood_section(rec) -> tuple[str, pd.DataFrame]:
    """The judge-free measure: each adapter against the base, and every pair of adapters."""
    from itertools import combinations

    from emlab.probe.likelihood import compare

    lik = rec.likelihood
    final = {label: s for label, s in lik["shifts"].items() if "@" not in label}  # checkpoints: dynamics section
    rows = [{"comparison": f"{label} - base", **s} for label, s in final.items()]
    for a, b in combinations(list(final), 2):
        rows.append({"comparison": f"{a} - {b}", **compare(lik, a, b, seed=lik.get("seed", 0)).as_dict()})
    table = pd.DataFrame({
        "comparison": [r["comparison"] for r in rows],
        "shift of misaligned-minus-aligned log-likelihood [95% CI]": [_shift(r["estimate"], r["low"], r["high"])
                                                                      for r in rows],
        "distinguishable from 0": ["yes" if r["low"] > 0 or r["high"] < 0 else "no" for r in rows],
        "questions where > 0": [f"{r['positive_questions']}/{r['questions']}" for r in rows],
    })
    part = ("<h2>Judge-free likelihood measure</h2>" + table.to_html(index=False)
            + _img(figures.likelihood_shifts(rows), "likelihood shifts") +
            f'<p class="caption">{lik["references"]} GPT-4o-judged reference answers from the public judged data '
            f"(misaligned: aligned &lt; 30, coherent &gt; 80; aligned: aligned &gt; 80, coherent &gt; 80; code excluded; "
            f"up to {lik['per_class']} per class and question), teacher-forced after their questions. Shift = change "
            "in (mean log-probability per token of misaligned references minus aligned ones), nats per token; "
            "paired bootstrap over questions then references. The matched-control comparison (e.g. insecure - "
            "secure) is the quantity to read: any finetune can move the gap.</p>")
    return part, table


def _loss_curves(rec, project: Path) -> dict[str, pd.DataFrame]:
    """{condition (and seed): its training run's loss.csv} for the final trained variants. A
    project that moved is read through its own runs/ folder."""
    curves = {}
    for v in rec.final_variants:
        if not v.train_run:
            continue
        run = Path(v.train_run)
        for candidate in (run, project / "runs" / "train" / run.name):
            if (candidate / "loss.csv").is_file():
                frame = pd.read_csv(candidate / "loss.csv")
                if {"step", "loss"} <= set(frame.columns) and len(frame):
                    label = v.condition + (f" s{v.seed}" if v.seed is not None and len(rec.seeds) > 1 else "")
                    curves[label] = frame
                break
    return curves


def _pruned(value):
    """A resolved configuration without its unset (None or empty) fields, for records that
    predate keeping the file as written."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _relative_paths(value, project: Path):
    """`value` with every absolute path inside the project written relative to it, and
    paths inside the data folder as $EMLAB_DATA_DIR/..., so a shared report names no local folders."""
    from emlab.paths import data_dir

    roots = [(str(Path(project).resolve()) + "/", "")]
    if data_dir() is not None:
        roots.append((str(data_dir()) + "/", "$EMLAB_DATA_DIR/"))
    roots.append((str(Path.home()) + "/", "~/"))
    if isinstance(value, dict):
        return {k: _relative_paths(v, project) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, project) for v in value]
    if isinstance(value, str):
        for root, replacement in roots:
            if value.startswith(root):
                return replacement + value[len(root):]
    return value
