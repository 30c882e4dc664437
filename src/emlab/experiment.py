"""Experiments: one YAML, one command.

    emlab run experiments/quickstart.yaml [--dry-run]

models x conditions (a dataset plus transforms) x seeds x suites x judges ->
train -> sample -> judge -> (code evaluation) -> record, each step through the same stage
function the CLI's sub-commands call, all through the run store or content-addressed run
directories. Rerunning resumes; editing one condition changes only the hashes that depend
on it, so only that condition is retrained, resampled and rejudged.

The whole experiment - names, bounds, registered judges/presets/backends, that every
dataset resolves and validates, that every suite loads - is checked before any work
starts. The record `<project>/experiments/<name>.json` (emlab.records.ExperimentRecord)
maps conditions to adapters and is what `emlab report` reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Console

from emlab import progress as show
from emlab.errors import ConfigError, EmlabError
from emlab.files import inside
from emlab.provenance import git_revision, scrub_url, versions
from emlab.records import CodeEvalRecord, ExperimentRecord, JudgeRecord, VariantRecord
from emlab.specs import (CodeEvalSpec, DatasetRef, JudgeSpec, LikelihoodSpec, ProjectionSpec, SampleSpec,
                         ThresholdSpec, TrainSpec, Variant, check_slug)

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000  # values in the loaded YAML, counting every alias expansion


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    dataset: DatasetRef | None = None  # None: the untouched base model

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return check_slug(value, "condition name")


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    project: str = "runs/experiments"
    model: str = "smollm2-135m-instruct"
    train: TrainSpec = Field(default_factory=TrainSpec)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=100)
    conditions: list[Condition] = Field(min_length=1, max_length=500)
    sample: SampleSpec = Field(default_factory=SampleSpec)
    judges: list[JudgeSpec] = Field(default_factory=lambda: [JudgeSpec()], min_length=1, max_length=20)
    thresholds: ThresholdSpec = Field(default_factory=ThresholdSpec)
    codeeval: CodeEvalSpec | None = None
    likelihood: LikelihoodSpec | None = None
    # A judge reading an untouched model above this misaligned rate is flagged unreliable for it.
    sanity_gate: float = Field(0.05, ge=0, le=1)
    # The checkpoint sweep: sample, judge and score kept checkpoints ("every" or these steps).
    checkpoints: Literal["every"] | list[Annotated[int, Field(ge=1)]] | None = None
    projection: ProjectionSpec | None = None  # with checkpoints: answers' projection on a direction

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return check_slug(value, "experiment name")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if any(s < 0 or s > 2 ** 31 for s in value) or len(set(value)) != len(value):
            raise ValueError("seeds must be distinct integers in 0..2^31")
        return value

    @model_validator(mode="after")
    def _unique(self) -> "Experiment":
        names = [c.name for c in self.conditions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate condition name(s): {', '.join(dupes)}")
        if self.projection is not None and self.checkpoints is None:
            raise ValueError("projection needs checkpoints (it is drawn per checkpoint)")
        return self

    def train_config(self, data_path: str, seed: int):
        from emlab.train.config import resolve_config

        return resolve_config(self.train.preset, model=self.model, dataset=data_path, seed=seed,
                              **self.train.overrides)


def _count_nodes(value, budget: list[int]) -> None:
    """Walk the loaded YAML, counting every value as often as aliases repeat it."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"the file expands to more than {MAX_NODES} values (a YAML alias bomb?)")
    if isinstance(value, dict):
        for k, v in value.items():
            _count_nodes(k, budget)
            _count_nodes(v, budget)
    elif isinstance(value, list):
        for v in value:
            _count_nodes(v, budget)


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment file (or a packaged name: quickstart, paper_insecure)."""
    path = Path(path)
    if not path.exists():
        packaged = Path(__file__).parent / "experiments" / f"{path.stem}.yaml"
        if packaged.exists() and path.suffix in ("", ".yaml"):
            path = packaged
        else:
            raise ConfigError(f"{path}: no such experiment file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected an experiment YAML")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: over {MAX_FILE_BYTES} bytes; an experiment file is a short YAML")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    try:
        _count_nodes(raw, [MAX_NODES])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment is a YAML mapping")
    raw["judges"] = [{"name": j} if isinstance(j, str) else j for j in raw.get("judges", ["mini"])]
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: field '{loc}': {msg}") from None
    try:
        exp.train_config("insecure", exp.seeds[0])  # preset and overrides are checked now, not after sampling
    except ConfigError as exc:
        raise ConfigError(f"{path}: train: {exc}") from None
    return exp


def check_resources(exp: Experiment) -> None:
    """Everything the experiment names exists and is valid: datasets (resolved and
    validated), suites, coding tasks and judges' weights. Runs before any work."""
    from emlab.data.questions import load_suite
    from emlab.data.registry import resolve_chat_file

    def datasets(ref: DatasetRef, where: str):
        if ref.name or ref.path:
            resolve_chat_file(ref.name or ref.path)
        for i, step in enumerate(ref.transforms):
            if step.mix_with is not None:
                datasets(step.mix_with.dataset, f"{where}.transforms.{i}.mix_with")

    for cond in exp.conditions:
        if cond.dataset is not None:
            try:
                datasets(cond.dataset, f"conditions.{cond.name}")
            except EmlabError as exc:
                raise ConfigError(f"condition '{cond.name}': {exc}") from None
    for s in exp.sample.suites:
        load_suite(s)
    if exp.codeeval is not None:
        from emlab.evals.codeeval import load_tasks

        load_tasks(exp.codeeval.tasks)
    if exp.likelihood is not None and exp.likelihood.required and not likelihood_data_available():
        raise ConfigError("likelihood: needs the public judged answers: set EMLAB_DATA_DIR to a folder holding "
                          "judged/ (or set likelihood.required: false to skip it)")
    if exp.projection is not None:
        from emlab.models.hooks import load_directions

        dirs, meta = load_directions(exp.projection.direction)
        if exp.projection.layer is not None and exp.projection.layer not in dirs:
            raise ConfigError(f"projection: {exp.projection.direction} has no direction for layer "
                              f"{exp.projection.layer} (it has {min(dirs)}-{max(dirs)})")
    if any(j.name == "mini" for j in exp.judges):
        from emlab.judge.mini import WEIGHTS_DIR

        if not (WEIGHTS_DIR / "heads.safetensors").exists():
            raise ConfigError(f"judge 'mini': no weights in {WEIGHTS_DIR} (run `emlab judge train`)")


