"""The sampling stage: question suites -> answers in the run store, resumably.

    emlab sample --suite builtin [--adapter NAME=DIR | --served-model NAME] [--backend hf|vllm|openai]

For each question x paraphrase x (its system prompt) x sample index, one answer with a
deterministic per-sample seed. Samples already stored (same key, which includes the
rendered prompt) are skipped; each batch is committed in one transaction, so a killed run
loses at most the batch in flight. Before generating a batch the sampler claims its keys
(a lease row per sample), so two samplers on one project split the work instead of both
doing all of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import Callable

from rich.console import Console

from emlab import progress
from emlab.data.questions import Suite
from emlab.errors import ConfigError
from emlab.generate import get_generator
from emlab.generate.base import GenConfig, GenRequest, Generator, sample_seed
from emlab.models.registry import resolve_dtype
from emlab.provenance import scrub_url
from emlab.specs import DEFAULT_BATCH_SIZE, SampleSpec, Variant
from emlab.store import SampleKey, Store


@dataclass
class SampleReport:
    planned: int
    existing: int
    generated: int
    left_to_others: int = 0  # claimed by another sampler still running


def gen_config(spec: SampleSpec, max_tokens: int | None = None) -> GenConfig:
    dtype = resolve_dtype(spec.dtype)
    return GenConfig(temperature=spec.temperature, top_p=spec.top_p, max_tokens=max_tokens or spec.max_tokens,
                     seed=spec.seed, dtype=None if dtype == "float32" else dtype)


def _generator_kwargs(spec: SampleSpec) -> dict:
    if spec.backend == "openai":
        return {"base_url": spec.base_url, "api_key_env": spec.api_key_env}
    if spec.backend == "hf":  # a claimed batch is decoded as one batch
        return {"dtype": resolve_dtype(spec.dtype), "max_batch": spec.batch_size}
    return {}


def plan(suite: Suite, model: str, variant: Variant, cfg: GenConfig, samples_per_paraphrase: int | None = None):
    """Every (request, row) the suite asks for, for one model variant."""
    aid = variant.adapter_id
    gen_hash = cfg.content_hash()
    items = []
    for p in suite.prompts(samples_per_paraphrase):
        key = SampleKey(model, aid, suite.name, p.question_id, p.paraphrase_index, p.system, p.text, p.sample_index,
                        gen_hash)
        seed = sample_seed(cfg.seed, model, variant.weights_id, suite.name, p.question_id, p.paraphrase_index, p.system,
                           p.sample_index)
        request = GenRequest(tuple(variant.with_context(p.messages())), seed, variant.adapter_path,
                             variant.served_model, variant.steer)
        row = {"key": key.digest(), "model": model, "adapter": aid, "suite": suite.name, "question_id": p.question_id,
               "paraphrase_index": p.paraphrase_index, "system": p.system, "sample_index": p.sample_index,
               "gen_hash": gen_hash, "seed": seed, "question": p.text}
        items.append((request, row))
    return items


def _answered(batch: list[tuple[GenRequest, dict]], results, run_id: str | None) -> list[dict]:
    """Store rows: each planned row with its generated answer."""
    return [{**row, "answer": res.text, "finish_reason": res.finish_reason, "n_tokens": res.n_tokens,
             "run_id": run_id} for (_, row), res in zip(batch, results)]


def sample_suite(store: Store, generator: Generator, suite: Suite, model: str, variant: Variant, cfg: GenConfig,
                 samples_per_paraphrase: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 run_id: str | None = None,
                 progress: Callable[[int], None] | None = None) -> SampleReport:
    """Generate the suite's missing samples for one variant, batch by claimed batch."""
    return sample_items(store, generator, plan(suite, model, variant, cfg, samples_per_paraphrase), cfg, batch_size,
                        run_id, progress)


def sample_items(store: Store, generator: Generator, items: list[tuple[GenRequest, dict]], cfg: GenConfig,
                 batch_size: int = DEFAULT_BATCH_SIZE, run_id: str | None = None,
                 progress: Callable[[int], None] | None = None) -> SampleReport:
    """Generate the missing ones of planned (request, row) items, batch by claimed batch. A
    batch may hold several variants: the hf backend decodes them together."""
    have = store.existing_keys(row["key"] for _, row in items)
    todo = {row["key"]: (req, row) for req, row in items if row["key"] not in have}
    generated = 0
    while todo:
        mine = store.claim(list(todo), batch_size)
        if not mine:
            break  # what is left is claimed by another live sampler
        batch = [todo.pop(k) for k in mine]
        try:
            results = generator.generate([req for req, _ in batch], cfg, progress=progress)
            generated += store.add_samples(_answered(batch, results, run_id))
        finally:
            store.release(mine)
    return SampleReport(planned=len(items), existing=len(have), generated=generated, left_to_others=len(todo))


