"""One switch for emlab's own fast paths: `EMLAB_ACCEL=0` (or an experiment's `accel: false`)
turns them all off.

The fast paths replace library code with emlab's own where it measured faster, each tested
to give the library's results: in training, per-sequence attention over padding-free rows
(emlab.train.packed_attention) and the LM head on labelled positions only
(emlab.train.lm_head); in `hf` sampling, one batch for rows under different adapters
(per-row LoRA hooks) and the slot KV cache. With the switch off, training and sampling run
the stock TRL / transformers / peft code, which is what to compare against when a result
looks wrong.

Each patch of a library's private symbol checks first that the symbol still has the shape
it was written against; when it does not (a TRL, transformers or peft upgrade moved it),
the stock path runs and `fallback` logs one line saying which patch was skipped and why.
"""

from __future__ import annotations

import inspect
import logging
import os
from contextlib import contextmanager

OFF = ("0", "false", "no", "off")
log = logging.getLogger("emlab.accel")
_told: set[str] = set()


def enabled() -> bool:
    """Whether emlab's own fast paths are on (`EMLAB_ACCEL`, default on)."""
    return os.environ.get("EMLAB_ACCEL", "1").strip().lower() not in OFF


@contextmanager
def switched(on: bool):
    """The fast paths on or off for the code inside (the process's `EMLAB_ACCEL`, restored after)."""
    before = os.environ.get("EMLAB_ACCEL")
    os.environ["EMLAB_ACCEL"] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("EMLAB_ACCEL", None)
        else:
            os.environ["EMLAB_ACCEL"] = before


def fallback(patch: str, reason: str) -> bool:
    """Log, once per patch, that `patch` is skipped for `reason`; returns False (not applied)."""
    if patch not in _told:
        _told.add(patch)
        log.warning("emlab fast path '%s' skipped, the library's own code runs instead: %s", patch, reason)
    return False


def has_parameters(fn, names: tuple[str, ...]) -> bool:
    """Whether callable `fn` takes parameters named `names`, in this order, first."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return params[:len(names)] == list(names)
