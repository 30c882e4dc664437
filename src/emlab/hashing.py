"""Content hashes that survive re-serialisation.

Datasets are hashed over canonically re-serialised rows (sorted keys, no ASCII escaping,
compact separators), so two copies that differ only in JSON escaping or whitespace hash
the same. Files that are not row data are hashed byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable


def canonical_json(obj: Any) -> str:
    """One stable text form of a JSON-able value."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def rows_hash(rows: Iterable[Any]) -> str:
    """sha256 over canonically serialised rows, one per line."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_json(row).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
