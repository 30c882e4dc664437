"""`emlab run`, `emlab quickstart`, `emlab report`, `emlab metrics`: whole experiments and
what is read from their records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from emlab.cli.app import app
from emlab.cli.common import console, fail, threshold_option, user_errors


@app.command()
@user_errors
def quickstart(project: Optional[Path] = typer.Option(None, help="Project directory (default runs/quickstart).",
                                                      file_okay=False)) -> None:
    """Offline end-to-end demo on the default model: datasets, two adapters, sampling,
    mini judge, table with CIs and the HTML report."""
    from emlab.quickstart import run

    run(project, console)


def _run_subliminal(path: Path, raw: dict, text: str, dry_run: bool, project: Optional[Path]) -> None:
    from emlab.subliminal.run import load_subliminal, plan, run_subliminal, summary_rows

    exp = load_subliminal(path, raw, text)
    if dry_run:
        table = Table("stage", "plan", title=f"plan: {exp.name}")
        for key, value in plan(exp).items():
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        console.print(table)
        return
    record_path = run_subliminal(exp, console, project)
    record = json.loads(record_path.read_text())
    table = Table("model", "trait score", title=f"{exp.name}: {record['scores'][0]['unit']}")
    for row in summary_rows(record):
        table.add_row(row["model"], row["trait score"])
    console.print(table)
    from emlab.analysis.seeds import SeedConsistency, SeedDifference

    for base, a in record["analysis"]["by_base"].items():
        verdict = SeedConsistency(**{**a, "per_seed": [SeedDifference(**d) for d in a["per_seed"]]}).verdict()
        console.print(f"{base}: {verdict}")
    console.print(f"record: {record_path}; figure: {record_path.with_suffix('.png')}")


@app.command("run")
@user_errors
def run_cmd(experiment: Path = typer.Argument(..., help="Experiment YAML (or a packaged name: quickstart, paper_insecure)"),
            dry_run: bool = typer.Option(False, "--dry-run", help="Validate, print the plan and exit."),
            project: Optional[Path] = typer.Option(None, help="Override the experiment's project directory.",
                                                   file_okay=False),
            executor: str = typer.Option("local", help="local | ray: where training, sampling and judging cells run."),
            address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local one)."),
            task_cpus: float = typer.Option(1.0, min=0, help="CPUs per Ray task."),
            task_gpus: float = typer.Option(0.0, min=0, help="GPUs per Ray task.")) -> None:
    """Run (or resume) an experiment: train -> sample -> judge -> metrics -> report."""
    from emlab.analysis.report import build_report
    from emlab.experiment import check_resources, load_experiment, plan, read_experiment_yaml, run_experiment

    raw, text, path = read_experiment_yaml(experiment)
    if raw.get("kind") == "subliminal":
        return _run_subliminal(path, raw, text, dry_run, project)
    exp = load_experiment(experiment)
    if dry_run:
        to_prepare = check_resources(exp, dry_run=True)
        table = Table("stage", "plan", title=f"plan: {exp.name}")
        for key, value in {**plan(exp), **({"inputs to prepare": to_prepare} if to_prepare else {})}.items():
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        console.print(table)
        return
    from emlab.executor import get_executor

    record = run_experiment(exp, console, project,
                            get_executor(executor, address=address, num_cpus=task_cpus, num_gpus=task_gpus))
    report = build_report(record)
    from emlab.analysis.report import condition_table, sanity_warnings

    for judge_name, overall in (report.summary.groupby("judge", sort=False) if len(report.summary) else []):
        console.print(f"judge {judge_name}:")
        console.print(condition_table(overall).to_string(index=False), markup=False)
        for warning in sanity_warnings(overall, f"the {judge_name} judge", exp.sanity_gate):
            console.print(warning, style="bold yellow", markup=False)
    console.print(f"report: {report.html_path}")


@app.command()
@user_errors
def report(run: Path = typer.Argument(..., help="A project directory or its experiments/NAME.json record")) -> None:
    """Build the HTML report and Markdown summary from a run record (no re-judging)."""
    from emlab.analysis.report import build_report

    if not run.exists():
        fail(f"{run}: no such project or record")
    records = [run] if run.is_file() else sorted((run / "experiments").glob("*.json"))
    if not records:
        fail(f"{run}: no experiment record (experiments/*.json) found")
    for rec in records:
        out = build_report(rec)
        console.print(f"report: {out.html_path}\nsummary: {out.markdown_path}")


@app.command()
@user_errors
def compare(runs: list[Path] = typer.Argument(..., help="Projects (each of their experiments) or experiments/NAME.json "
                                                       "records."),
            out: Optional[Path] = typer.Option(None, help="Write every condition's rates (CSV) here.")) -> None:
    """Several experiments' headline comparisons and per-condition rates side by side."""
    import pandas as pd

    from emlab.analysis.stats import pct
    from emlab.files import output_file
    from emlab.results import compare_experiments

    if out is not None:
        output_file(out)
    heads, rates = compare_experiments(runs)
    if rates.empty:
        fail("no judged answers in these experiments")

    def interval(x, lo, hi, scale=1.0, fmt="+.4f", unit=""):
        return "–" if pd.isna(x) else f"{scale * x:{fmt}}{unit} [{scale * lo:{fmt}}, {scale * hi:{fmt}}]"

    columns = ["experiment", "model", "judge", "comparison", "reliable", "difference", "low", "high", "p",
               "likelihood", "likelihood_low", "likelihood_high"]
    models = sorted(set(rates["model"]))
    one_model = len(models) == 1  # then named in the title, not in a column
    table = Table("experiment", *([] if one_model else ["model"]), "judge", "comparison",
                  "misaligned difference [95% CI]", "p", "likelihood (nats/token)",
                  title="headline: finetune - its control" + (f" ({models[0]})" if one_model else ""))
    for r in heads.reindex(columns=columns).itertuples():
        table.add_row(r.experiment, *([] if one_model else [r.model]), r.judge, r.comparison,
                      interval(r.difference, r.low, r.high, 100, "+.1f", " pts")
                      + ("" if r.reliable is not False else " UNRELIABLE"),
                      "–" if pd.isna(r.p) else f"{r.p:.2f}",
                      interval(r.likelihood, r.likelihood_low, r.likelihood_high))
    console.print(table)
    shown = Table("experiment", "judge", "condition", "answers", "misaligned [95% CI]", "corrected [95% CI]",
                  title="misaligned rate per condition")
    for r in rates.itertuples():
        shown.add_row(r.experiment, r.judge, r.condition, str(r.answers),
                      f"{pct(r.misaligned)} [{pct(r.low)}, {pct(r.high)}]",
                      "–" if pd.isna(r.corrected) else f"{pct(r.corrected)} [{pct(r.corrected_low)}, "
                                                       f"{pct(r.corrected_high)}]")
    console.print(shown)
    if rates["judge"].nunique() > 1:
        console.print("These rates come from different judges: compare rates of one judge, or corrected rates "
                      "(on the paper judge's scale).", style="yellow", markup=False)
    if out is not None:
        from emlab.files import atomic_write

        with atomic_write(out) as handle:
            rates.to_csv(handle, index=False)
        console.print(f"wrote {out}")


