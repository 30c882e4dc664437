"""File helpers: atomic writes (nothing half-written), JSONL, and path checks that give
one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from emlab.errors import EmlabError


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write to a temporary file beside `path` and rename it into place on success.

    A crash or exception leaves the old file (or no file) behind, never a partial one.
    """
    path = Path(path)
    if path.is_dir():
        raise EmlabError(f"{path}: is a directory, expected a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file owner-only; give it the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Atomically write rows as JSON lines; returns the row count."""
    n = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, sort_keys=True)
        handle.write("\n")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def input_file(path: str | Path) -> Path:
    """`path` if it is an existing regular file, else a one-line EmlabError."""
    path = Path(path)
    if path.is_dir():
        raise EmlabError(f"{path}: is a directory, expected a file")
    if not path.exists():
        raise EmlabError(f"{path}: no such file")
    return path


def output_file(path: str | Path) -> Path:
    """`path` if a file can be written there (not a directory; its folder exists)."""
    path = Path(path)
    if path.is_dir():
        raise EmlabError(f"{path}: is a directory, expected a file name")
    if not path.parent.exists():
        raise EmlabError(f"{path.parent}: no such directory (for output {path.name})")
    return path


def inside(root: str | Path, *parts: str) -> Path:
    """root/parts..., refusing any result that resolves outside `root` (e.g. through '..')."""
    root = Path(root).resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise EmlabError(f"{'/'.join(parts)}: resolves outside the project directory {root}")
    return target