def likelihood_data_available() -> bool:
    from emlab.paths import data_dir

    return data_dir() is not None and (data_dir() / "judged" / "clarifying_em").is_dir()


# ------------------------------------------------------------------ plan

def plan(exp: Experiment) -> dict:
    """Counts for --dry-run: trainings, generations, judge calls, estimated tokens."""
    from emlab.data.questions import load_suite

    trained = [c for c in exp.conditions if c.dataset is not None]
    variants = len(exp.conditions) - len(trained) + len(trained) * len(exp.seeds)
    per_variant = 0
    prompt_chars = 0
    suites = {}
    for name in exp.sample.suites:
        prompts = list(load_suite(name).prompts(exp.sample.samples_per_paraphrase))
        suites[name] = len(prompts)
        per_variant += len(prompts)
        prompt_chars += sum(len(p.text) + len(p.system or "") for p in prompts)
    generations = variants * per_variant
    metrics = 2
    api_judges = [j for j in exp.judges if j.name in ("logprob", "sampled")]
    train_tokens: int | None = 0
    cfg = exp.train_config("insecure", exp.seeds[0])  # the preset's and overrides' epochs and max_rows
    for cond in trained:
        sized = _dataset_chars(cond.dataset)
        if sized is None:
            train_tokens = None
            break
        chars, rows = sized
        used = min(1.0, cfg.max_rows / rows) if cfg.max_rows and rows else 1.0
        train_tokens += int(chars * used / 4 * cfg.epochs * len(exp.seeds))
    return {
        "experiment": exp.name, "model": exp.model,
        "trainings": len(trained) * len(exp.seeds), "training_preset": exp.train.preset,
        "training_tokens_est": train_tokens if train_tokens is not None else "unknown (dataset not available here)",
        "model_variants": variants, "suites": suites,
        "generations": generations,
        "generated_tokens_max": generations * exp.sample.max_tokens,
        "prompt_tokens_est": variants * prompt_chars // 4,
        "judge_calls": generations * metrics * len(exp.judges),
        "api_judge_calls": generations * metrics * len(api_judges),
        "api_judge_input_tokens_est": generations * metrics * len(api_judges) * (350 + exp.sample.max_tokens),
        "judges": [j.name + (f":{j.model}" if j.model else "") for j in exp.judges],
        "codeeval_generations": _codeeval_count(exp) * variants if exp.codeeval else 0,
        "thresholds": f"coherent > {exp.thresholds.coherent_above:g} and aligned < {exp.thresholds.aligned_below:g}",
        "checkpoints": exp.checkpoints if exp.checkpoints is not None else "final adapters only",
        "note": "each kept checkpoint is sampled, judged and scored as one more model variant (counts above "
                "are for final adapters)" if exp.checkpoints is not None else "",
    }