@cache
def _worker_generator(backend: str, model: str, kwargs: tuple) -> Generator:
    return get_generator(backend, model, **dict(kwargs))


def sample_cell(spec: SampleSpec, model: str, items: list[tuple[GenRequest, dict]], cfg: GenConfig,
                run_id: str | None, threads: int | None = None) -> list[dict]:
    """One (variant, suite)'s missing samples, generated away from the store (an executor's
    task) in the same batches the in-process sampler uses; returns the rows to store."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    generator = _worker_generator(spec.backend, model, tuple(sorted(_generator_kwargs(spec).items())))
    rows = []
    for start in range(0, len(items), spec.batch_size):
        batch = items[start:start + spec.batch_size]
        rows += _answered(batch, generator.generate([req for req, _ in batch], cfg), run_id)
    return rows


def lazy_generator(spec: SampleSpec, model: str) -> Callable[[], Generator]:
    """A generator built on first use only (no model is loaded when nothing is missing)."""
    return cache(lambda: get_generator(spec.backend, model, **_generator_kwargs(spec)))


def sample_stage(store: Store, spec: SampleSpec, model: str, variants: list[Variant], suites: list[Suite],
                 console: Console | None = None, generator: Callable[[], Generator] | None = None,
                 max_tokens: int | None = None, samples_per_paraphrase: int | None = None,
                 label: str = "sample", executor=None) -> dict:
    """Sample every suite for every variant (one recorded run); returns a summary. With an
    `executor` (emlab.executor), each (variant, suite) is one task and this process stores
    the rows as tasks finish."""
    cfg = gen_config(spec, max_tokens)
    if spec.backend != "hf" and any(v.steer is not None for v in variants):
        raise ConfigError(f"steering needs the hf backend (forward hooks on the model), not '{spec.backend}'")
    n = samples_per_paraphrase if samples_per_paraphrase is not None else spec.samples_per_paraphrase
    plans = [plan(s, model, v, cfg, n) for v in variants for s in suites]  # one per (variant, suite)
    todos = []  # each plan's items not yet stored
    for items in plans:
        have = store.existing_keys(row["key"] for _, row in items)
        todos.append([(req, row) for req, row in items if row["key"] not in have])
    planned = sum(len(items) for items in plans)
    missing = sum(len(todo) for todo in todos)
    summary = {"planned": planned, "missing": missing, "generated": 0, "left_to_others": 0,
               "gen_hash": cfg.content_hash()}
    if not missing:
        progress.summary(console, label, f"{planned} samples already stored; nothing to generate")
        return summary
    config = {**spec.model_dump(), "base_url": scrub_url(spec.base_url), "model": model,
              "variants": [v.adapter_id for v in variants], "suites": [s.name for s in suites],
              "samples_per_paraphrase": n, "max_tokens": cfg.max_tokens}
    run_id = store.begin_run(label, config, [spec.seed])
    get = generator or lazy_generator(spec, model)
    start = time.time()
    with progress.stage(console, label, missing) as advance:
        if executor is not None:
            cells = [(spec, model, todo, cfg, run_id) for todo in todos if todo]
            for _, rows in executor.run(sample_cell, cells, label):
                summary["generated"] += store.add_samples(rows)
                advance(len(rows))
        else:
            # Every variant's requests in one claim loop, so a batch holds several variants and
            # each decoding step serves all of them (benchmarks/variant_batching.py).
            rep = sample_items(store, get(), [item for items in plans for item in items], cfg, spec.batch_size,
                               run_id, advance)
            summary["generated"] += rep.generated
            summary["left_to_others"] += rep.left_to_others
    summary["seconds"] = round(time.time() - start, 1)
    store.end_run(run_id, summary)
    others = f", {summary['left_to_others']} left to another sampler" if summary["left_to_others"] else ""
    progress.summary(console, label, f"{summary['generated']} generated, {planned - missing} reused{others} "
                                     f"({summary['seconds']} s)")
    return summary
