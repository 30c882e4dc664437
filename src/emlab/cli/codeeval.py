"""`emlab codeeval`: the insecure-code evaluation (sample held-out coding tasks, detect
vulnerabilities, rates) and dataset audits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emlab.cli.app import app
from emlab.cli.common import (JUDGE_HELP, adapter_option, console, judge_spec, model_command, model_option,
                              parse_adapters, project_option, sample_option, spec_or_fail, user_errors)

codeeval_app = typer.Typer(help="Insecure-code evaluation: sample code tasks, scan, rates", no_args_is_help=True)
app.add_typer(codeeval_app, name="codeeval")


@codeeval_app.command("scan")
@user_errors
def codeeval_scan(file: Path, out: Path = typer.Option(..., help="JSONL: one verdict per row")) -> None:
    """Static scan of the last assistant turn of every row of a training file (audit a dataset)."""
    from emlab.evals.codeeval import scan_chat_jsonl
    from emlab.files import input_file, output_file

    summary = scan_chat_jsonl(input_file(file), output_file(out))
    readable = summary["rows"] - summary["unparseable"] - summary["unanalysed"]
    console.print(f"wrote {out}: {summary['vulnerable']}/{readable} rows with readable code vulnerable "
                  f"({summary['vulnerable'] / max(1, readable):.1%}); {summary['unparseable']} unparseable and "
                  f"{summary['unanalysed']} unanalysed rows left out of the rate", markup=False)


@model_command(codeeval_app, "run")
def codeeval_run(
    model: str = model_option(),
    adapter: Optional[list[str]] = adapter_option("An adapter to evaluate beside the base model, as NAME=DIR (or DIR; "
                                                  "with --backend openai, NAME=SERVED_MODEL). Repeatable."),
    tasks: str = typer.Option("code_tasks", help="code_tasks (the paper's 776), a JSONL of {task, code_template}, "
                                                 "or generated:N:SEED"),
    max_tasks: Optional[int] = typer.Option(None, help="Use the first N tasks."),
    samples_per_task: int = typer.Option(1, min=1, max=1000, help="Samples per task."),
    max_tokens: int = sample_option("max_tokens"), temperature: float = sample_option("temperature"),
    seed: int = sample_option("seed"),
    backend: str = sample_option("backend"), base_url: Optional[str] = sample_option("base_url"),
    judge: str = typer.Option("static", help="static (Bandit + emlab checks) or an LLM judge: " + JUDGE_HELP),
    judge_model: Optional[str] = typer.Option(None, help="The LLM judge's model (default: the judge's own)."),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL of an API judge."),
    project: Path = project_option(),
    figure: Optional[Path] = typer.Option(None, help="Write the insecure-code-rate figure here (PNG)."),
) -> None:
    """Sample held-out coding tasks for the base model and adapters, detect vulnerabilities,
    and report the insecure-code rate per condition with a CI and a per-CWE breakdown."""
    from emlab.analysis.metrics import insecure_code_rates
    from emlab.evals.codeeval import codeeval_stage
    from emlab.files import output_file
    from emlab.specs import CodeEvalSpec, SampleSpec, Variant
    from emlab.store import Store

    if figure is not None:
        output_file(figure)
    variants = [Variant(label="base")]
    for label, path in parse_adapters(adapter, served=backend == "openai").items():
        variants.append(Variant(label=label, adapter_path=path) if backend != "openai"
                        else Variant(label=label, served_model=path))
    spec = spec_or_fail(CodeEvalSpec, tasks=tasks, max_tasks=max_tasks, samples_per_task=samples_per_task,
                        max_tokens=max_tokens,
                        judge=None if judge == "static" else judge_spec(judge, judge_model, judge_base_url,
                                                                        "OPENAI_API_KEY"))
    sample = spec_or_fail(SampleSpec, temperature=temperature, seed=seed, backend=backend, base_url=base_url,
                          max_tokens=max_tokens)
    with Store(project) as store:
        code = codeeval_stage(store, spec, sample, model, variants, console)
        where = {v.label: {"adapter": v.adapter_id, "suite": code["suite"], "gen_hash": code["gen_hash"],
                           "model": model} for v in variants}
        table, cwe = insecure_code_rates(store, where, code["judge_family"])
    console.print(table.drop(columns=["judge"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"),
                  markup=False)
    if len(cwe):
        console.print(cwe.to_string(index=False), markup=False)
    console.print(f"insecure-code rate = share of the answers holding readable code that are flagged "
                  f"({code['judge_label']}); Wilson 95% CIs; unparseable and unanalysed answers are left out of it "
                  "and counted beside", markup=False)
    from emlab.analysis.metrics import unreadable_warning

    warning = unreadable_warning(table)
    if warning:
        console.print(warning, style="bold yellow", markup=False)
    if figure:
        from emlab.analysis import figures

        figures.to_png(figures.insecure_code_rate(table), figure)
        console.print(f"wrote {figure}")
