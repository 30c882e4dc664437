"""An experiment's schema and its YAML: every field typed and bounded, the file refused
(oversized, not YAML, an alias bomb, an unknown field) with one line naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from emlab.errors import ConfigError, EmlabError, first_error
from emlab.mitigate import Mitigation
from emlab.specs import (DEFAULT_MODEL, CapabilitySpec, CodeEvalSpec, DatasetRef, InContextSpec, JudgeName, JudgeSpec,
                         LikelihoodSpec,
                         ProjectionSpec, SampleSpec, ThresholdSpec, TrainSpec, check_slug)

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
    # emlab's own training and sampling fast paths (emlab.accel); false runs the libraries' stock code.
    accel: bool = True

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
        if self.train.backend == "fake" and (self.sample.backend != "scripted" or self.likelihood or self.checkpoints
                                             or self.probes or self.capability):
            raise ValueError("train.backend fake writes no weights: it goes with sample.backend scripted and no "
                             "likelihood, checkpoints, probes or capability stage")
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


JUDGE_NAMES = get_args(JudgeName)


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
        packaged = Path(__file__).parent.parent / "experiments" / f"{path.stem}.yaml"
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
        loc, msg = first_error(exc)
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

