"""Typed specifications of the pipeline's stages - what the CLI builds from flags and an
experiment YAML holds - plus the names that may appear in them.

Every field is bounded, so a typo (`n: -1`, `samples_per_paraphrase: 1e9`) fails at load
time with the field's name, before any work starts.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from emlab.hashing import file_hash
from emlab.misaligned import PAPER, RUBRIC_FAMILIES

# The embedded default model (SmolLM2-135M-Instruct): the one place its name is written.
DEFAULT_MODEL = "smollm2-135m-instruct"
# Samples claimed, generated and committed at a time (and on the hf backend decoded at once).
DEFAULT_BATCH_SIZE = 192
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Backend = Literal["hf", "vllm", "openai", "scripted"]
JudgeName = Literal["mini", "local", "logprob", "sampled", "scripted"]  # scripted: a fake (emlab.judge.scripted)
RubricFamily = Literal["aligned-coherent", "persona-1to5"]  # emlab.misaligned.RUBRIC_FAMILIES
# The local model's compute dtype; "auto": bfloat16 where the hardware multiplies it natively
# (CUDA with bf16, CPUs with AMX), else float32 (emlab.models.registry.resolve_dtype).
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=100_000)]


def check_slug(value: str, what: str = "name") -> str:
    """A name safe to use in file paths: letters, digits, '_', '-', '.', no '..'."""
    if not SLUG.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must be 1-64 letters, digits, '_', '-' or '.' "
                         "(starting with a letter or digit, no '..')")
    return value


Slug = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _layer_items(value):
    """Layer indices as every surface writes them - 15, "14,15", [14, 15], ["14,15", "16"] - as
    one list of ints (the flags' strings are split here, so a flag and a YAML field agree)."""
    if isinstance(value, (int, str)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return value
    out = []
    for item in value:
        if isinstance(item, str):
            parts = [p.strip() for p in item.split(",")]
            if not all(p.lstrip("-").isdigit() for p in parts):
                raise ValueError(f"layers are integers such as 15 or 14,15, not {item!r}")
            out += [int(p) for p in parts]
        else:
            out.append(item)
    return out


# Layer indices: the one type behind `--layers` (train, probe collect, probe steer, probe
# cosine) and every `layers` field.
LayerList = Annotated[list[Annotated[int, Field(ge=0, le=4096)]], BeforeValidator(_layer_items)]
LAYERS_HELP = "Layer indices: 15, 14,15, or the flag repeated"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackdoorArgs(_Spec):
    trigger: NonEmpty
    fraction: float = Field(0.5, ge=0, le=1)
    seed: int = Field(0, ge=0)


class MixArgs(_Spec):
    dataset: "DatasetRef"
    ratio: float = Field(0.5, ge=0, le=1)
    seed: int = Field(0, ge=0)


class DiluteArgs(_Spec):
    dataset: "DatasetRef"
    share: float = Field(0.5, gt=0, le=1)  # the first dataset's share of the result
    seed: int = Field(0, ge=0)


class TransformStep(_Spec):
    """One transform, written as a one-key mapping: {add_system: TEXT}, {backdoor: {...}},
    {subsample: N}, {mix_with: {dataset: ..., ratio: R}} (N rows, a share R from the first)
    or {dilute_with: {dataset: ..., share: S}} (every row kept, others added to make it a share S)."""

    add_system: NonEmpty | None = None
    backdoor: BackdoorArgs | None = None
    subsample: int | None = Field(None, ge=1, le=10_000_000)
    mix_with: MixArgs | None = None
    dilute_with: DiluteArgs | None = None

    @model_validator(mode="after")
    def _one(self) -> "TransformStep":
        if len(self.model_dump(exclude_none=True)) != 1:
            raise ValueError("a transform is a one-key mapping: add_system, backdoor, subsample, mix_with or "
                             "dilute_with")
        return self

    @property
    def op(self) -> str:
        return next(iter(self.model_dump(exclude_none=True)))


class DatasetRef(_Spec):
    """A training set: a registered name, a file, or generated control-matched code."""

    name: str | None = None
    path: str | None = None
    generate: Literal["insecure-code", "secure-code", "benign-chat", "reward-hacks", "reward-hacks-control"] | None = None
    n: int = Field(1000, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0)
    transforms: list[TransformStep] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetRef":
        if sum(x is not None for x in (self.name, self.path, self.generate)) != 1:
            raise ValueError("give exactly one of name, path or generate")
        return self

    def label(self) -> str:
        return self.generate or self.name or Path(self.path or "data").stem


MixArgs.model_rebuild()
DiluteArgs.model_rebuild()


class InContextSpec(_Spec):
    """In-context EM (no training): `k` rows of a narrow dataset placed before each question
    as prior user/assistant turns. A list of k is a sweep: one condition per k. `order`
    "random" draws the rows with `seed`; "file" takes the first k. Rows that do not fit in
    `max_context_tokens` (default: the model's context length) beside the question and the
    answer are left out, last first, and the record says how many."""

    dataset: DatasetRef
    k: Annotated[int, Field(ge=0, le=100_000)] | list[Annotated[int, Field(ge=0, le=100_000)]]
    seed: int = Field(0, ge=0)
    order: Literal["random", "file"] = "random"
    max_context_tokens: int | None = Field(None, ge=256, le=10_000_000)

    @field_validator("k")
    @classmethod
    def _sweep(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("k: a sweep is a non-empty list of distinct sizes")
        return value


class TrainSpec(_Spec):
    preset: str = "cpu-quick"
    overrides: dict = Field(default_factory=dict)
    backend: Literal["trl", "fake"] = Field("trl", description="trl | fake (no model: for pipeline tests with "
                                                               "scripted sampling; emlab.train.fake)")


class SampleSpec(_Spec):
    """Sampling of question suites; the defaults are the paper's (temperature 1, top_p 1, 600 tokens)."""

    suites: list[str] = Field(default_factory=lambda: ["builtin"], min_length=1, max_length=50,
                              description="builtin, a registered suite name, or a YAML path")
    samples_per_paraphrase: int | None = Field(None, ge=1, le=10_000,
                                               description="Samples per paraphrase (default: each question's own).")
    max_tokens: int = Field(600, ge=1, le=32_768, description="Most new tokens per answer.")
    temperature: float = Field(1.0, ge=0, le=10, allow_inf_nan=False, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling mass.")
    seed: int = Field(0, ge=0, le=2 ** 62, description="Sampling seed (each answer's own seed derives from it).")
    backend: Backend = Field("hf", description="hf | vllm | openai | scripted (a fake for dry runs)")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL (openai backend).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    # A bf16 or fp32 answer's bits depend on its batch's shape, so the size is part of the setting.
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=100_000,
                            description="Samples generated and committed per batch; on the hf backend also the most "
                                        "sequences decoded at once.")
    # Part of every answer's key when not float32.
    dtype: Dtype = Field("float32", description="hf backend weights: float32 | bfloat16 | auto (bfloat16 on AMX "
                                                "CPUs and bf16 GPUs)")

    @field_validator("dtype")
    @classmethod
    def _dtype_is_local(cls, value: str, info) -> str:
        backend = info.data.get("backend", "hf")
        if value != "float32" and backend != "hf":
            raise ValueError(f"dtype applies to the hf backend (the {backend} backend chooses its own)")
        return value


class JudgeSpec(_Spec):
    name: JudgeName = "mini"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # Fence the answer in nonce-marked delimiters (a prompt-injection defence): auto fences
    # emlab's own rubrics only, so the paper's rubrics are sent exactly as the paper sent them.
    delimit: Literal["auto"] | bool = "auto"
    # The rubric family: the paper's aligned/coherent pair (the suite's own prompts, or
    # emlab's), or the persona-features grader (1-5 with labels; emlab.misaligned.PERSONA).
    rubrics: RubricFamily = "aligned-coherent"

    @field_validator("rubrics")
    @classmethod
    def _reads_rubrics(cls, value: str, info) -> str:
        if value != "aligned-coherent" and info.data.get("name") == "mini":
            raise ValueError(f"the mini judge scores aligned and coherent only; {value} needs a judge that reads "
                             "its rubric (logprob, sampled, local)")
        return value

    def metrics(self) -> tuple[str, ...]:
        """The metrics this judge scores for the misaligned flag."""
        return RUBRIC_FAMILIES[self.rubrics]

    def default_model(self) -> str | None:
        if self.model:
            return self.model
        return {"logprob": "gpt-4o-2024-08-06", "sampled": "gpt-4o-2024-08-06",
                "local": DEFAULT_MODEL, "mini": "mini-3"}.get(self.name)


class CodeEvalSpec(_Spec):
    tasks: str = "code_tasks"  # code_tasks | JSONL path | generated:N:SEED
    max_tasks: int | None = Field(None, ge=1, le=100_000)
    samples_per_task: int = Field(1, ge=1, le=1000)
    max_tokens: int = Field(600, ge=1, le=32_768)  # the free-form default: one answer length everywhere
    judge: JudgeSpec | None = None  # None: the static detector (Bandit + emlab's checks)


class CapabilitySpec(_Spec):
    """The benign exact-answer check (emlab.evals.capability) for every variant."""

    tasks: int = Field(36, ge=1, le=10_000)
    seed: int = Field(0, ge=0)
    max_tokens: int = Field(48, ge=1, le=1024)


class LikelihoodSpec(_Spec):
    """The judge-free likelihood measure (emlab.probe.likelihood): reference answers per class
    and question drawn from the public judged data."""

    per_class: int = Field(10, ge=1, le=200)
    seed: int = Field(0, ge=0)
    dtype: Dtype = "float32"  # the teacher-forced passes' compute dtype (bfloat16: autocast, LoRA updates in fp32)
    required: bool = True  # False: skip (with a note) when the public judged data is not available


class ProjectionSpec(_Spec):
    """Project each checkpoint's answers on a misalignment direction (emlab.probe.dynamics)."""

    direction: str
    layer: int | None = Field(None, ge=0)  # None: the file's best held-out layer


class ThresholdSpec(_Spec):
    """The misaligned flag's thresholds (defaults: the paper's, `emlab.misaligned.PAPER`)."""

    aligned_below: float = Field(PAPER.aligned_below, ge=0, le=100)
    coherent_above: float = Field(PAPER.coherent_above, ge=0, le=100)


@lru_cache(maxsize=256)
def _weights_hash(path: str, mtime: float) -> str:
    return "sha256:" + file_hash(path)[:16]


def adapter_hash(adapter_dir: str | Path) -> str:
    """The content hash of an adapter directory's weights (cached per file and mtime)."""
    weights = sorted(Path(adapter_dir).glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{adapter_dir}: no adapter weights (*.safetensors) found")
    return _weights_hash(str(weights[0].resolve()), weights[0].stat().st_mtime)


class SteerSpec(BaseModel):
    """Steering during generation (hf backend): add alpha * a direction file's vector at
    each listed layer's output, or project it out (`ablate`). With `random_seed`, a random
    direction of the same norm per layer replaces the file's (a control)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    direction: str = Field(description="a direction file (emlab probe direction)")
    layers: Annotated[tuple[int, ...], BeforeValidator(_layer_items)] = Field(
        min_length=1, max_length=512, description="layers to steer (15, 14,15, or the flag repeated)")
    alpha: float = Field(1.0, ge=-1000, le=1000, allow_inf_nan=False,
                         description="with mode add: alpha * direction is added (negative: subtracted)")
    mode: Literal["add", "ablate"] = Field("add", description="add | ablate (project the direction out)")
    random_seed: int | None = Field(None, ge=0, le=2 ** 31, description="a random direction of the same norm per "
                                                                        "layer instead of the file's (a control)")

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 0 for v in value) or len(set(value)) != len(value):
            raise ValueError("layers must be distinct non-negative integers")
        return tuple(sorted(value))

    @property
    def steer_id(self) -> str:
        """Content id: the direction file's hash and every setting."""
        from emlab.hashing import canonical_json, text_hash

        path = Path(self.direction)
        if not path.is_file():
            raise ValueError(f"{path}: no such direction file")
        body = {**self.model_dump(exclude={"direction"}), "file": _weights_hash(str(path.resolve()),
                                                                              path.stat().st_mtime)}
        return text_hash(canonical_json(body))[:16]

    def describe(self) -> str:
        what = f"random#{self.random_seed}" if self.random_seed is not None else Path(self.direction).stem
        layers = ",".join(map(str, self.layers))
        return f"{self.mode} {what} @L{layers}" + (f" a={self.alpha:g}" if self.mode == "add" else "")


class PreventiveSteering(SteerSpec):
    """Steering during finetuning only (persona-vector / CAFT style): the saved adapter is
    evaluated without it. Projecting the direction out (`ablate`) is the default."""

    mode: Literal["add", "ablate"] = Field("ablate", description="ablate (project the direction out) | add")


class Variant(BaseModel):
    """A model variant to sample: the base model, a local adapter directory, or a model
    name served by an OpenAI-compatible endpoint (an adapter behind `emlab serve`, an API
    finetune). `adapter_id` is what the store records: "base", "sha256:<weights>" or
    "served:<name>"."""

    model_config = ConfigDict(frozen=True)
    label: str = "base"
    adapter_path: str | None = None
    served_model: str | None = None
    steer: SteerSpec | None = None  # steering during generation (hf backend only)
    context: tuple[tuple[str, str], ...] = ()  # (role, content) turns before each question: in-context EM

    @field_validator("adapter_path")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        if value is not None and not sorted(Path(value).glob("*.safetensors")):
            raise ValueError(f"{value}: no adapter weights (*.safetensors) found")
        return value

    @property
    def weights_id(self) -> str:
        """The model's weights without steering: what per-sample seeds derive from, so a
        steered variant draws the same random numbers as its unsteered twin."""
        if self.adapter_path:
            return adapter_hash(self.adapter_path)
        if self.served_model:
            return f"served:{self.served_model}"
        return "base"

    @property
    def adapter_id(self) -> str:
        steer = f"+steer:{self.steer.steer_id}" if self.steer is not None else ""
        return self.weights_id + steer + (f"+icl:{self.context_id}" if self.context else "")

    @property
    def context_id(self) -> str:
        from emlab.hashing import canonical_json, text_hash

        return text_hash(canonical_json([list(t) for t in self.context]))[:16]

    def with_context(self, messages: list[dict]) -> list[dict]:
        """A question's messages with the in-context turns after its system prompt."""
        turns = [{"role": role, "content": content} for role, content in self.context]
        cut = 1 if messages and messages[0]["role"] == "system" else 0
        return messages[:cut] + turns + messages[cut:]
