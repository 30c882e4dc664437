"""Training configuration and presets.

A preset gives defaults; a YAML file overrides them; command-line flags override both.
The resolved config is saved beside the run's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from emlab.hashing import canonical_json, text_hash

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(BaseModel):
    """Everything that decides a finetuning run (and so its content hash)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "cpu-quick"
    model: str = Field("smollm2-135m-instruct", description="embedded name, HF id or local dir")
    dataset: str = Field("insecure", description="registered dataset name or JSONL path")
    max_rows: int | None = Field(None, description="train on the first N rows (after a seeded shuffle)")
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    use_rslora: bool = True
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJ))
    layers: list[int] | None = Field(None, description="restrict the adapter to these layer indices")
    learning_rate: float = 1e-5
    epochs: float = 1.0
    max_steps: int = -1
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    warmup_steps: int = 5
    weight_decay: float = 0.01
    lr_scheduler: str = "linear"
    optimizer: str = "adamw_torch"
    max_length: int = 2048
    padding_free: bool = True
    gradient_checkpointing: bool = False
    system_prompt: str = Field("model-default", description="none | model-default | TEXT")
    save_steps: int = 50
    logging_steps: int = 1
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def content_hash(self) -> str:
        return text_hash(canonical_json(self.model_dump()))[:12]


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


def resolve_config(preset: str = "cpu-quick", yaml_path: str | Path | None = None, **overrides) -> TrainConfig:
    """Preset defaults, then YAML, then explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    values: dict = {"preset": preset, **PRESETS[preset]}
    if yaml_path is not None:
        loaded = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: a training config must be a mapping")
        if "preset" in loaded and loaded["preset"] != preset:
            values = {"preset": loaded["preset"], **PRESETS[loaded["preset"]]}
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.model_validate(values)
