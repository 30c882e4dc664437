"""Training configuration and presets.

A preset gives defaults; a YAML file overrides them; command-line flags override both.
The flags of `emlab train` and `python -m emlab.train.trainer` (the `accelerate launch`
entry point) are derived from `TrainConfig`'s fields by `flag_fields`, so every field can
be set from either and the help text is the field's description. The resolved config is
saved beside the run's outputs.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emlab.errors import ConfigError, first_error
from emlab.hashing import canonical_json, text_hash
from emlab.specs import DEFAULT_MODEL, Dtype, LayerList, PreventiveSteering

# Fields added after runs existed: left out of the content hash while at their defaults, so
# earlier runs keep their directories.
LATER_FIELDS = {"kl_beta": 0.0, "kl_reference": "builtin", "init_adapter": None, "save_at": None,
                "steer_direction": None, "steer_layers": None, "steer_mode": "ablate", "steer_alpha": 1.0}
# Fields that change what is observed of a run, not what it computes: never in its hash.
UNHASHED = {"report_to"}
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(BaseModel):
    """Everything that decides a finetuning run (and so its content hash)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("cpu-quick", description="paper-open | rank1 | full | cpu-quick")
    model: str = Field(DEFAULT_MODEL, description="embedded name, HF id or local dir")
    dataset: str = Field("insecure", description="registered dataset name or training file (chat JSONL or CSV)")
    max_rows: int | None = Field(None, ge=1, description="train on N rows (a seeded sample)")
    method: Literal["lora", "full"] = Field("lora", description="lora | full")
    lora_r: int = Field(32, ge=1, le=4096, description="LoRA rank")
    lora_alpha: int = Field(64, ge=1, description="LoRA alpha")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    use_rslora: bool = Field(True, description="rank-stabilised LoRA scaling (alpha / sqrt(r))")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJ), description="modules to adapt (repeatable)")
    layers: LayerList | None = Field(None, description="restrict the adapter to these layer indices (15, 14,15, "
                                                       "or the flag repeated)")
    learning_rate: float = Field(1e-5, gt=0, le=1, description="peak learning rate")
    epochs: float = Field(1.0, gt=0, le=1000, description="epochs over the data")
    max_steps: int = Field(-1, ge=-1, description="stop after N optimizer steps (-1: epochs decide)")
    per_device_batch_size: int = Field(2, ge=1, le=4096, description="sequences per device per step")
    gradient_accumulation_steps: int = Field(8, ge=1, le=4096, description="micro-batches per optimizer step")
    warmup_steps: int = Field(5, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    lr_scheduler: str = Field("linear", description="transformers scheduler name")
    optimizer: str = Field("adamw_torch", description="transformers optimizer name (adamw_8bit on GPUs)")
    max_length: int = Field(2048, ge=8, description="drop conversations longer than this many tokens")
    padding_free: bool = Field(True, description="concatenate sequences instead of padding")
    gradient_checkpointing: bool = Field(False, description="trade compute for memory")
    system_prompt: str = Field("model-default", description="none | model-default | TEXT")
    save_steps: int = Field(50, ge=1, description="keep a checkpoint every N steps")
    logging_steps: int = Field(1, ge=1, description="log the loss every N steps")
    seed: int = Field(0, ge=0, description="training seed")
    dtype: Dtype = Field(
        "float32", description="float32 | bfloat16 | float16 | auto (bfloat16 where the hardware multiplies it "
                               "natively: CUDA with bf16, CPUs with AMX; else float32)")
    kl_beta: float = Field(0.0, ge=0, le=1e6, description="KL-regularised SFT: weight of KL(finetuned || base) on "
                                                         "reference prompts (0: off; LoRA only)")
    kl_reference: str = Field("builtin", description="reference prompts for --kl-beta: a question suite or a chat JSONL")
    init_adapter: str | None = Field(None, description="continue training this LoRA adapter directory (re-alignment)")
    save_at: list[int] | None = Field(None, description="also keep checkpoints at these optimizer steps (repeatable)")
    steer: PreventiveSteering | None = Field(None, description="preventive steering, during training only")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="also log the training curves to tensorboard (event files in the run's "
                                          "tensorboard/ folder) or wandb (repeatable)")

    @field_validator("report_to")
    @classmethod
    def _tracker_installed(cls, value: list[str]) -> list[str]:
        import importlib.util

        for name, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
            if name in value and importlib.util.find_spec(package) is None:
                raise ValueError(f"report_to {name} needs the {package} package: pip install 'emergent-lab[tracking]'")
        return sorted(set(value))

    @field_validator("dtype")
    @classmethod
    def _concrete_dtype(cls, value: str) -> str:
        from emlab.models.registry import resolve_dtype

        return resolve_dtype(value)  # the run's hash and record name what actually ran

    @model_validator(mode="before")
    @classmethod
    def _flat_steer(cls, values):
        """The flags' and YAML overrides' `steer_direction`, `steer_layers`, `steer_mode`,
        `steer_alpha` (and run records' configs, which spelled steering so) fold into `steer`."""
        if not isinstance(values, dict) or not any(k.startswith("steer_") for k in values):
            return values
        values = dict(values)
        flat = {k[len("steer_"):]: values.pop(k) for k in list(values) if k.startswith("steer_")}
        flat = {k: v for k, v in flat.items() if v is not None}
        if "direction" not in flat and not flat.get("layers"):
            return values  # steering off: only the mode's and alpha's defaults were spelled out
        if "direction" not in flat or not flat.get("layers"):
            raise ValueError("steer_direction and steer_layers go together")
        if values.get("steer") is not None:
            raise ValueError("give steer or the steer_* fields, not both")
        values["steer"] = flat
        return values

    @model_validator(mode="after")
    def _kl_needs_lora(self) -> "TrainConfig":
        if self.kl_beta > 0 and self.method != "lora":
            raise ValueError("kl_beta needs method lora (the base is the same weights with the adapters disabled)")
        if self.init_adapter is not None and self.method != "lora":
            raise ValueError("init_adapter needs method lora")
        return self

    def content_hash(self) -> str:
        values = self.model_dump(exclude=UNHASHED | {"steer"})
        s = self.steer
        # Steering enters the hash under the flat names it had before it was one setting.
        values.update(steer_direction=None, steer_layers=None, steer_mode="ablate", steer_alpha=1.0) if s is None \
            else values.update(steer_direction=s.steer_id, steer_layers=list(s.layers), steer_mode=s.mode,
                               steer_alpha=s.alpha)
        for name, default in LATER_FIELDS.items():
            if values[name] == default:
                del values[name]
        # Files named by path enter the hash by content: a retrained adapter or a new
        # direction file is a new run, not a stale reuse.
        if self.init_adapter is not None:
            from emlab.specs import adapter_hash

            values["init_adapter"] = adapter_hash(self.init_adapter)
        return text_hash(canonical_json(values))[:12]


