"""`emlab models`: the embedded default model and other models."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from emlab.cli.app import app
from emlab.cli.common import console, model_command, user_errors
from emlab.specs import DEFAULT_MODEL

models_app = typer.Typer(help="The embedded default model and other models", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """List embedded models and whether they are cached."""
    from emlab.models.registry import EMBEDDED, is_cached

    table = Table("name", "source package", "upstream", "cached")
    for name, spec in EMBEDDED.items():
        table.add_row(name, spec.package, spec.hf_id, "yes" if is_cached(name) else "no")
    console.print(table)
    console.print("Any Hugging Face id or local model directory is accepted wherever a model is named.")


@model_command(models_app, "pull")
def models_pull(name: str = typer.Argument(DEFAULT_MODEL, help="An embedded model's name."),
                force: bool = typer.Option(False, help="Convert again even if cached.")) -> None:
    """Provision an embedded model (dequantise the GGUF once, save safetensors)."""
    from emlab.models.registry import is_cached, pull

    was_cached = is_cached(name)
    with console.status(f"converting {name} to safetensors…"):
        path = pull(name, force=force)
    console.print(f"{name}: {'already cached' if was_cached and not force else 'converted'} at {path}")


@models_app.command("info")
@user_errors
def models_info(name: str) -> None:
    """Show a model's manifest (source, hashes)."""
    from emlab.models.registry import info

    console.print_json(json.dumps(info(name)))


@models_app.command("zoo")
def models_zoo() -> None:
    """The model-organisms zoo: public EM adapters by name (use as --model zoo:NAME)."""
    from emlab.models.zoo import ZOO

    from rich.table import Column

    # Names are copied into `zoo:NAME`: never truncated; the wide Hub ids fold instead.
    table = Table(Column("name", no_wrap=True), Column("base model", overflow="fold"),
                  Column("adapter", overflow="fold"), Column("dataset", overflow="fold"), "rank",
                  "reported misaligned")
    for o in ZOO.values():
        table.add_row(o.name, o.base_model, o.adapter, o.dataset, str(o.rank or "?"),
                      f"{100 * o.reported_rate:.1f}%" if o.reported_rate is not None else "–")
    console.print(table)
    console.print("Reported rates: the authors' GPT-4o-judged answers (first-plot questions; `emlab models zoo` "
                  "sources in emlab.models.zoo). Models load from the Hugging Face hub, or $EMLAB_ZOO_DIR/<name>/.")
