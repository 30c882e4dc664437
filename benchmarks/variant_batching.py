"""Sampling several model variants: one variant per batch (how emlab sampled before) against
batches shared by the variants (how the sampling stage claims them now), on the `hf` backend.

The quickstart's workload by default: its three variants (the base model and its two LoRA
adapters, from `make quickstart`), the built-in suite at 4 samples per paraphrase and
<= 200 tokens, then 40 generated coding tasks at <= 300 tokens, temperature 1, batches of
192, the quickstart's dtype (`auto`: bf16 on AMX CPUs). The same requests, seeds and
generator in both modes; prints tokens/s, the ratio, and how many answers came out
token-identical (a shared batch is another batch shape, so bf16 answers differ in places,
as they do between any two batch shapes).

    python benchmarks/variant_batching.py [--adapter DIR ...] [--dtype auto] [--only suite|code]

Run it alone: a second torch process on 2 cores slows both 4-6x.
"""

from __future__ import annotations

import argparse
import glob
import time

from emlab.data.questions import builtin_suite
from emlab.evals.codeeval import load_tasks, task_suite
from emlab.generate.base import GenConfig
from emlab.generate.hf import HFGenerator
from emlab.generate.sample import plan
from emlab.models.registry import resolve_dtype
from emlab.specs import Variant

MODEL = "smollm2-135m-instruct"
BATCH = 192


def timed(generator: HFGenerator, batches: list[list], cfg: GenConfig) -> tuple[list, float]:
    start = time.perf_counter()
    results = [r for batch in batches for r in generator.generate(batch, cfg)]
    return results, time.perf_counter() - start


def compare(generator: HFGenerator, label: str, per_variant: list[list], cfg: GenConfig) -> None:
    apart = [v[k:k + BATCH] for v in per_variant for k in range(0, len(v), BATCH)]
    flat = [r for v in per_variant for r in v]
    shared = [flat[k:k + BATCH] for k in range(0, len(flat), BATCH)]
    one, t_one = timed(generator, apart, cfg)
    mixed, t_mixed = timed(generator, shared, cfg)
    tok_one, tok_mixed = sum(r.n_tokens for r in one), sum(r.n_tokens for r in mixed)
    same = sum(a.token_ids == b.token_ids for a, b in zip(one, mixed))
    print(f"{label}: {len(flat)} requests, {len(per_variant)} variants, <= {cfg.max_tokens} tokens")
    print(f"  one variant per batch ({len(apart)} batches): {t_one:6.1f} s  {tok_one} tokens  "
          f"{tok_one / t_one:6.1f} tokens/s")
    print(f"  shared batches       ({len(shared)} batches): {t_mixed:6.1f} s  {tok_mixed} tokens  "
          f"{tok_mixed / t_mixed:6.1f} tokens/s")
    print(f"  ratio (tokens/s): {tok_mixed / t_mixed / (tok_one / t_one):.2f}x   wall: {t_one / t_mixed:.2f}x   "
          f"token-identical answers: {same}/{len(flat)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    found = sorted(glob.glob("runs/quickstart/runs/train/*/adapter"))
    ap.add_argument("--adapter", action="append", help="adapter directory (repeatable; default: the quickstart's)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--only", choices=["suite", "code"])
    args = ap.parse_args()
    adapters = args.adapter or found
    if not adapters:
        raise SystemExit("error: no adapters: pass --adapter DIR (repeatable) or run `make quickstart` first")
    dtype = resolve_dtype(args.dtype)
    variants = [Variant()] + [Variant(label=f"adapter{i}", adapter_path=a) for i, a in enumerate(adapters)]
    generator = HFGenerator(MODEL, dtype=dtype)
    gen_dtype = None if dtype == "float32" else dtype
    print(f"{MODEL} ({dtype}), {len(adapters)} adapters: {', '.join(adapters)}")
    warm = [plan(builtin_suite(), MODEL, v, GenConfig(max_tokens=4, dtype=gen_dtype), 1)[0][0] for v in variants]
    generator.generate(warm, GenConfig(max_tokens=4, dtype=gen_dtype))  # loads every adapter

    if args.only in (None, "suite"):
        cfg = GenConfig(max_tokens=200, dtype=gen_dtype)
        compare(generator, "built-in suite", [[q for q, _ in plan(builtin_suite(), MODEL, v, cfg, 4)]
                                              for v in variants], cfg)
    if args.only in (None, "code"):
        cfg = GenConfig(max_tokens=300, dtype=gen_dtype)
        tasks, name = load_tasks("generated:40:1000")
        suite = task_suite(tasks, name, 1)
        compare(generator, "coding tasks", [[q for q, _ in plan(suite, MODEL, v, cfg, 1)] for v in variants], cfg)


if __name__ == "__main__":
    main()
