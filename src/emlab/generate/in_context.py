"""In-context EM: rows of a narrow dataset as prior turns before every question, no training.

`build_context` draws the rows (seeded, or the file's first k), keeps as many as fit in the
model's context window beside the longest question and the answer budget, and returns the
turns with a description for the record: which rows, how many were left out, how the
tokens were counted. The turns travel in the sampled variant (`Variant.context`), so every
backend sees the same conversation and the store keys the answers by the turns' hash.
"""

from __future__ import annotations

import random
from pathlib import Path

from emlab.errors import ConfigError
from emlab.specs import InContextSpec

# API models: the window assumed when the spec does not give one, and a conservative count
# (English text and code run at about four characters per token; three leaves headroom).
API_CONTEXT_TOKENS = 128_000
CHARS_PER_TOKEN = 3


def build_context(spec: InContextSpec, k: int, model: str, backend: str, data_dir: Path,
                  reserve_tokens: int) -> tuple[tuple[tuple[str, str], ...], dict]:
    """(turns, record) for one k: user/assistant turns of the drawn rows (system messages
    dropped) that fit in the window less `reserve_tokens` (the question and the answer)."""
    from emlab.data.registry import dataset_hash, load_dataset
    from emlab.data.transform import materialise

    path = materialise(spec.dataset, data_dir)
    rows = load_dataset(path=path)
    if k > len(rows):
        raise ConfigError(f"in_context: k={k} but {path.name} has {len(rows)} rows")
    picked = random.Random(spec.seed).sample(range(len(rows)), k) if spec.order == "random" else list(range(k))
    count, counted = _counter(model, backend)
    window = spec.max_context_tokens or _window(model, backend)
    budget = window - reserve_tokens
    turns: list[tuple[str, str]] = []
    used: list[int] = []
    tokens = 0
    for i in picked:
        pairs = [(m["role"], m["content"]) for m in rows[i]["messages"] if m["role"] in ("user", "assistant")]
        cost = sum(count(c) + 4 for _, c in pairs)  # a few tokens of chat markup per turn
        if tokens + cost > budget:
            break
        turns += pairs
        used.append(i)
        tokens += cost
    record = {"dataset": spec.dataset.model_dump(exclude_defaults=True), "path": str(path),
              "sha256": dataset_hash(path), "k": k, "order": spec.order, "seed": spec.seed, "rows": used,
              "left_out": len(picked) - len(used), "tokens": tokens, "window": window,
              "reserved": reserve_tokens, "counted": counted}
    return tuple(turns), record


def _window(model: str, backend: str) -> int:
    if backend in ("openai", "scripted"):  # no local weights to read a window from
        return API_CONTEXT_TOKENS
    from emlab.models.registry import EMBEDDED, context_length, pull

    if model in EMBEDDED:
        pull(model)
    window = context_length(model)
    if window is None:
        raise ConfigError(f"in_context: cannot read {model}'s context length here: give max_context_tokens")
    return window


def _counter(model: str, backend: str):
    """A token counter for the model and how it counts."""
    if backend in ("openai", "scripted"):
        return (lambda text: len(text) // CHARS_PER_TOKEN + 1), f"characters / {CHARS_PER_TOKEN}"
    from emlab.models.registry import load_tokenizer

    tokenizer = load_tokenizer(model)
    return (lambda text: len(tokenizer.encode(text, add_special_tokens=False))), "the model's tokenizer"
