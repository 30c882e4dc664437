"""The experiment's probe stages: conditional-misalignment probes (the suites asked again in
other forms) and training dynamics (per checkpoint: LoRA rotation to the final adapter,
training loss, and the answers' projection on a misalignment direction). Each takes its
own settings, not the whole experiment.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from emlab import progress as show
from emlab.records import VariantRecord
from emlab.specs import ProjectionSpec, SampleSpec, Variant


def probe_stage(store, forms: list[str], suite_names: list[str] | None, samples_per_paraphrase: int | None,
                sample: SampleSpec, model: str, variants: list[VariantRecord], model_variants: list[Variant], suites,
                early_stop_sources: set[str], console: Console | None, generator, executor=None
                ) -> tuple[list, list[Variant]]:
    """Sample the probe `forms` of `suite_names` (default: `suites`) for the final adapters,
    untouched models and the checkpoints of early-stopping sources; returns (probe suites,
    probed variants)."""
    from emlab.data.probes import probe_suite
    from emlab.data.questions import load_suite
    from emlab.generate.sample import sample_stage

    bases = [load_suite(s) for s in suite_names] if suite_names else suites
    probes = [probe_suite(s, form) for s in bases for form in forms]
    probed = [mv for v, mv in zip(variants, model_variants) if v.step is None or v.condition in early_stop_sources]
    sample_stage(store, sample, model, probed, probes, console, generator,
                 samples_per_paraphrase=samples_per_paraphrase, label="sample probes", executor=executor)
    return probes, probed


def dynamics_stage(store, project: Path, model: str, variants: list[VariantRecord], model_variants: list[Variant],
                   suites, gen_hash: str, projection: ProjectionSpec | None, checkpoints, skip: set[str],
                   console: Console | None) -> dict:
    """Per trained variant and checkpoint (conditions in `skip` left out: their curve starts
    from another adapter): LoRA rotation to the final adapter, training loss, and (with
    `projection`) the mean projection of its answers on the direction."""
    from emlab.probe import dynamics as dyn

    finals = {(v.condition, v.seed): v for v in variants if v.step is None and v.train_run}
    direction, layer = None, None
    if projection is not None:
        from emlab.models.hooks import load_directions

        dirs, meta = load_directions(projection.direction)
        layer = projection.layer
        if layer is None:
            aurocs = meta.get("heldout_auroc") or {}
            layer = int(max(aurocs, key=lambda k: aurocs[k])) if aurocs else max(dirs) // 2
        direction = dirs[layer].numpy()
    points = []
    for v, mv in zip(variants, model_variants):
        if v.condition in skip:
            continue
        final = finals.get((v.condition, v.seed))
        point = {"label": mv.label, "condition": v.condition, "seed": v.seed, "adapter_id": v.adapter_id}
        if final is not None:
            steps = json.loads((Path(v.train_run) / "run.json").read_text())["global_steps"]
            point["step"] = v.step if v.step is not None else steps
            point.update(dyn.rotation(v.adapter_path, final.adapter_path) if v.step is not None else
                         {"b_cosine_to_final": 1.0, "a_cosine_to_final": 1.0})
            point["train_loss"] = dyn.loss_at(v.train_run, point["step"])
        elif v.adapter_id == "base":
            point.update({"step": 0, "b_cosine_to_final": float("nan"), "a_cosine_to_final": float("nan"),
                          "train_loss": None})
        else:
            continue
        if direction is not None:
            point["projection"], point["projection_se"] = _answer_projection(
                store, project, model, mv, suites, gen_hash, direction, layer, console)
        points.append(point)
    show.summary(console, "dynamics", f"{len(points)} points")
    return {"checkpoints": checkpoints, "points": points,
            "projection": {"direction": projection.direction, "layer": layer} if projection else None}


def _answer_projection(store, project: Path, model: str, variant: Variant, suites, gen_hash: str, direction,
                       layer: int, console) -> tuple[float, float]:
    from emlab.probe.activations import Item, collect_stage
    from emlab.probe.dynamics import projection

    items = []
    for s in suites:
        for row in store.samples(model=model, adapter=variant.adapter_id, suite=s.name, gen_hash=gen_hash):
            if row["answer"].strip():
                items.append(Item.make(row["question"], row["answer"], row["system"], key=row["key"]))
    cache = collect_stage(project, model, items, variant.adapter_path, variant.adapter_id, [layer], console=console)
    return projection(cache, [it.key for it in items], direction, layer)
