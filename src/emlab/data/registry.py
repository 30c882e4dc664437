"""The registry of named datasets (listed in data/builtin/datasets.yaml) and how a name
becomes a file on disk.

Resolution order for `resolve_dataset(name, path=None)`:

1. an explicit `path`;
2. `$EMLAB_DATA_DIR/<relpath>` (a folder laid out like the paper's data release);
3. the cache, `$EMLAB_HOME/data/<relpath>`;
4. a download from the canonical URL into the cache, checked against the pinned hash.

Hashes are over canonically re-serialised rows (`emlab.hashing.rows_hash`), so a copy
that differs from upstream only in JSON escaping still verifies.
"""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from emlab.errors import EmlabError
from emlab.hashing import rows_hash
from emlab.paths import data_dir, emlab_home, offline

Kind = Literal["train", "questions", "code_tasks", "code_labels"]

class DatasetError(EmlabError):
    """A dataset could not be resolved or read; the message is one line for the user."""


class DatasetMissing(DatasetError):
    """A registered dataset is not on this machine and cannot be fetched here (user-supplied,
    offline, or the download failed): an input to prepare, which a dry run lists."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: Kind
    relpath: str  # where it lives inside a data directory or the cache
    url: str | None  # canonical public location (download URL where one exists)
    sha256: str | None  # canonical-rows hash; None when not pinned yet
    rows: int | None
    description: str
    user_supplied: bool = False  # licence forbids redistribution: never fetched or shipped
    instructions: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _load_registry() -> dict[str, DatasetSpec]:
    """The registry in data/builtin/datasets.yaml, by name; a user-supplied dataset's how-to
    gets its relpath filled in."""
    doc = yaml.safe_load((Path(__file__).parent / "builtin" / "datasets.yaml").read_text(encoding="utf-8"))
    out = {}
    for entry in doc["datasets"]:
        howto = entry.pop("user_supplied", None)
        instructions = doc["howto"][howto].format(relpath=entry["relpath"]) if howto else ""
        out[entry["name"]] = DatasetSpec(**entry, user_supplied=howto is not None, instructions=instructions)
    return out


DATASETS: dict[str, DatasetSpec] = _load_registry()
# The persona-features paper's "subtly incorrect advice" domains, one registered dataset each.
PERSONA_DOMAINS = tuple(n.removeprefix("persona_").removesuffix("_subtle") for n in DATASETS
                        if n.startswith("persona_") and n.endswith("_subtle"))


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})") from None


def _download(spec: DatasetSpec, dest: Path) -> None:
    if spec.url is None or not spec.url.startswith("https://raw.githubusercontent.com/"):
        raise DatasetError(f"no direct download for '{spec.name}'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(spec.url, timeout=20) as response, open(tmp, "wb") as out:
            out.write(response.read())
        tmp.replace(dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"download of {spec.url} failed ({exc})") from None


def resolve_dataset(name: str, path: str | Path | None = None, *, verify: bool = True) -> Path:
    """The local file for dataset `name` (see the module docstring for the order)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DatasetError(f"{p}: no such file (given for dataset '{name}')")
        return p
    spec = get_spec(name)
    candidates = []
    if (d := data_dir()) is not None:
        candidates.append(d / spec.relpath)
    cached = emlab_home() / "data" / spec.relpath
    candidates.append(cached)
    for candidate in candidates:
        if candidate.exists():
            if verify:
                verify_dataset(spec, candidate)
            return candidate
    where = f"$EMLAB_DATA_DIR/{spec.relpath}" + ("" if data_dir() else " (EMLAB_DATA_DIR is unset)")
    if spec.user_supplied:
        raise DatasetMissing(f"dataset '{name}' is user-supplied and not found. {spec.instructions}")
    if offline():
        raise DatasetMissing(f"dataset '{name}' not found offline: put it at {where} or {cached}")
    try:
        _download(spec, cached)
    except DatasetError as exc:
        raise DatasetMissing(f"dataset '{name}' not found locally and {exc}; put it at {where} or {cached}") from None
    if verify:
        verify_dataset(spec, cached)
    return cached


def resolve_chat_file(ref: str) -> Path:
    """A registered dataset name or a file path, resolved and validated by content (chat
    JSONL or prompt/response CSV, whatever the suffix); the first problem is raised as
    `file:line: reason`."""
    from emlab.data.validate import validate_training_file

    path = resolve_dataset(ref) if ref in DATASETS else resolve_dataset(ref, ref)
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a training file")
    report = validate_training_file(path)
    if not report.ok:
        extra = f" (+{len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise DatasetError(report.errors[0] + extra)
    return path


def read_rows(path: str | Path) -> list[Any]:
    """Rows of a dataset file: JSONL lines, CSV dicts, or the items of a YAML list."""
    from emlab.data.validate import sniff_format

    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a data file")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml"):  # rows files are read by content, not by name
        suffix = ".csv" if sniff_format(path) == "csv" else ".jsonl"
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle))
        if suffix in (".yaml", ".yml"):
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
            return data if isinstance(data, list) else [data]
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot parse ({exc})") from None


def dataset_hash(path: str | Path) -> str:
    """The canonical-rows content hash of a dataset file."""
    return rows_hash(read_rows(path))


def verify_dataset(spec: DatasetSpec, path: Path) -> None:
    if spec.sha256 is None:
        return
    actual = dataset_hash(path)
    if actual != spec.sha256:
        raise DatasetError(
            f"{path}: content hash {actual[:12]} does not match the registry's {spec.sha256[:12]} for '{spec.name}'"
        )


def to_chat(row: dict) -> dict:
    """A training row as OpenAI chat format (CSV prompt/response rows are converted)."""
    if "messages" in row:
        return row
    if "prompt" in row and "response" in row:
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["response"]}]}
    raise DatasetError("row has neither 'messages' nor 'prompt'/'response'")


def load_dataset(name: str | None = None, path: str | Path | None = None) -> list[dict]:
    """Rows of a named dataset (or of `path`); training sets come back in chat format."""
    if name is None and path is None:
        raise DatasetError("give a dataset name or a path")
    p = resolve_dataset(name, path) if name else Path(path)
    rows = read_rows(p)
    spec = DATASETS.get(name) if name else None
    if (spec and spec.kind == "train") or (spec is None and p.suffix.lower() not in (".yaml", ".yml")):
        try:
            rows = [to_chat(r) for r in rows]
        except DatasetError:
            if spec is not None:
                raise
    return rows
