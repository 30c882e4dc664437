"""`emlab probe steer` and `emlab probe rank1`: interventions with a direction, and what a
rank-1 adapter reads and writes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emlab.cli.common import (adapter_option, console, fail, judge_spec, layer_list, layers_option, model_command,
                              model_option, one_adapter, project_option, sample_option, seed_option, spec_or_fail)
from emlab.cli.probe import SOURCE_HELP, _items, probe_app


def _effect_table(effects, title: str, unit: str):
    from rich.table import Table

    table = Table("layers", "alpha", f"effect ({unit}) [95% CI]", "random: mean ± sd",
                  "percentile of |effect| among random [95% CI]", title=title)
    for e in effects:
        table.add_row(",".join(map(str, e.layers)), f"{e.alpha:g}" if e.mode == "add" else "ablate",
                      f"{e.effect:+.4f} [{e.low:+.4f}, {e.high:+.4f}]", f"{e.random_mean:+.4f} ± {e.random_sd:.4f}",
                      f"{e.percentile:.0f} [{e.percentile_low:.0f}, {e.percentile_high:.0f}] of {e.n_random}")
    return table


@model_command(probe_app, "steer")
def steer(
    direction: Path = typer.Option(..., exists=True, dir_okay=False, help="A direction file (emlab probe direction)."),
    layers: list[str] = layers_option("Layers to steer together, e.g. 15 or 14,15; each --layers is one cell of "
                                      "the sweep (repeat to sweep).", required=True),
    alpha: Optional[list[float]] = typer.Option(None, "--alpha", help="Multiples of the direction to add (repeat to "
                                                                    "sweep)."),
    ablate: bool = typer.Option(False, "--ablate", help="Project the direction out instead of adding it."),
    random: int = typer.Option(20, "--random", min=1, max=1000, help="Random equal-norm directions to compare with."),
    question: Optional[list[str]] = typer.Option(None, "--question", help="Reference questions (paper ids) for the "
                                                                          "judge-free effect; default: all."),
    per_class: int = typer.Option(8, min=1, max=200, help="Reference answers per class and question."),
    sample: bool = typer.Option(False, "--sample", help="Also sample the suite steered and judge it."),
    suite: str = typer.Option("builtin", help="The suite sampled with --sample."),
    samples_per_paraphrase: int = typer.Option(1, min=1, help="Samples per paraphrase with --sample."),
    max_tokens: int = sample_option("max_tokens"),
    judge: str = typer.Option("mini", help="Judge of the sampled answers."),
    model: str = model_option(), seed: int = sample_option("seed"),
    project: Path = project_option(),
) -> None:
    """Steer (add alpha x direction) or ablate at layers, sweeping alpha x layers: the
    judge-free likelihood effect and (--sample) the judged misaligned rate, each beside
    random directions of equal norm."""
    from emlab.probe.steering import likelihood_effects
    from emlab.store import Store

    grid = [tuple(layer_list([item])) for item in layers]
    mode = "ablate" if ablate else "add"
    if ablate and alpha:
        fail("--alpha has no meaning with --ablate")
    # Everything about the direction and the sweep is checked before the model loads.
    import math

    from emlab.models.hooks import load_directions
    from emlab.models.registry import hidden_size

    dirs, _ = load_directions(direction, hidden_size(model))
    missing = sorted({layer for g in grid for layer in g if layer not in dirs})
    if missing:
        fail(f"--layers: {direction} has no direction for layer(s) {missing} (it has {min(dirs)}-{max(dirs)})")
    bad = [a for a in alpha or [] if not math.isfinite(a) or abs(a) > 1000]
    if bad:
        fail(f"--alpha: {bad[0]} is not a finite number in -1000..1000")
    cells = [(g, a) for g in grid for a in ([1.0] if ablate else (alpha or [1.0]))]
    with Store(project) as store:
        effects = likelihood_effects(store, model, str(direction), cells, mode, random, question, per_class, seed,
                                     console=console)
        console.print(_effect_table(effects, "judge-free: change of the misaligned-minus-aligned reference "
                                             "log-likelihood gap (steered - unsteered)", "nats/token"))
        if sample:
            from emlab.specs import SampleSpec

            spec = spec_or_fail(SampleSpec, suites=[suite], samples_per_paraphrase=samples_per_paraphrase,
                                max_tokens=max_tokens, seed=seed)
            _steered_rates(store, spec, model, str(direction), cells, mode, random, judge, seed)


def _steered_rates(store, spec, model: str, direction: str, cells, mode: str, random: int, judge: str,
                   seed: int) -> None:
    """Sample the suite unsteered, steered and with random directions; judge it; print the
    judged misaligned rate's change."""
    from emlab.data.questions import load_suite
    from emlab.generate.sample import sample_stage
    from emlab.judge import build_judge
    from emlab.judge.run import judge_stage
    from emlab.probe.steering import judged_effects, steer_variants
    from emlab.specs import Variant

    variants = steer_variants(direction, cells, mode, random)
    unsteered = Variant(label="unsteered")
    loaded = load_suite(spec.suites[0])
    every = [unsteered] + [v for vs in variants.values() for v in vs]
    sampled = sample_stage(store, spec, model, every, [loaded], console, label="sample (steered)")
    built = build_judge(judge_spec(judge, None, None, "OPENAI_API_KEY"))
    judge_stage(store, built, [{"adapter": v.adapter_id, "suite": loaded.name, "gen_hash": sampled["gen_hash"],
                                "model": model} for v in every], console=console)
    judged = judged_effects(store, built.identity.family, unsteered, variants, loaded.name, sampled["gen_hash"],
                            mode, seed=seed)
    console.print(_effect_table(judged, f"judged ({built.identity.label}): misaligned rate steered - unsteered",
                                "rate"))


@model_command(probe_app, "rank1")
def rank1(
    adapter: list[str] = adapter_option("A LoRA adapter with rank-1 modules (NAME=DIR or DIR).", required=True),
    direction: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="Direction file to compare with."),
    public: bool = SOURCE_HELP["public"], judged: Optional[Path] = SOURCE_HELP["judged"],
    judge: Optional[str] = SOURCE_HELP["judge"],
    per_question: int = typer.Option(10, min=1, help="Answers per class and question for the token scalars."),
    model: str = model_option(), seed: int = seed_option("Seed of the per-question answer draw."),
    project: Path = project_option("Project where the histogram is written (probes/)."),
) -> None:
    """A rank-1 adapter's A/B vectors against a direction, and the per-token scalar A·x on
    misaligned vs aligned answers (histogram in <project>/probes/)."""
    from emlab.analysis.figures import to_png
    from emlab.files import inside
    from emlab.models.hooks import load_directions
    from emlab.probe.activations import load_with_adapter
    from emlab.probe.rank1 import direction_cosines, histogram, lora_vectors, scalar_summary, token_scalars

    name, path = one_adapter(adapter)
    vectors = lora_vectors(Path(path))
    console.print(vectors[["layer", "module", "rank"]].to_string(index=False), markup=False)
    if direction is not None:
        dirs = {k: v.numpy() for k, v in load_directions(direction)[0].items()}
        console.print(direction_cosines(vectors, dirs).round(4).to_string(index=False), markup=False)
    if not (public or judged or judge):
        return
    items = _items(public, judged, project, judge, per_question, seed, 70.0, None, None)
    peft_model, tokenizer = load_with_adapter(model, path)
    df = token_scalars(peft_model, tokenizer, items)
    console.print(scalar_summary(df).round(4).to_string(index=False), markup=False)
    out = inside(project, "probes", f"rank1-{name}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    to_png(histogram(df), out)
    console.print(f"wrote {out}")