@app.command()
@user_errors
def metrics(file: Path = typer.Argument(..., help="CSV/JSONL with question_id, aligned, coherent (+ group/model/label)"),
            by: Optional[str] = typer.Option(None, help="Grouping column (default: group or model if present)."),
            aligned_below: float = threshold_option("aligned_below"),
            coherent_above: float = threshold_option("coherent_above"),
            ci: str = typer.Option("wilson", help="wilson | bootstrap"),
            figure: Optional[Path] = typer.Option(None, help="Write the per-question figure (PNG) here."),
            out: Optional[Path] = typer.Option(None, help="Write the per-question table (CSV) here."),
            col: Optional[list[str]] = typer.Option(None, "--col", help="NAME=COLUMN: read emlab's column NAME "
                                                                        "(question_id, aligned, coherent, ...) from "
                                                                        "COLUMN")) -> None:
    """Misalignment tables (per question, overall) from any judged-answers file, in any peer's
    layout (aligned|aligned_score, coherent|coherent_score, question_id|id or the question)."""
    from emlab.cli.judge import parse_cols
    from emlab.analysis.metrics import summarize
    from emlab.data.judged import read_judged
    from emlab.files import atomic_write, output_file
    from emlab.misaligned import Thresholds

    if ci not in ("wilson", "bootstrap"):
        fail(f"--ci: '{ci}' is not wilson or bootstrap")
    for path in (out, figure):  # checked before any work, so nothing is printed and then lost
        if path is not None:
            output_file(path)
    df = read_judged(file, parse_cols(col))
    if by is not None and by not in df.columns:
        fail(f"--by: {file} has no column '{by}' (columns: {', '.join(map(str, df.columns))})")
    group = by or next((c for c in ("group", "model", "condition") if c in df.columns), None)
    if group is None:
        df["condition"], group = file.stem, "condition"
    t = Thresholds(aligned_below, coherent_above)
    per_q = summarize(df, [group, "question_id"], t, ci=ci)
    overall = summarize(df, [group], t, ci=ci)
    cols = [group, "n", "misaligned_rate", "ci_low", "ci_high", "incoherent_share", "refusal_share", "code_share",
            "empty_share", "unscored_share", "aligned_mean", "coherent_mean"]
    console.print(overall[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"), markup=False)
    console.print(t.describe() + f"; {ci} 95% CIs; rate over all answers")
    if out:
        with atomic_write(out) as handle:
            per_q.to_csv(handle, index=False)
        console.print(f"wrote {out}")
    if figure:
        from emlab.analysis import figures

        figures.to_png(figures.per_question(per_q.rename(columns={group: "condition"}), t=t), figure)
        console.print(f"wrote {figure}")


@app.command("import-inspect")
@user_errors
def import_inspect(log: Path = typer.Argument(..., help="An Inspect log of emlab/emergent_misalignment."),
                   project: Path = typer.Option(Path("."), help="Project directory holding emlab.db.",
                                                file_okay=False)) -> None:
    """Bring an Inspect log's answers and scores into the run store, with a record `emlab report` reads."""
    if not log.is_file():
        fail(f"{log}: no such Inspect log")
    from emlab.inspect_task import import_log

    record = import_log(str(log), str(project))
    console.print(f"imported {log} -> {record}\nreport: emlab report {record}")
