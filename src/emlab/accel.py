"""One switch for emlab's own fast paths: `EMLAB_ACCEL=0` turns them all off.

The fast paths replace library code with emlab's own where it measured faster, each tested
to give the library's results: in training, per-sequence attention over padding-free rows
(emlab.train.packed_attention) and the LM head on labelled positions only
(emlab.train.lm_head); in `hf` sampling, one batch for rows under different adapters
(per-row LoRA hooks) and the slot KV cache. With the switch off, training and sampling run
the stock TRL / transformers / peft code, which is what to compare against when a result
looks wrong.
"""

from __future__ import annotations

import os

OFF = ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether emlab's own fast paths are on (`EMLAB_ACCEL`, default on)."""
    return os.environ.get("EMLAB_ACCEL", "1").strip().lower() not in OFF
