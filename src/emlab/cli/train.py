"""`emlab train`: finetune with TRL + PEFT. Every TrainConfig field is a flag, derived from
the config's fields (`emlab.train.config.flag_fields`), so the CLI and the config never
drift apart."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from emlab.cli.app import app
from emlab.cli.common import console, project_option, user_errors


def train(preset: str, config: Optional[Path], out: Optional[Path], project: Path, **overrides) -> None:
    """Finetune with TRL SFTTrainer + PEFT; resumes from the last checkpoint if killed."""
    from emlab.store import Store
    from emlab.train.config import resolve_config
    from emlab.train.trainer import train_stage

    cfg = resolve_config(preset, config, **overrides)
    with Store(project) as store:
        result = train_stage(store, cfg, project / "runs" / "train", console, out)
    rec = result.record
    console.print(f"run: {result.run_dir}\nadapter: {result.adapter_dir}\nfinal loss: {rec['final_loss']}"
                  f"  tokens/s: {rec['tokens_per_second']}  wall: {rec['wall_seconds']} s")


def _signature() -> inspect.Signature:
    from emlab.train.config import flag_fields

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("preset", kw, annotation=str, default=typer.Option(
            "cpu-quick", help="paper-open | rank1 | full | cpu-quick")),
        inspect.Parameter("config", kw, annotation=Optional[Path], default=typer.Option(
            None, help="YAML file overriding the preset.", exists=True, dir_okay=False)),
        inspect.Parameter("out", kw, annotation=Optional[Path], default=typer.Option(
            None, help="Run directory (default runs/train/<dataset>-<preset>-<hash>).")),
        inspect.Parameter("project", kw, annotation=Path, default=project_option()),
    ]
    for name, (kind, help_text) in flag_fields().items():
        if name == "preset":
            continue
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            flag = f"{flag}/--no-{name.replace('_', '-')}"
        metavar = {"layers": "LAYERS", "steer_layers": "LAYERS"}.get(name)
        params.append(inspect.Parameter(name, kw, annotation=Optional[kind], default=typer.Option(
            None, flag, help=help_text, show_default=False, metavar=metavar)))
    return inspect.Signature(params)


train.__signature__ = _signature()
app.command("train")(user_errors(train))
