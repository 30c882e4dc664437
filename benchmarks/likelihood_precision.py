"""The likelihood measure under bf16 autocast against fp32: speed, and how exactly it reads an
adapter's shift. Three ways to score the same reference answers with one adapter, in one run:

- fp32, the adapter merged into the weights (the reference);
- bf16 autocast with each LoRA update added in fp32 (what `dtype: bfloat16 | auto` runs);
- bf16 autocast through peft's own LoRA path, which adds the update in bf16 (the baseline:
  an update under half a bf16 step of its base output is rounded away).

For each, the adapter's per-reference shift (adapter score - base score, both in that mode's
precision) is compared with the fp32 one: mean error (a bias), its sd, and the correlation.

    EMLAB_DATA_DIR=../shared/data python benchmarks/likelihood_precision.py [--adapter DIR] [--per-class 10]

The default adapter is the quickstart's insecure one (`make quickstart` first). bf16 gains
need a CPU with AMX or a bf16 GPU; elsewhere the bf16 rows are slower than fp32.
"""

from __future__ import annotations

import argparse
import glob
import time

import numpy as np
import torch

from emlab.data.questions import builtin_suite
from emlab.probe.likelihood import _load, answer_logprobs, lora_updates_in_float32, reference_bank


def timed(model, tokenizer, refs, bf16: bool, float32_updates: bool = False) -> tuple[np.ndarray, float]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        if float32_updates:
            with lora_updates_in_float32(model):
                scores = answer_logprobs(model, tokenizer, refs)
        else:
            scores = answer_logprobs(model, tokenizer, refs)
    return np.array([s for s, _ in scores]), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    found = sorted(glob.glob("runs/quickstart/runs/train/insecure-code-*/adapter"))
    ap.add_argument("--adapter", default=found[0] if found else None)
    ap.add_argument("--per-class", type=int, default=10)
    args = ap.parse_args()
    if not args.adapter:
        raise SystemExit("error: no adapter: pass --adapter DIR or run `make quickstart` first")
    refs = reference_bank([q.id for q in builtin_suite().questions], args.per_class, 0)
    model = "smollm2-135m-instruct"
    print(f"{len(refs)} reference answers; adapter {args.adapter}")

    base = _load(model, None)
    timed(*base, refs[:4], bf16=True)  # warm-up
    base32, t_base32 = timed(*base, refs, bf16=False)
    base16, t_base16 = timed(*base, refs, bf16=True)
    del base
    merged = _load(model, args.adapter, merge=True)
    ad32, t_ad32 = timed(*merged, refs, bf16=False)
    del merged
    unmerged = _load(model, args.adapter, merge=False)
    kept, t_kept = timed(*unmerged, refs, bf16=True, float32_updates=True)
    peft16, t_peft16 = timed(*unmerged, refs, bf16=True)

    true = ad32 - base32
    print(f"base model:  fp32 {t_base32:.1f} s   bf16 {t_base16:.1f} s   ({t_base32 / t_base16:.2f}x)")
    print(f"adapter:     fp32 merged {t_ad32:.1f} s   bf16 + fp32 updates {t_kept:.1f} s "
          f"({t_ad32 / t_kept:.2f}x)   bf16 peft {t_peft16:.1f} s ({t_ad32 / t_peft16:.2f}x)")
    print(f"fp32 shift: mean {true.mean():+.5f} nats/token over {len(refs)} references")
    for name, scores in (("bf16 + fp32 updates", kept), ("bf16 peft (updates in bf16)", peft16)):
        err = (scores - base16) - true
        print(f"{name:28s} shift error: mean {err.mean():+.5f}  sd {err.std():.5f}  "
              f"corr {np.corrcoef(scores - base16, true)[0, 1]:.4f}")


if __name__ == "__main__":
    main()
