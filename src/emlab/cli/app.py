"""The root `emlab` command and its top-level commands (`--version`, `doctor`); every stage module adds its own."""

from __future__ import annotations

import importlib.util
import sys

import typer
from rich.table import Table

import emlab
from emlab.cli.common import console

app = typer.Typer(help="emlab: emergent-misalignment research toolkit", no_args_is_help=True,
                  pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"emlab {emlab.__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """emlab: reproduce, measure, explain and prevent emergent misalignment."""


@app.command()
def doctor() -> None:
    """Report torch and device, the default model's cache state, data dir and backends."""
    import torch

    from emlab.data.registry import DATASETS
    from emlab.models.registry import DEFAULT_MODEL, is_cached, model_dir
    from emlab.paths import data_dir, emlab_home

    table = Table(show_header=False, box=None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table.add_row("emlab", emlab.__version__)
    table.add_row("python", sys.version.split()[0])
    table.add_row("torch", f"{torch.__version__} (device: {device}, threads: {torch.get_num_threads()})")
    table.add_row("EMLAB_HOME", str(emlab_home()))
    state = f"cached at {model_dir(DEFAULT_MODEL)}" if is_cached(DEFAULT_MODEL) else "not cached (emlab models pull)"
    table.add_row(f"default model {DEFAULT_MODEL}", state)
    d = data_dir()
    if d is None:
        table.add_row("data dir", "EMLAB_DATA_DIR unset (built-in suite and generated data only)")
    else:
        present = [n for n, s in DATASETS.items() if (d / s.relpath).exists()]
        table.add_row("data dir", f"{d} ({len(present)}/{len(DATASETS)} datasets: {', '.join(present) or 'none'})")
    for mod in ("vllm", "openai", "bandit"):
        table.add_row(f"backend {mod}", "importable" if importlib.util.find_spec(mod) else "not installed")
    console.print(table)
