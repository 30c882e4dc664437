"""Where emlab keeps things: the cache (`EMLAB_HOME`) and the optional data directory
(`EMLAB_DATA_DIR`, a folder laid out like the paper's data release)."""

from __future__ import annotations

import os
from pathlib import Path


def emlab_home() -> Path:
    """The cache root: converted models, downloaded datasets. `$EMLAB_HOME` or ~/.cache/emlab."""
    home = os.environ.get("EMLAB_HOME")
    path = Path(home).expanduser() if home else Path.home() / ".cache" / "emlab"
    return path


def data_dir() -> Path | None:
    """The user's data directory from `$EMLAB_DATA_DIR`, or None when unset."""
    value = os.environ.get("EMLAB_DATA_DIR")
    return Path(value).expanduser().resolve() if value else None


def offline() -> bool:
    """True when downloads must not be attempted (HF_HUB_OFFLINE or EMLAB_OFFLINE set)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("EMLAB_OFFLINE", "HF_HUB_OFFLINE"))