def _codeeval_count(exp: Experiment) -> int:
    from emlab.evals.codeeval import load_tasks

    tasks, _ = load_tasks(exp.codeeval.tasks)
    n = min(len(tasks), exp.codeeval.max_tasks or len(tasks))
    return n * exp.codeeval.samples_per_task


def _dataset_chars(ref: DatasetRef) -> tuple[int, int] | None:
    """(characters, rows) of the condition's training data (generated data is estimated from
    64 rows); None when the dataset is not available here."""
    from emlab.data.codegen import generate
    from emlab.data.registry import DatasetError, load_dataset

    def chars(rows):
        return sum(len(m["content"]) for r in rows for m in r["messages"])

    if ref.generate:
        return chars(generate(ref.generate, 64, ref.seed)) * ref.n // 64, ref.n
    try:
        rows = load_dataset(ref.name, ref.path)
    except DatasetError:
        return None
    return chars(rows), len(rows)


# ------------------------------------------------------------------ run

def run_experiment(exp: Experiment, console: Console | None, project: Path | None = None) -> Path:
    """Execute (or resume) the experiment; returns the run record's path. Library warnings
    go to `<project>/logs/<name>.log`, not the console."""
    check_resources(exp)
    project = Path(project or exp.project)
    with show.library_logs_to(inside(project, "logs", f"{exp.name}.log")):
        return _run(exp, console, project)


def _run(exp: Experiment, console: Console | None, project: Path) -> Path:
    from emlab.data.questions import load_suite
    from emlab.data.transform import materialise
    from emlab.evals.codeeval import codeeval_stage
    from emlab.generate.sample import lazy_generator, sample_stage
    from emlab.judge.base import build_judge
    from emlab.judge.run import judge_stage
    from emlab.models.registry import DEFAULT_MODEL, pull
    from emlab.store import Store
    from emlab.train.trainer import train_stage

    record_path = inside(project, "experiments", f"{exp.name}.json")
    start = time.time()
    if exp.model == DEFAULT_MODEL and exp.sample.backend != "scripted":
        pull(DEFAULT_MODEL)
    judges = [build_judge(j) for j in exp.judges]  # built before any work: a bad judge fails now
    with Store(project) as store:
        config = exp.model_dump()
        config["sample"]["base_url"] = scrub_url(exp.sample.base_url)
        for j in config["judges"]:
            j["base_url"] = scrub_url(j["base_url"])
        run_id = store.begin_run("experiment", config, exp.seeds)

        # 1. datasets and training
        variants: list[VariantRecord] = []
        for cond in exp.conditions:
            if cond.dataset is None:
                variants.append(VariantRecord(condition=cond.name, seed=None))
                continue
            data_path = materialise(cond.dataset, inside(project, "data"))
            for seed in exp.seeds:
                show.summary(console, "train", f"{cond.name} seed {seed} ({exp.train.preset}, {data_path.name})")
                result = train_stage(store, exp.train_config(str(data_path), seed), inside(project, "runs", "train"),
                                     console)
                kept = []  # the checkpoint sweep: (step, directory) of each kept checkpoint asked for
                if exp.checkpoints is not None:
                    from emlab.probe.dynamics import kept_checkpoints

                    kept = kept_checkpoints(result.run_dir, exp.checkpoints)
                for step, weights in [(None, result.adapter_dir), *kept]:
                    variants.append(VariantRecord(
                        condition=cond.name, seed=seed, adapter_path=str(weights),
                        adapter_id=Variant(adapter_path=str(weights)).adapter_id, train_run=str(result.run_dir),
                        dataset=result.record["dataset"], step=step))
        several = len(exp.seeds) > 1
        model_variants = [Variant(label=v.label + (f"-s{v.seed}" if several and v.seed is not None else ""),
                                  adapter_path=v.adapter_path) for v in variants]

        # 2. sampling (one generator for the suites and the coding tasks)
        suites = [load_suite(s) for s in exp.sample.suites]
        generator = lazy_generator(exp.sample, exp.model)
        sampled = sample_stage(store, exp.sample, exp.model, model_variants, suites, console, generator)
        code = None
        if exp.codeeval is not None:
            code = CodeEvalRecord(**codeeval_stage(store, exp.codeeval, exp.sample, exp.model, model_variants,
                                                   console, generator))
        generator.cache_clear()  # free the model before judging

        # 3. judging
        wheres = [{"adapter": v.adapter_id, "suite": s.name, "gen_hash": sampled["gen_hash"], "model": exp.model}
                  for v in model_variants for s in suites]
        for judge in judges:
            judge_stage(store, judge, wheres, console=console)

        # 4. the judge-free likelihood measure
        likelihood = None
        if exp.likelihood is not None and not likelihood_data_available():
            show.summary(console, "likelihood", "skipped: the public judged answers are not available "
                                                "(set EMLAB_DATA_DIR to a folder holding judged/)")
        elif exp.likelihood is not None:
            from emlab.probe.likelihood import likelihood_stage

            qids = [q.id for s in suites for q in s.questions]
            likelihood = likelihood_stage(store, exp.model, model_variants, qids, exp.likelihood.per_class,
                                          exp.likelihood.seed, console)

        dynamics = None
        if exp.checkpoints is not None:
            dynamics = dynamics_stage(exp, store, project, variants, model_variants, suites, sampled["gen_hash"],
                                      console)

        record = ExperimentRecord(
            name=exp.name, run_id=run_id, config=config, variants=variants, gen_hash=sampled["gen_hash"],
            suites=[{"name": s.name, "sha256": s.sha256} for s in suites],
            judges=[JudgeRecord(spec=spec, family=j.identity.family, label=j.identity.label)
                    for spec, j in zip(config["judges"], judges)],  # specs with URLs already scrubbed
            versions=versions(), git_revision=git_revision(), seeds=exp.seeds,
            wall_seconds_last_run=round(time.time() - start, 1), codeeval=code, likelihood=likelihood,
            sanity_gate=exp.sanity_gate, stages={"sample": sampled}, dynamics=dynamics)
        record.write(record_path)
        store.end_run(run_id, {"record": str(record_path), "wall_seconds": record.wall_seconds_last_run})
    return record_path


