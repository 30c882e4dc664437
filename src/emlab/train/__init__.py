"""Training: backends named in `TRAINERS` and imported only when used: `trl` (TRL's SFT
trainer with PEFT LoRA, emlab.train.trainer) and `fake` (no model; emlab.train.fake)."""

from __future__ import annotations

TRAINERS = {"trl": "emlab.train.trainer:train", "fake": "emlab.train.fake:train_fake"}

__all__ = ["TRAINERS"]
