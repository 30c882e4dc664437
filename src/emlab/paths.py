"""Where emlab keeps things and the environment's other settings: the cache (`EMLAB_HOME`),
the optional data directory (`EMLAB_DATA_DIR`, a folder laid out like the paper's data
release), offline mode and the tries per API request (`EMLAB_API_ATTEMPTS`)."""

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


def api_attempts(default: int = 8) -> int:
    """Tries per API request: EMLAB_API_ATTEMPTS when set (a whole number >= 1), else `default`."""
    value = os.environ.get("EMLAB_API_ATTEMPTS", "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        from emlab.errors import ConfigError

        raise ConfigError(f"EMLAB_API_ATTEMPTS={value!r}: expected a whole number >= 1")
    return int(value)
