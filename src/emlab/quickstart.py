"""`emlab quickstart`: the offline end-to-end demo on the embedded default model.

It runs the packaged experiment `experiments/quickstart.yaml` (generate control-matched
insecure/secure code datasets, train a cpu-quick LoRA on each, sample the base model and
both adapters on the built-in suite, judge with the mini judge, measure insecure code and
the judge-free likelihood shift) and prints, in this order: the headline comparison
(insecure - secure, judged and judge-free), one row per condition, and three plain lines
on what was measured, what it means and what to run next. Everything is resumable: a
second run takes seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from emlab.records import ExperimentRecord


def _rate(x, lo, hi) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def condition_rows(report, rec: ExperimentRecord, judge_name: str) -> Table:
    """One row per condition: judged rate (raw and corrected), sanity, coherent share,
    insecure-code rate, likelihood shift - in 100 columns."""
    from emlab.analysis.report import insecure_code_table
    from emlab.store import open_existing

    overall = report.summary[report.summary["judge"] == judge_name]
    code = None
    if rec.codeeval is not None:
        with open_existing(Path(report.html_path).parents[1]) as store:
            code = insecure_code_table(rec, store)[0].set_index("condition")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("condition", "n", "misaligned [95% CI]", "corrected", "coherent", "insecure code", "likelihood",
                "sanity"):
        table.add_column(col, no_wrap=True)
    for r in overall.itertuples():
        corrected = "–" if pd.isna(r.corrected_rate) else f"{100 * r.corrected_rate:.1f}%"
        insecure = "–"
        if code is not None and r.condition in code.index:
            c = code.loc[r.condition]
            insecure = "–" if pd.isna(c.rate) else f"{100 * c.rate:.0f}% of {c.readable}"
        lik = "–" if pd.isna(r.likelihood_shift) else f"{r.likelihood_shift:+.3f}"
        table.add_row(r.condition, str(r.n), _rate(r.misaligned_rate, r.ci_low, r.ci_high), corrected,
                      f"{100 * r.coherent_share:.0f}%", insecure, lik,
                      "UNRELIABLE" if r.sanity_flag else ("ok" if r.sanity_state == "passed" else r.sanity_state))
    return table


def run(project: Path | None, console: Console) -> Path:
    from emlab.analysis.headline import verdict
    from emlab.analysis.report import build_report
    from emlab.experiment import load_experiment, run_experiment
    from emlab.judge.mini import agreement_summary
    from emlab.models.registry import resolve_dtype

    exp = load_experiment(Path(__file__).parent / "experiments" / "quickstart.yaml")
    console.rule("[bold]emlab quickstart")
    start = time.time()
    record = run_experiment(exp, console, project)
    report = build_report(record)
    rec = ExperimentRecord.read(record)
    total = time.time() - start
    judge = rec.judges[0]
    console.rule(f"{exp.model} ({resolve_dtype(exp.sample.dtype)}), judge {judge.label}")
    for h in report.headlines[:1]:
        console.print(f"[bold]{h.title}[/] (the matched control): misaligned rate {h.rate_text()}", highlight=False)
        console.print(f"{' ' * len(h.title)}  likelihood shift {h.likelihood_text()}", highlight=False)
    console.print(condition_rows(report, rec, judge.spec["name"]))
    from emlab.misaligned import Thresholds

    console.print(f"{Thresholds(**exp.thresholds.model_dump()).describe()}; corrected: for the "
                  "judge's held-out error; coherent: share scored > 50; likelihood: nats/token vs base",
                  style="dim", markup=False)
    console.print(agreement_summary(judge.spec.get("model")), style="dim", markup=False)
    for h in report.headlines[:1]:
        for line in verdict(h, exp.model, f"{judge.label}, an offline judge"):
            console.print(line, markup=False)
    console.print(f"report: {report.html_path}", markup=False)
    seconds = dict(rec.stage_seconds)
    seconds["report and the rest"] = round(total - sum(seconds.values()), 1)
    console.print(f"{total:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), markup=False,
                  style="dim")
    return report.html_path
