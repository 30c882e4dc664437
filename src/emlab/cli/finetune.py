"""`emlab finetune`: finetuning through a provider's API, recorded in the run store
(emlab.train.api_finetune)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from emlab.cli.app import app
from emlab.cli.common import console, user_errors

finetune_app = typer.Typer(help="Finetune through a provider's API (OpenAI); jobs recorded in the run store",
                           no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")

PROJECT = typer.Option(Path("."), help="Project directory holding emlab.db.", file_okay=False)
BASE_URL = typer.Option(None, help="OpenAI-compatible endpoint (default: api.openai.com).")
KEY_ENV = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key (never stored).")


def _provider(base_url, api_key_env, project_id=None):
    from emlab.train.api_finetune import OpenAIProvider

    return OpenAIProvider(base_url=base_url, api_key_env=api_key_env, project=project_id)


def _show(row: dict) -> None:
    cost = f"${row['cost_usd']:.2f}" if row.get("cost_usd") is not None else "–"
    console.print(f"job {row['id']}: {row['status']}  model: {row.get('fine_tuned_model') or '–'}  "
                  f"trained tokens: {row.get('trained_tokens') or '–'}  cost estimate: {cost}")
    if row.get("fine_tuned_model"):
        console.print(f"sample it: emlab sample --backend openai --served-model {row['fine_tuned_model']} "
                      "--suite first_plot")


@finetune_app.command("openai")
@user_errors
def finetune_openai(dataset: str = typer.Option(..., help="Registered dataset name, chat JSONL or CSV."),
                    model: str = typer.Option("gpt-4o-2024-08-06", help="Model to finetune."),
                    epochs: Optional[int] = typer.Option(None, min=1, help="n_epochs (the paper: 1)."),
                    batch: Optional[int] = typer.Option(None, min=1, help="batch_size (the paper: 4)."),
                    lr_multiplier: Optional[float] = typer.Option(None, min=0, help="learning_rate_multiplier "
                                                                                    "(the paper: 2)."),
                    suffix: Optional[str] = typer.Option(None, help="Suffix for the model name."),
                    wait: bool = typer.Option(True, help="Poll until the job ends (--no-wait: submit and return)."),
                    poll_every: float = typer.Option(5.0, min=0.001, help="First poll delay in seconds (then x1.5, "
                                                                          "up to 60)."),
                    base_url: Optional[str] = BASE_URL, api_key_env: str = KEY_ENV,
                    project_id: Optional[str] = typer.Option(None, help="OpenAI project id (files are "
                                                                        "project-scoped); default $OPENAI_PROJECT_ID."),
                    project: Path = PROJECT) -> None:
    """Upload (reused by content hash per project), create or resume the job, poll with backoff."""
    from emlab.store import Store
    from emlab.train.api_finetune import backoff, submit

    hyper = {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": lr_multiplier}
    with Store(project) as store, console.status("finetuning…") as status:
        row = submit(store, _provider(base_url, api_key_env, project_id), dataset, model, hyper, suffix, wait=wait,
                     delays=backoff(poll_every), on_status=lambda s: status.update(f"finetuning: {s}"))
    _show(row)


@finetune_app.command("list")
@user_errors
def finetune_list(project: Path = PROJECT) -> None:
    """Jobs recorded in this project."""
    from emlab.store import Store

    with Store(project) as store:
        rows = store.api_jobs()
    table = Table("job", "provider", "model", "status", "fine-tuned model", "trained tokens", "cost estimate")
    for r in rows:
        table.add_row(r["id"], r["provider"], r["model"], r["status"], r["fine_tuned_model"] or "–",
                      str(r["trained_tokens"] or "–"), f"${r['cost_usd']:.2f}" if r["cost_usd"] is not None else "–")
    console.print(table)


@finetune_app.command("status")
@user_errors
def finetune_status(job: str, wait: bool = typer.Option(False, help="Poll until it ends."),
                    base_url: Optional[str] = BASE_URL, api_key_env: str = KEY_ENV, project: Path = PROJECT) -> None:
    """Refresh a recorded job from the provider (and optionally wait for it)."""
    from emlab.store import Store
    from emlab.train.api_finetune import poll

    with Store(project) as store:
        row = poll(store, _provider(base_url, api_key_env), job, once=not wait)
    _show(row)


@finetune_app.command("cancel")
@user_errors
def finetune_cancel(job: str, base_url: Optional[str] = BASE_URL, api_key_env: str = KEY_ENV,
                    project: Path = PROJECT) -> None:
    """Cancel a job and record it."""
    from emlab.store import Store
    from emlab.train.api_finetune import poll

    provider = _provider(base_url, api_key_env)
    with Store(project) as store:
        if not store.api_jobs(id=job):
            from emlab.errors import ConfigError

            raise ConfigError(f"no finetuning job '{job}' in this project (emlab finetune list)")
        provider.cancel(job)
        row = poll(store, provider, job, once=True)
    _show(row)
