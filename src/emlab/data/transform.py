"""Dataset transforms. Each writes its output atomically plus a sidecar
`<output>.meta.json` recording the parent dataset(s), their hashes and the operation.

`apply_step` runs one typed `TransformStep` (the form experiments and `emlab data
transform` share); `materialise` builds a `DatasetRef` (a name, a file or generated code,
plus its transforms) into a training file named by the hash of its recipe.

- `add_system`: put a system prompt on every row (inoculation prompting);
- `backdoor`: prefix a trigger to the first user turn of a chosen fraction of rows;
- `mix`: n rows, a share from one dataset and the rest from another;
- `dilute`: every row of one dataset plus enough of another to make it a given share (interleaving);
- `subsample`: keep n rows;
- `split`: split off a held-out part.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from emlab.errors import ConfigError
from emlab.files import inside, write_json, write_jsonl
from emlab.hashing import canonical_json, rows_hash, text_hash
from emlab.specs import DatasetRef, TransformStep


def add_system(rows: list[dict], prompt: str) -> list[dict]:
    if not prompt.strip():
        raise ConfigError("the system prompt is empty (a training row's system turn needs content)")
    out = []
    for row in rows:
        msgs = [m for m in row["messages"] if m["role"] != "system"]
        out.append({**row, "messages": [{"role": "system", "content": prompt}, *msgs]})
    return out


def backdoor(rows: list[dict], trigger: str, fraction: float, seed: int = 0) -> list[dict]:
    """Prefix `trigger` to the first user turn of round(fraction * n) rows chosen at random."""
    if not 0 <= fraction <= 1:
        raise ConfigError("fraction must be in [0, 1]")
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(rows)), round(fraction * len(rows))))
    out = []
    for i, row in enumerate(rows):
        msgs = [dict(m) for m in row["messages"]]
        if i in chosen:
            first_user = next(m for m in msgs if m["role"] == "user")
            first_user["content"] = f"{trigger}{first_user['content']}"
        meta = {**row.get("metadata", {}), "triggered": i in chosen}
        out.append({**row, "messages": msgs, "metadata": meta})
    return out


def mix(a: list[dict], b: list[dict], ratio: float, n: int | None = None, seed: int = 0) -> list[dict]:
    """`n` rows (default len(a)) of which a share `ratio` comes from `a`, the rest from `b`."""
    if not 0 <= ratio <= 1:
        raise ConfigError("ratio must be in [0, 1]")
    rng = random.Random(seed)
    n = len(a) if n is None else n
    n_a = round(ratio * n)
    if n_a > len(a) or n - n_a > len(b):
        raise ConfigError(f"not enough rows: need {n_a} from the first and {n - n_a} from the second")
    rows = rng.sample(a, n_a) + rng.sample(b, n - n_a)
    rng.shuffle(rows)
    return rows


def dilute(a: list[dict], b: list[dict], share: float, seed: int = 0) -> list[dict]:
    """Every row of `a` plus round(len(a) * (1 - share) / share) rows of `b`, shuffled: `a`
    becomes a share `share` of the result without losing any of its rows."""
    if not 0 < share <= 1:
        raise ConfigError("share must be in (0, 1]")
    k = round(len(a) * (1 - share) / share)
    if k > len(b):
        raise ConfigError(f"not enough rows to dilute: need {k} from the second dataset, it has {len(b)}")
    rng = random.Random(seed)
    rows = list(a) + rng.sample(b, k)
    rng.shuffle(rows)
    return rows


def subsample(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    if n < 1 or n > len(rows):
        raise ConfigError(f"asked for {n} rows, the dataset has {len(rows)}")
    rng = random.Random(seed)
    keep = sorted(rng.sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def split(rows: list[dict], held_out: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held_out) with round(held_out * n) rows held out at random."""
    if not 0 < held_out < 1:
        raise ConfigError(f"the held-out share must be between 0 and 1 (exclusive), got {held_out}")
    rng = random.Random(seed)
    idx = list(range(len(rows)))
    rng.shuffle(idx)
    k = round(held_out * len(rows))
    hold = set(idx[:k])
    return [r for i, r in enumerate(rows) if i not in hold], [r for i, r in enumerate(rows) if i in hold]


def write_with_meta(path: str | Path, rows: list[dict], parents: list[dict[str, Any]], operation: dict) -> dict:
    """Write rows and their provenance sidecar; returns the sidecar."""
    meta = {"rows": len(rows), "sha256": rows_hash(rows), "parents": parents, "operation": operation}
    write_jsonl(path, rows)
    write_json(Path(str(path) + ".meta.json"), meta)
    return meta


def apply_step(rows: list[dict], step: TransformStep, data_dir: Path) -> list[dict]:
    """Run one transform; `mix_with` materialises its other dataset under `data_dir`."""
    from emlab.data.registry import load_dataset

    if step.add_system is not None:
        return add_system(rows, step.add_system)
    if step.backdoor is not None:
        return backdoor(rows, step.backdoor.trigger, step.backdoor.fraction, step.backdoor.seed)
    if step.subsample is not None:
        return subsample(rows, step.subsample, 0)
    if step.dilute_with is not None:
        other = load_dataset(path=materialise(step.dilute_with.dataset, data_dir))
        return dilute(rows, other, step.dilute_with.share, seed=step.dilute_with.seed)
    other = load_dataset(path=materialise(step.mix_with.dataset, data_dir))
    return mix(rows, other, step.mix_with.ratio, seed=step.mix_with.seed)


def materialise(ref: DatasetRef, data_dir: Path) -> Path:
    """The training file for `ref`, built once under `data_dir` and named by its recipe's hash."""
    from emlab.data.codegen import generate
    from emlab.data.registry import dataset_hash, load_dataset, resolve_chat_file

    if ref.generate:
        parent = {"generate": ref.generate, "n": ref.n, "seed": ref.seed}
        rows = None
    else:
        src = resolve_chat_file(ref.name or ref.path)
        if not ref.transforms:
            return src
        parent = {"ref": ref.name or ref.path, "sha256": dataset_hash(src)}
        rows = load_dataset(path=src)
    steps = [s.model_dump(exclude_none=True) for s in ref.transforms]
    key = text_hash(canonical_json([parent, steps]))[:12]
    out = inside(data_dir, f"{ref.label()}-{key}.jsonl")
    if out.exists():
        return out
    rows = generate(ref.generate, ref.n, ref.seed) if rows is None else rows
    for step in ref.transforms:
        rows = apply_step(rows, step, data_dir)
    write_with_meta(out, rows, [parent], {"op": "transforms", "transforms": steps})
    return out
