"""Sampling a question suite into the run store, resumably.

For each question x paraphrase x (its system prompt) x sample index, one answer with a
deterministic per-sample seed. Existing samples (same key) are skipped, and each batch is
committed in one transaction, so a killed run loses at most the batch in flight and a
rerun generates nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emlab.data.questions import Suite
from emlab.generate.base import GenConfig, GenRequest, Generator, sample_seed
from emlab.hashing import file_hash
from emlab.store import SampleKey, Store


def adapter_id(adapter: str | Path | None) -> str:
    """'base' or the content hash of the adapter's weights."""
    if adapter is None:
        return "base"
    weights = sorted(Path(adapter).glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{adapter}: no adapter weights (*.safetensors) found")
    return "sha256:" + file_hash(weights[0])[:16]


@dataclass
class SampleReport:
    planned: int
    existing: int
    generated: int


def plan(suite: Suite, model: str, adapter: str | None, cfg: GenConfig, samples_per_paraphrase: int | None = None):
    """Every (key, request, row) the suite asks for."""
    aid = adapter_id(adapter)
    gen_hash = cfg.content_hash()
    items = []
    for p in suite.prompts(samples_per_paraphrase):
        key = SampleKey(model, aid, suite.name, p.question_id, p.paraphrase_index, p.system, p.sample_index, gen_hash)
        seed = sample_seed(cfg.seed, model, aid, suite.name, p.question_id, p.paraphrase_index, p.system,
                           p.sample_index)
        request = GenRequest(tuple(p.messages()), seed, str(adapter) if adapter else None)
        row = {"key": key.digest(), "model": model, "adapter": aid, "suite": suite.name, "question_id": p.question_id,
               "paraphrase_index": p.paraphrase_index, "system": p.system, "sample_index": p.sample_index,
               "gen_hash": gen_hash, "seed": seed, "question": p.text}
        items.append((request, row))
    return items


def count_missing(store: Store, suite: Suite, model: str, adapter: str | None, cfg: GenConfig,
                  samples_per_paraphrase: int | None = None) -> int:
    """How many of the suite's samples for this model/adapter are not in the store yet."""
    items = plan(suite, model, adapter, cfg, samples_per_paraphrase)
    return len(items) - len(store.existing_keys(row["key"] for _, row in items))


def sample_suite(store: Store, generator: Generator, suite: Suite, model: str, adapter: str | None,
                 cfg: GenConfig, samples_per_paraphrase: int | None = None, batch_size: int = 192,
                 run_id: str | None = None, progress=None) -> SampleReport:
    items = plan(suite, model, adapter, cfg, samples_per_paraphrase)
    have = store.existing_keys(row["key"] for _, row in items)
    todo = [(req, row) for req, row in items if row["key"] not in have]
    generated = 0
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        results = generator.generate([req for req, _ in batch], cfg, progress=progress)
        rows = [{**row, "answer": res.text, "finish_reason": res.finish_reason, "n_tokens": res.n_tokens,
                 "run_id": run_id} for (_, row), res in zip(batch, results)]
        generated += store.add_samples(rows)
    return SampleReport(planned=len(items), existing=len(have), generated=generated)
