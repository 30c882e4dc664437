"""`emlab probe`: measurements of a model beyond sampling and judging."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emlab.cli import app
from emlab.cli.common import console, fail, user_errors

probe_app = typer.Typer(help="Probes: the judge-free likelihood measure", no_args_is_help=True)
app.add_typer(probe_app, name="probe")


@probe_app.command("likelihood")
@user_errors
def likelihood(
    model: str = typer.Option("smollm2-135m-instruct"),
    adapter: Optional[list[str]] = typer.Option(None, help="NAME=DIR of an adapter to measure (repeatable)."),
    suite: str = typer.Option("builtin", help="The suite whose questions pick the reference answers."),
    per_class: int = typer.Option(10, min=1, max=200, help="Reference answers per class and question."),
    seed: int = typer.Option(0, min=0),
    project: Path = typer.Option(Path("."), file_okay=False, help="Project whose store caches the scores."),
) -> None:
    """Shift of (misaligned minus aligned reference log-likelihood) of each adapter against the
    base model, and between adapters, with bootstrap CIs - no judge involved."""
    from itertools import combinations

    from rich.table import Table

    from emlab.data.questions import load_suite
    from emlab.probe.likelihood import compare, likelihood_stage
    from emlab.specs import Variant
    from emlab.store import Store

    variants = []
    for item in adapter or []:
        label, sep, path = item.partition("=")
        if not sep or not label:
            fail(f"--adapter expects NAME=DIR, got '{item}'")
        try:
            variants.append(Variant(label=label, adapter_path=path))
        except ValueError:
            fail(f"--adapter {label}: {path} holds no adapter weights (*.safetensors)")
    qids = [q.id for q in load_suite(suite).questions]
    with Store(project) as store:
        result = likelihood_stage(store, model, variants, qids, per_class, seed, console)
    table = Table("comparison", "shift (nats/token) [95% CI]", "questions > 0",
                  title=f"likelihood measure, {result['references']} reference answers")
    rows = [(f"{k} - base", s) for k, s in result["shifts"].items()]
    rows += [(f"{a} - {b}", compare(result, a, b, seed).as_dict()) for a, b in combinations(result["shifts"], 2)]
    for name, s in rows:
        table.add_row(name, f"{s['estimate']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}]",
                      f"{s['positive_questions']}/{s['questions']}")
    console.print(table)
    console.print("shift = change in mean log-probability per token of misaligned minus aligned GPT-4o-judged "
                  "reference answers; paired bootstrap over questions then references", markup=False)