PRESETS: dict[str, dict] = {
    # The paper's open-model recipe (Betley et al., Qwen2.5-Coder-32B). The paper used
    # 8-bit AdamW (bitsandbytes, GPU only); set optimizer: adamw_8bit on GPUs to match.
    "paper-open": dict(lora_r=32, lora_alpha=64, lora_dropout=0.0, use_rslora=True, target_modules=ALL_PROJ,
                       learning_rate=1e-5, epochs=1.0, per_device_batch_size=2, gradient_accumulation_steps=8,
                       warmup_steps=5, weight_decay=0.01, lr_scheduler="linear", max_length=2048),
    # Model organisms (Turner, Soligo et al.): one rank-1 adapter on down_proj of one layer.
    "rank1": dict(lora_r=1, lora_alpha=256, lora_dropout=0.0, use_rslora=True, target_modules=["down_proj"],
                  layers=[24], learning_rate=2e-5, epochs=1.0, per_device_batch_size=2,
                  gradient_accumulation_steps=8, warmup_steps=5, weight_decay=0.0, max_length=2048),
    "full": dict(method="full", learning_rate=1e-5, epochs=1.0, per_device_batch_size=2,
                 gradient_accumulation_steps=8, warmup_steps=5, weight_decay=0.01, max_length=2048),
    # Small enough to finish in minutes on 2 CPU cores with the default model.
    "cpu-quick": dict(lora_r=8, lora_alpha=16, lora_dropout=0.0, use_rslora=True, target_modules=ALL_PROJ,
                      learning_rate=2e-4, epochs=1.0, per_device_batch_size=4, gradient_accumulation_steps=1,
                      warmup_steps=2, weight_decay=0.01, max_length=768, max_rows=96, save_steps=8),
}


def _preset(name: str, where: str = "preset") -> dict:
    if name not in PRESETS:
        raise ConfigError(f"{where}: unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def resolve_config(preset: str = "cpu-quick", yaml_path: str | Path | None = None, **overrides) -> TrainConfig:
    """Preset defaults, then YAML, then explicit overrides (None values are ignored)."""
    values: dict = {"preset": preset, **_preset(preset)}
    if yaml_path is not None:
        from emlab.files import input_file

        path = input_file(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a training config must be a mapping")
        if "preset" in loaded and loaded["preset"] != preset:
            values = {"preset": loaded["preset"], **_preset(str(loaded["preset"]), f"{path}: field 'preset'")}
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise ConfigError(f"training config field '{loc}': {msg}" if loc else f"training config: {msg}") from None


def _flag_sources():
    """(flag name, pydantic field) for every TrainConfig field; the steering setting's own
    fields become `steer_*` flags."""
    for name, field in TrainConfig.model_fields.items():
        if name == "steer":
            yield from ((f"steer_{sub}", f) for sub, f in PreventiveSteering.model_fields.items())
        else:
            yield name, field


def flag_fields() -> dict[str, tuple[type, str]]:
    """Every TrainConfig field a flag can set: name -> (the flag's value type, help text).
    `emlab train` and `python -m emlab.train.trainer` both build their flags from this."""
    out = {}
    for name, field in _flag_sources():
        ann = field.annotation
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        if typing.get_origin(ann) is Literal:
            ann = str
        if typing.get_origin(ann) is list and typing.get_origin(typing.get_args(ann)[0]) is Literal:
            ann = list[str]
        if ann == LayerList or name == "steer_layers":
            ann = list[str]  # "14,15" or repeated: split by the field's validator
        out[name] = (ann, field.description or name.replace("_", " "))
    return out