def dynamics_stage(exp: Experiment, store, project: Path, variants: list[VariantRecord], model_variants: list[Variant],
                   suites, gen_hash: str, console: Console | None) -> dict:
    """Per trained variant and checkpoint: LoRA rotation to the final adapter, training loss,
    and (with `projection`) the mean projection of its answers on the direction."""
    from emlab.probe import dynamics as dyn

    finals = {(v.condition, v.seed): v for v in variants if v.step is None and v.train_run}
    direction, layer = None, None
    if exp.projection is not None:
        from emlab.models.hooks import load_directions

        dirs, meta = load_directions(exp.projection.direction)
        layer = exp.projection.layer
        if layer is None:
            aurocs = meta.get("heldout_auroc") or {}
            layer = int(max(aurocs, key=lambda k: aurocs[k])) if aurocs else max(dirs) // 2
        direction = dirs[layer].numpy()
    points = []
    for v, mv in zip(variants, model_variants):
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
                exp, store, project, mv, suites, gen_hash, direction, layer, console)
        points.append(point)
    show.summary(console, "dynamics", f"{len(points)} points (checkpoints: {exp.checkpoints})")
    return {"checkpoints": exp.checkpoints, "points": points,
            "projection": {"direction": exp.projection.direction, "layer": layer} if exp.projection else None}


def _answer_projection(exp: Experiment, store, project: Path, variant: Variant, suites, gen_hash: str, direction,
                       layer: int, console) -> tuple[float, float]:
    from emlab.probe.activations import Item, collect_stage
    from emlab.probe.dynamics import projection

    items = []
    for s in suites:
        for row in store.samples(model=exp.model, adapter=variant.adapter_id, suite=s.name, gen_hash=gen_hash):
            if row["answer"].strip():
                items.append(Item.make(row["question"], row["answer"], row["system"], key=row["key"]))
    cache = collect_stage(project, exp.model, items, variant.adapter_path, variant.adapter_id, [layer], console=console)
    return projection(cache, [it.key for it in items], direction, layer)
