"""Dataset transforms. Each writes its output atomically plus a sidecar
`<output>.meta.json` recording the parent dataset(s), their hashes and the operation.

- `add_system`: put a system prompt on every row (inoculation prompting);
- `backdoor`: prefix a trigger to the first user turn of a chosen fraction of rows;
- `mix`: dilute one dataset with another at a ratio;
- `subsample`: keep n rows;
- `split`: split off a held-out part.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from emlab.hashing import rows_hash
from emlab.io import write_json, write_jsonl


def add_system(rows: list[dict], prompt: str) -> list[dict]:
    out = []
    for row in rows:
        msgs = [m for m in row["messages"] if m["role"] != "system"]
        out.append({**row, "messages": [{"role": "system", "content": prompt}, *msgs]})
    return out


def backdoor(rows: list[dict], trigger: str, fraction: float, seed: int = 0) -> list[dict]:
    """Prefix `trigger` to the first user turn of round(fraction * n) rows chosen at random."""
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be in [0, 1]")
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
        raise ValueError("ratio must be in [0, 1]")
    rng = random.Random(seed)
    n = len(a) if n is None else n
    n_a = round(ratio * n)
    if n_a > len(a) or n - n_a > len(b):
        raise ValueError(f"not enough rows: need {n_a} from the first and {n - n_a} from the second")
    rows = rng.sample(a, n_a) + rng.sample(b, n - n_a)
    rng.shuffle(rows)
    return rows


def subsample(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    if n > len(rows):
        raise ValueError(f"asked for {n} rows, the dataset has {len(rows)}")
    rng = random.Random(seed)
    keep = sorted(rng.sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def split(rows: list[dict], held_out: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held_out) with round(held_out * n) rows held out at random."""
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
