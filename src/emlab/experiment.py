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
import os
import time
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from rich.console import Console

from emlab import progress as show
from emlab.errors import ConfigError, EmlabError
from emlab.files import inside
from emlab.misaligned import PERSONA
from emlab.mitigate import Mitigation
from emlab.provenance import git_revision, scrub_url, scrub_urls, versions
from emlab.records import CodeEvalRecord, ExperimentRecord, JudgeRecord, VariantRecord
from emlab.specs import (DEFAULT_MODEL, CodeEvalSpec, DatasetRef, InContextSpec, JudgeSpec, LikelihoodSpec,
                         ProjectionSpec, SampleSpec, ThresholdSpec, TrainSpec, Variant, check_slug)

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000  # values in the loaded YAML, counting every alias expansion


Checkpoints = Literal["every"] | list[Annotated[int, Field(ge=1)]]


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    dataset: DatasetRef | None = None  # None: the untouched base model (or a derived mitigation)
    mitigation: Mitigation | None = None  # emlab.mitigate
    checkpoints: Checkpoints | None = None  # this condition's sweep (default: the experiment's)
    zoo: str | None = None  # a public model organism (emlab.models.zoo) on the experiment's base model
    served: str | None = None  # a model by name on the sampling endpoint: an API finetune (ft:...), a served adapter
    in_context: InContextSpec | None = None  # narrow examples as prior turns, no training (a list of k: a sweep)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return check_slug(value, "condition name")

    @model_validator(mode="after")
    def _mitigation_fits(self) -> "Condition":
        derived = self.mitigation is not None and self.mitigation.derived_from is not None
        if derived and self.dataset is not None:
            raise ValueError(f"condition '{self.name}': realign and early_stop take no dataset (they start from "
                             "another condition)")
        if self.mitigation is not None and not derived and self.dataset is None:
            raise ValueError(f"condition '{self.name}': a training-time mitigation needs a dataset")
        if self.served is not None and (self.dataset is not None or self.mitigation is not None or self.zoo):
            raise ValueError(f"condition '{self.name}': a served model is already trained (no dataset, mitigation "
                             "or zoo)")
        if self.in_context is not None and (self.dataset is not None or self.mitigation is not None or self.zoo):
            raise ValueError(f"condition '{self.name}': in_context examples go before an untouched or served "
                             "model's questions (no dataset, mitigation or zoo)")
        if self.zoo is not None:
            from emlab.models.zoo import get

            if self.dataset is not None or self.mitigation is not None:
                raise ValueError(f"condition '{self.name}': a zoo organism is already trained (no dataset or "
                                 "mitigation)")
            try:
                get(self.zoo)
            except EmlabError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def trained(self) -> bool:
        return self.dataset is not None or (self.mitigation is not None and self.mitigation.realign is not None)


class ProbeSpec(BaseModel):
    """Conditional-misalignment probes: the suites asked again in other forms
    (emlab.data.probes), for the final adapters and early-stopping candidates."""

    model_config = ConfigDict(extra="forbid")
    forms: list[str] = Field(min_length=1, max_length=50)
    suites: list[str] | None = None  # None: the experiment's sample suites
    samples_per_paraphrase: int | None = Field(None, ge=1, le=10_000)

    @field_validator("forms")
    @classmethod
    def _forms(cls, value: list[str]) -> list[str]:
        from emlab.data.probes import check_form

        for form in value:
            try:
                check_form(form)
            except EmlabError as exc:
                raise ValueError(str(exc)) from None
        return value


class CapabilitySpec(BaseModel):
    """The benign exact-answer check (emlab.evals.capability) for every variant."""

    model_config = ConfigDict(extra="forbid")
    tasks: int = Field(36, ge=1, le=10_000)
    seed: int = Field(0, ge=0)
    max_tokens: int = Field(48, ge=1, le=1024)


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _source: str | None = PrivateAttr(None)  # the file's text, kept for the record
    name: str
    description: str = ""
    project: str = "runs/experiments"
    model: str = DEFAULT_MODEL
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
    checkpoints: Checkpoints | None = None
    projection: ProjectionSpec | None = None  # with checkpoints: answers' projection on a direction
    probes: ProbeSpec | None = None  # conditional-misalignment probes
    capability: CapabilitySpec | None = None  # benign exact-answer check, before vs after
    unmitigated: str | None = None  # the condition mitigations are compared with
    # The headline comparison [condition, control] (default: insecure vs secure when both exist).
    compare: tuple[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return check_slug(value, "experiment name")

    @field_validator("conditions", mode="before")
    @classmethod
    def _k_sweeps(cls, value):
        """A condition whose in_context.k is a list becomes one condition per k, `<name>-k<k>`."""
        if not isinstance(value, list):
            return value
        out = []
        for c in value:
            k = c.get("in_context", {}).get("k") if isinstance(c, dict) and isinstance(c.get("in_context"), dict) \
                else None
            if isinstance(k, list) and k and all(isinstance(x, int) for x in k):
                out += [{**c, "name": f"{c.get('name')}-k{x}", "in_context": {**c["in_context"], "k": x}} for x in k]
            else:
                out.append(c)
        return out

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
        seen: dict[str, Condition] = {}
        for c in self.conditions:
            source = c.mitigation.derived_from if c.mitigation else None
            if source is not None:
                if source not in seen or not seen[source].trained:
                    raise ValueError(f"condition '{c.name}': 'from: {source}' must name a trained condition listed "
                                     "before it")
                if c.mitigation.early_stop and (seen[source].checkpoints or self.checkpoints) is None:
                    raise ValueError(f"condition '{c.name}': early_stop needs checkpoints on '{source}' (its "
                                     "`checkpoints:` or the experiment's)")
            if c.zoo is not None:
                from emlab.models.zoo import get

                if get(c.zoo).base_model != self.model:
                    raise ValueError(f"condition '{c.name}': zoo:{c.zoo} is an adapter on {get(c.zoo).base_model}, "
                                     f"not on the experiment's model {self.model}")
            seen[c.name] = c
        unknown = [n for n in (self.compare or ()) if n not in seen]
        if unknown:
            raise ValueError(f"compare: no condition named {', '.join(map(repr, unknown))}")
        if self.unmitigated is not None and not (self.unmitigated in seen and seen[self.unmitigated].trained):
            raise ValueError(f"unmitigated: '{self.unmitigated}' is not a trained condition of this experiment")
        return self

    def train_config(self, data_path: str, seed: int, **extra):
        from emlab.train.config import resolve_config

        return resolve_config(self.train.preset, model=self.model, dataset=data_path, seed=seed,
                              **{**self.train.overrides, **extra})



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


JUDGE_NAMES = ("mini", "local", "logprob", "sampled")


def _judge_entry(entry, i: int, path) -> dict:
    """A `judges:` item as a mapping; a bare name that is a model rather than a judge is
    refused with the spec it means."""
    if not isinstance(entry, str):
        return entry
    if entry in JUDGE_NAMES:
        return {"name": entry}
    model = {"gpt4o": "gpt-4o-2024-08-06", "gpt-4o": "gpt-4o-2024-08-06"}.get(entry.lower(), entry)
    raise ConfigError(f"{path}: field 'judges.{i}': '{entry}' is not a judge ({', '.join(JUDGE_NAMES)}); an API model "
                      f"judges through logprob: {{name: logprob, model: {model}}}")


def read_experiment_yaml(path: str | Path) -> tuple[dict, str, Path]:
    """An experiment file (or a packaged name: quickstart, paper_insecure) as (mapping, text,
    resolved path), refused when oversized, not YAML, an alias bomb or not a mapping."""
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
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    try:
        _count_nodes(raw, [MAX_NODES])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment is a YAML mapping")
    return raw, text, path


def validate_spec(model: type[BaseModel], raw: dict, path: str | Path):
    """`raw` as a `model`, the first error raised as one line naming the file and field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: field '{loc}': {msg}") from None


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment file (or a packaged name: quickstart, paper_insecure)."""
    raw, text, path = read_experiment_yaml(path)
    if raw.get("kind") is not None:
        raise ConfigError(f"{path}: field 'kind': a '{raw['kind']}' experiment runs with `emlab run`, not as a "
                          "train-sample-judge experiment")
    raw["judges"] = [_judge_entry(j, i, path) for i, j in enumerate(raw.get("judges", ["mini"]))]
    exp = validate_spec(Experiment, raw, path)
    try:
        exp.train_config("insecure", exp.seeds[0])  # preset and overrides are checked now, not after sampling
    except ConfigError as exc:
        raise ConfigError(f"{path}: train: {exc}") from None
    exp._source = text
    return exp


def check_resources(exp: Experiment, dry_run: bool = False) -> list[str]:
    """Everything the experiment names exists and is valid: datasets (resolved and
    validated), suites, coding tasks and judges' weights. Runs before any work. With
    `dry_run`, what this machine lacks but a user prepares - direction files (an earlier emlab
    stage makes them), registered datasets it cannot fetch - is returned as inputs to prepare
    instead of failing."""
    to_prepare: list[str] = []
    from emlab.data.questions import load_suite
    from emlab.models.registry import check_model_name

    try:
        # An endpoint's model (and an API finetune's base) is named as the endpoint names it.
        if exp.sample.backend not in ("openai", "scripted") and not any(c.served for c in exp.conditions):
            check_model_name(exp.model)
    except EmlabError as exc:
        raise ConfigError(f"field 'model': {exc}") from None
    to_prepare += missing_keys(exp, dry_run)
    from emlab.data.registry import DatasetMissing, resolve_chat_file

    def datasets(ref: DatasetRef, where: str):
        if ref.name or ref.path:
            resolve_chat_file(ref.name or ref.path)
        for i, step in enumerate(ref.transforms):
            other = step.mix_with or step.dilute_with
            if other is not None:
                datasets(other.dataset, f"{where}.transforms.{i}")

    from emlab.mitigate import mitigated_dataset

    for cond in exp.conditions:
        refs = [mitigated_dataset(cond.dataset, cond.mitigation)] if cond.dataset is not None else []
        if cond.mitigation is not None and cond.mitigation.realign and cond.mitigation.realign.dataset:
            refs.append(cond.mitigation.realign.dataset)
        try:
            for ref in refs:
                try:
                    datasets(ref, f"conditions.{cond.name}")
                except DatasetMissing as exc:
                    # A registered dataset this machine cannot fetch is an input to prepare in a dry run.
                    if not dry_run:
                        raise
                    to_prepare.append(f"dataset for condition '{cond.name}': {exc}")
            steer = cond.mitigation.preventive_steering if cond.mitigation else None
            if steer is not None and dry_run and not Path(steer.direction).is_file():
                to_prepare.append(f"{steer.direction} (condition '{cond.name}'; make it with `emlab probe direction`)")
            elif steer is not None:
                from emlab.models.hooks import load_directions
                from emlab.models.registry import hidden_size

                dirs, _ = load_directions(steer.direction, hidden_size(exp.model))
                missing = [layer for layer in steer.layers if layer not in dirs]
                if missing:
                    raise ConfigError(f"{steer.direction}: no direction for layer(s) {missing}")
        except EmlabError as exc:
            raise ConfigError(f"condition '{cond.name}': {exc}") from None
    seen: dict[str, tuple[str, str]] = {}
    for s in exp.sample.suites + (exp.probes.suites or [] if exp.probes else []):
        loaded = load_suite(s)
        # Samples and rubrics are found by a suite's name: two different suites under one name
        # would share both.
        if loaded.name in seen and seen[loaded.name][0] != loaded.sha256:
            raise ConfigError(f"suites {seen[loaded.name][1]!r} and {s!r} are both named '{loaded.name}' but differ: "
                              "rename one file")
        seen[loaded.name] = (loaded.sha256, s)
    if exp.codeeval is not None:
        from emlab.evals.codeeval import load_tasks

        load_tasks(exp.codeeval.tasks)
    if exp.likelihood is not None and exp.likelihood.required and not likelihood_data_available():
        raise ConfigError("likelihood: needs the public judged answers: set EMLAB_DATA_DIR to a folder holding "
                          "judged/ (or set likelihood.required: false to skip it)")
    if exp.projection is not None:
        from emlab.models.hooks import load_directions
        from emlab.models.registry import hidden_size

        dirs, meta = load_directions(exp.projection.direction, hidden_size(exp.model))
        if exp.projection.layer is not None and exp.projection.layer not in dirs:
            raise ConfigError(f"projection: {exp.projection.direction} has no direction for layer "
                              f"{exp.projection.layer} (it has {min(dirs)}-{max(dirs)})")
    for j in exp.judges:
        if j.name == "mini":
            from emlab.judge.mini import weights_dir_of

            folder = weights_dir_of(j.default_model())
            if not any((folder / f).exists() for f in ("weights.safetensors", "heads.safetensors")):
                raise ConfigError(f"judge 'mini': no weights in {folder} (run `emlab judge train`)")
    return to_prepare


def missing_keys(exp: Experiment, dry_run: bool) -> list[str]:
    """API keys the experiment needs and the environment lacks (OpenAI's own endpoint only: a
    local or self-hosted server takes any key). A run stops here; a dry run lists them."""
    needs = [(f"judge '{j.name}' ({j.default_model()})", j.api_key_env) for j in exp.judges
             if j.name in ("logprob", "sampled") and j.base_url is None]
    if exp.sample.backend == "openai" and exp.sample.base_url is None:
        needs.append(("sample.backend openai", exp.sample.api_key_env))
    missing = [f"{env} (for {what})" for what, env in needs if not os.environ.get(env)]
    if missing and not dry_run:
        raise ConfigError(f"API key not set: {'; '.join(missing)}: export it, or point base_url at a server that "
                          "needs none")
    return [f"set {m}" for m in missing]


def likelihood_data_available() -> bool:
    from emlab.paths import data_dir

    return data_dir() is not None and (data_dir() / "judged" / "clarifying_em").is_dir()


# ------------------------------------------------------------------ plan

def plan(exp: Experiment) -> dict:
    """Counts for --dry-run: trainings, generations, judge calls, estimated tokens."""
    from emlab.data.questions import load_suite
    from emlab.mitigate import mitigated_dataset, realign_plan

    trained = [c for c in exp.conditions if c.trained]
    untouched = [c for c in exp.conditions if not c.trained and not (c.mitigation and c.mitigation.early_stop)]
    variants = len(untouched) + len(trained) * len(exp.seeds)
    per_variant = 0
    prompt_chars = 0
    suites = {}
    for name in exp.sample.suites:
        prompts = list(load_suite(name).prompts(exp.sample.samples_per_paraphrase))
        suites[name] = len(prompts)
        per_variant += len(prompts)
        prompt_chars += sum(len(p.text) + len(p.system or "") for p in prompts)
    generations = variants * per_variant
    context_tokens = _context_tokens(exp)
    prompt_tokens = variants * prompt_chars // 4 + sum(context_tokens.values()) * per_variant
    api_judges = [j for j in exp.judges if j.name in ("logprob", "sampled")]
    train_tokens: int | None = 0
    cfg = exp.train_config("insecure", exp.seeds[0])  # the preset's and overrides' epochs and max_rows
    for cond in trained:
        if cond.dataset is None:  # re-alignment: max(examples) rows of its data
            ref, _, extra = realign_plan(cond.mitigation.realign, cfg.per_device_batch_size *
                                         cfg.gradient_accumulation_steps)
            sized, max_rows = _dataset_chars(ref), extra["max_rows"]
        else:
            ref = mitigated_dataset(cond.dataset, cond.mitigation)
            sized, max_rows = _dataset_chars(ref), cfg.max_rows
        if sized is None:
            train_tokens = None
            break
        chars, rows = sized
        used = min(1.0, max_rows / rows) if max_rows and rows else 1.0
        train_tokens += int(chars * used / 4 * cfg.epochs * len(exp.seeds))
    probes = 0
    if exp.probes is not None:
        from emlab.data.probes import probe_suite

        for name in exp.probes.suites or exp.sample.suites:
            for form in exp.probes.forms:
                probes += len(list(probe_suite(load_suite(name), form).prompts(
                    exp.probes.samples_per_paraphrase or exp.sample.samples_per_paraphrase)))
        probes *= variants
    return {
        "experiment": exp.name, "model": exp.model,
        "trainings": len(trained) * len(exp.seeds), "training_preset": exp.train.preset,
        "training_tokens_est": train_tokens if train_tokens is not None else "unknown (dataset not available here)",
        "model_variants": variants, "suites": suites,
        "generations": generations,
        "generated_tokens_max": generations * exp.sample.max_tokens,
        "prompt_tokens_est": prompt_tokens,
        "in_context_tokens_est": context_tokens or "no in-context conditions",
        "sampling_usd_est": _sampling_usd(exp, prompt_tokens, generations * exp.sample.max_tokens),
        "judge_calls": (generations + probes) * sum(len(j.metrics()) for j in exp.judges),
        "api_judge_calls": (generations + probes) * sum(len(j.metrics()) for j in api_judges),
        "api_judge_input_tokens_est": (generations + probes) * sum(len(j.metrics()) for j in api_judges) *
                                      (350 + exp.sample.max_tokens),
        "api_judge_usd_est": _judge_usd(api_judges, generations + probes, 350 + exp.sample.max_tokens),
        "judges": [j.name + (f":{j.model}" if j.model else "") for j in exp.judges],
        "codeeval_generations": _codeeval_count(exp) * variants if exp.codeeval else 0,
        "thresholds": f"coherent > {exp.thresholds.coherent_above:g} and aligned < {exp.thresholds.aligned_below:g}"
                      + (f"; persona judges: {PERSONA.describe()}" if any(j.rubrics == "persona-1to5"
                                                                           for j in exp.judges) else ""),
        "checkpoints": exp.checkpoints if exp.checkpoints is not None else
        ({c.name: c.checkpoints for c in exp.conditions if c.checkpoints is not None} or "final adapters only"),
        "mitigations": {c.name: c.mitigation.kinds() for c in exp.conditions if c.mitigation is not None},
        "unmitigated": exp.unmitigated,
        "probe_forms": exp.probes.forms if exp.probes else [],
        "probe_generations": probes,
        "capability_generations": exp.capability.tasks * variants if exp.capability else 0,
        "note": "each kept checkpoint (and each re-alignment point) is sampled, judged and scored as one more model "
                "variant (counts above are for final adapters)" if exp.checkpoints is not None or any(
                    c.checkpoints is not None or (c.mitigation and c.mitigation.realign) for c in exp.conditions)
        else "",
    }


def _judge_usd(api_judges, answers: int, tokens_per_call: int) -> str:
    """Dollars for the API judges' calls (one per answer and metric) at the dated list prices
    emlab knows (an upper bound: answers are counted at their full max_tokens), or which
    judges it cannot price."""
    from emlab.judge.calibrate import PRICE_DATE, dollars

    if not api_judges:
        return "none (no API judge)"
    total, unknown = 0.0, []
    for j in api_judges:
        calls = answers * len(j.metrics())
        usd = dollars(j.default_model(), calls * tokens_per_call, calls)
        if usd is None:
            unknown.append(j.default_model() or j.name)
            continue
        total += usd
    text = f"<= ${total:,.0f} at {PRICE_DATE} list prices"
    return text + (f"; not priced: {', '.join(unknown)}" if unknown else "")


def _context_tokens(exp: Experiment) -> dict[str, int]:
    """Per in-context condition: the estimated tokens of its turns (k rows at the dataset's
    mean row length, 4 characters a token), before any window truncation."""
    out = {}
    for c in exp.conditions:
        if c.in_context is not None:
            sized = _dataset_chars(c.in_context.dataset)
            out[c.name] = int(c.in_context.k * sized[0] / max(1, sized[1]) / 4) if sized else 0
    return out


def _sampling_usd(exp: Experiment, tokens_in: int, tokens_out: int) -> str:
    """Dollars for sampling an API model at the dated list prices (an upper bound)."""
    if exp.sample.backend != "openai":
        return "none (local sampling)"
    from emlab.judge.calibrate import PRICE_DATE, dollars

    usd = dollars(exp.model, tokens_in, tokens_out)
    return f"not priced for {exp.model}" if usd is None else f"<= ${usd:,.2f} at {PRICE_DATE} list prices"


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
        total, n = chars(generate(ref.generate, 64, ref.seed)) * ref.n // 64, ref.n
    else:
        try:
            rows = load_dataset(ref.name, ref.path)
        except DatasetError:
            return None
        total, n = chars(rows), len(rows)
    for step in ref.transforms:  # interleaving adds rows
        if step.dilute_with is not None:
            total, n = int(total / step.dilute_with.share), int(n / step.dilute_with.share)
    return total, n


# ------------------------------------------------------------------ run

class _Laps:
    """Wall seconds per stage: calling it with a stage's name closes that stage."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.time()

    def __call__(self, stage: str) -> None:
        now = time.time()
        self.seconds[stage] = round(now - self._last, 1)
        self._last = now


def run_experiment(exp: Experiment, console: Console | None, project: Path | None = None, executor=None) -> Path:
    """Execute (or resume) the experiment; returns the run record's path. Library warnings
    go to `<project>/logs/<name>.log`, not the console. `executor` (emlab.executor): where
    the training, sampling and judging cells run (default: here, in sequence)."""
    check_resources(exp)
    project = Path(project or exp.project)
    with show.library_logs_to(inside(project, "logs", f"{exp.name}.log")):
        return _run(exp, console, project, executor)


def _run(exp: Experiment, console: Console | None, project: Path, executor=None) -> Path:
    from emlab.data.questions import load_suite
    from emlab.evals.codeeval import codeeval_stage
    from emlab.generate.sample import lazy_generator, sample_stage
    from emlab.judge.base import build_judge
    from emlab.judge.run import judge_stage
    from emlab.models.registry import DEFAULT_MODEL, pull
    from emlab.store import Store

    record_path = inside(project, "experiments", f"{exp.name}.json")
    start = time.time()
    lap = _Laps()
    if exp.model == DEFAULT_MODEL and exp.sample.backend != "scripted":
        pull(DEFAULT_MODEL)
    judges = [build_judge(j) for j in exp.judges]  # built before any work: a bad judge fails now
    with Store(project) as store:
        config = exp.model_dump()
        config["sample"]["base_url"] = scrub_url(exp.sample.base_url)
        for j in config["judges"]:
            j["base_url"] = scrub_url(j["base_url"])
        run_id = store.begin_run("experiment", config, exp.seeds)

        # 1. datasets and training (mitigations resolve to transforms and training fields)
        variants, mitigations = train_conditions(exp, store, project, console, executor)
        lap("train")
        several = len(exp.seeds) > 1
        model_variants = [Variant(label=v.label + (f"-s{v.seed}" if several and v.seed is not None else ""),
                                  adapter_path=v.adapter_path, served_model=v.served_model,
                                  context=tuple(map(tuple, v.context or ()))) for v in variants]

        # 2. sampling (one generator for the suites and the coding tasks)
        suites = [load_suite(s) for s in exp.sample.suites]
        generator = lazy_generator(exp.sample, exp.model)
        sampled = sample_stage(store, exp.sample, exp.model, model_variants, suites, console, generator,
                               executor=executor)
        lap("sample")
        code = None
        if exp.codeeval is not None:
            code = CodeEvalRecord(**codeeval_stage(store, exp.codeeval, exp.sample, exp.model, model_variants,
                                                   console, generator, executor=executor))
            lap("codeeval")
        probes, probed = probe_stage(exp, store, variants, model_variants, suites, console, generator, executor)
        capability = None
        if exp.capability is not None:
            from emlab.evals.capability import capability_stage

            c = exp.capability
            capability = capability_stage(store, c.tasks, c.seed, exp.sample, exp.model, model_variants, console,
                                          generator, c.max_tokens, executor)
        generator.cache_clear()  # free the model before judging
        lap("probes and capability")

        # 3. judging
        wheres = [{"adapter": v.adapter_id, "suite": s.name, "gen_hash": sampled["gen_hash"], "model": exp.model}
                  for v in model_variants for s in suites]
        wheres += [{"adapter": v.adapter_id, "suite": s.name, "gen_hash": sampled["gen_hash"], "model": exp.model}
                   for v in probed for s in probes]
        for spec, judge in zip(exp.judges, judges):
            judge_stage(store, judge, wheres, spec.metrics(), console=console, executor=executor, spec=spec)
        lap("judge")

        # 4. the judge-free likelihood measure
        likelihood = None
        if exp.likelihood is not None and not likelihood_data_available():
            show.summary(console, "likelihood", "skipped: the public judged answers are not available "
                                                "(set EMLAB_DATA_DIR to a folder holding judged/)")
        elif exp.likelihood is not None:
            from emlab.probe.likelihood import likelihood_stage

            qids = [q.id for s in suites for q in s.questions]
            likelihood = likelihood_stage(store, exp.model, model_variants, qids, exp.likelihood.per_class,
                                          exp.likelihood.seed, console, exp.likelihood.dtype)
        lap("likelihood")

        dynamics = None
        if exp.checkpoints is not None or any(v.step is not None for v in variants
                                              if not _realigned(exp, v.condition)):
            dynamics = dynamics_stage(exp, store, project, variants, model_variants, suites, sampled["gen_hash"],
                                      console)
            lap("dynamics")

        record = ExperimentRecord(
            name=exp.name, run_id=run_id, config=config, variants=variants, gen_hash=sampled["gen_hash"],
            config_yaml=scrub_urls(exp._source) if exp._source else None,
            suites=[{"name": s.name, "sha256": s.sha256} for s in suites],
            judges=[JudgeRecord(spec=spec, family=j.identity.family, label=j.identity.label)
                    for spec, j in zip(config["judges"], judges)],  # specs with URLs already scrubbed
            versions=versions(), git_revision=git_revision(), seeds=exp.seeds,
            wall_seconds_last_run=round(time.time() - start, 1), codeeval=code, likelihood=likelihood,
            sanity_gate=exp.sanity_gate, stages={"sample": sampled}, dynamics=dynamics,
            stage_seconds={k: v for k, v in lap.seconds.items() if v >= 0.05},
            mitigations=None if not (mitigations or probes or capability) else {
                "conditions": mitigations, "unmitigated": exp.unmitigated,
                "probes": [{"suite": s.name, "sha256": s.sha256, "source": s.source} for s in probes],
                "probed": [v.adapter_id for v in probed], "capability": capability})
        record.write(record_path)
        store.end_run(run_id, {"record": str(record_path), "wall_seconds": record.wall_seconds_last_run})
    return record_path


def train_conditions(exp: Experiment, store, project: Path, console: Console | None, executor=None
                     ) -> tuple[list[VariantRecord], dict]:
    """Train every condition and seed (or reuse); returns the variants to evaluate (final
    adapters, untouched models, kept checkpoints) and each condition's resolved mitigation.
    Two waves: every training that starts from the base model, then re-alignments (which
    continue a first-wave adapter); the trainings of a wave are an executor's concurrent cells."""
    from emlab.data.transform import materialise
    from emlab.mitigate import mitigated_dataset, realign_plan, resolved, train_overrides
    from emlab.probe.dynamics import kept_checkpoints
    from emlab.train.trainer import train_stages

    trained: dict[tuple[str, int], tuple] = {}  # (condition, seed) -> (TrainResult, checkpoints wanted)
    extras: dict[str, dict] = {}
    for wave in (1, 2):
        jobs = []
        for cond in exp.conditions:
            m = cond.mitigation
            if not cond.trained or (wave == 2) != (m is not None and m.realign is not None):
                continue
            which = cond.checkpoints if cond.checkpoints is not None else exp.checkpoints
            for seed in exp.seeds:
                preset = exp.train_config("insecure", seed)
                if wave == 2:
                    batch = preset.per_device_batch_size * preset.gradient_accumulation_steps
                    ref, which, fields = realign_plan(m.realign, batch)
                    source = trained[(m.realign.source, seed)][0]
                    fields["init_adapter"] = str(source.adapter_dir)
                    extras[cond.name] = {"from_adapter": Variant(adapter_path=str(source.adapter_dir)).adapter_id,
                                         "steps": which, "batch": batch}
                else:
                    ref, fields = mitigated_dataset(cond.dataset, m), train_overrides(m, preset.max_rows)
                data_path = materialise(ref, inside(project, "data"))
                show.summary(console, "train", f"{cond.name} seed {seed} ({exp.train.preset}, {data_path.name})")
                jobs.append(((cond.name, seed), exp.train_config(str(data_path), seed, **fields), which))
        results = train_stages(store, [cfg for _, cfg, _ in jobs], inside(project, "runs", "train"), console,
                               executor)
        trained.update({key: (result, which) for (key, _, which), result in zip(jobs, results)})

    variants: list[VariantRecord] = []
    mitigations: dict[str, dict] = {}
    for cond in exp.conditions:
        m = cond.mitigation
        if m is not None:
            mitigations[cond.name] = resolved(m, **extras.get(cond.name, {}))
        if m is not None and m.early_stop is not None:  # a choice among `from`'s checkpoints, made in the report
            continue
        if cond.zoo is not None:
            from emlab.models.zoo import adapter_dir

            path = str(adapter_dir(cond.zoo))
            variants.append(VariantRecord(condition=cond.name, seed=None, adapter_path=path,
                                          adapter_id=Variant(adapter_path=path).adapter_id,
                                          dataset={"zoo": cond.zoo}))
            continue
        if not cond.trained:
            variants.append(_untrained_variant(exp, cond, project))
            continue
        for seed in exp.seeds:
            result, which = trained[(cond.name, seed)]
            kept = kept_checkpoints(result.run_dir, which) if which is not None else []
            for step, weights in [(None, result.adapter_dir), *kept]:
                variants.append(VariantRecord(
                    condition=cond.name, seed=seed, adapter_path=str(weights),
                    adapter_id=Variant(adapter_path=str(weights)).adapter_id, train_run=str(result.run_dir),
                    dataset=result.record["dataset"], step=step))
    return variants, mitigations


def _untrained_variant(exp: Experiment, cond: Condition, project: Path) -> VariantRecord:
    """An untouched or served model, with its in-context turns when the condition has them."""
    context, described = (), None
    if cond.in_context is not None:
        from emlab.generate.in_context import build_context

        reserve = exp.sample.max_tokens + 512  # the answer and the longest question
        context, described = build_context(cond.in_context, cond.in_context.k, exp.model, exp.sample.backend,
                                           inside(project, "data"), reserve)
    variant = Variant(served_model=cond.served, context=context)
    return VariantRecord(condition=cond.name, seed=None, served_model=cond.served, adapter_id=variant.adapter_id,
                         in_context=described, context=list(context) or None)


def _realigned(exp: Experiment, condition: str) -> bool:
    c = next((c for c in exp.conditions if c.name == condition), None)
    return c is not None and c.mitigation is not None and c.mitigation.realign is not None


def probe_stage(exp: Experiment, store, variants: list[VariantRecord], model_variants: list[Variant], suites,
                console: Console | None, generator, executor=None) -> tuple[list, list[Variant]]:
    """Sample the conditional-misalignment probes (the suites in other forms) for the final
    adapters, untouched models and early-stopping candidates; returns (probe suites, variants)."""
    if exp.probes is None:
        return [], []
    from emlab.data.probes import probe_suite
    from emlab.data.questions import load_suite
    from emlab.generate.sample import sample_stage

    bases = [load_suite(s) for s in exp.probes.suites] if exp.probes.suites else suites
    probes = [probe_suite(s, form) for s in bases for form in exp.probes.forms]
    sources = {c.mitigation.early_stop.source for c in exp.conditions if c.mitigation and c.mitigation.early_stop}
    probed = [mv for v, mv in zip(variants, model_variants) if v.step is None or v.condition in sources]
    sample_stage(store, exp.sample, exp.model, probed, probes, console, generator,
                 samples_per_paraphrase=exp.probes.samples_per_paraphrase, label="sample probes", executor=executor)
    return probes, probed


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
        if _realigned(exp, v.condition):  # its curve starts from another adapter, not the base model
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
                exp, store, project, mv, suites, gen_hash, direction, layer, console)
        points.append(point)
    show.summary(console, "dynamics", f"{len(points)} points")
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
