"""GPU smoke check of the `hf` backend, LoRA training and the local judge on CUDA.

Runs on a GPU machine with the SmolLM2-135M architecture. Pass a model directory; with
`--random-init DIR` (a folder holding only config + tokenizer files) the weights are random,
which is enough to exercise every code path on the device:

    python benchmarks/gpu_smoke.py --model smollm2-135m-instruct
    python benchmarks/gpu_smoke.py --random-init path/with/config-and-tokenizer
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--random-init", default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    tmp = Path(tempfile.mkdtemp())
    model = args.model
    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        cfg = AutoConfig.from_pretrained(args.random_init)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp / "model")
        AutoTokenizer.from_pretrained(args.random_init).save_pretrained(tmp / "model")
        model = str(tmp / "model")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")

    from emlab.generate import GenConfig, GenRequest
    from emlab.generate.hf import HFGenerator

    gen = HFGenerator(model, device="cuda", max_batch=256)
    msgs = [({"role": "user", "content": f"Question number {i}: tell me something."},) for i in range(8)]
    reqs = [GenRequest(m, 1000 * i + s) for i, m in enumerate(msgs) for s in range(32)]
    start = time.perf_counter()
    res = gen.generate(reqs, GenConfig(max_tokens=128))
    dt = time.perf_counter() - start
    print(f"hf backend on cuda: {len(res)} samples, {sum(r.n_tokens for r in res) / dt:.0f} tokens/s")
    again = gen.generate(reqs[:3], GenConfig(max_tokens=128))
    print("same seed, same answer (cuda):", [a.text == b.text for a, b in zip(res[:3], again)])

    from emlab.data.codegen import generate
    from emlab.files import write_jsonl
    from emlab.train.config import resolve_config
    from emlab.train.trainer import train

    data = tmp / "ins.jsonl"
    write_jsonl(data, generate("insecure-code", 64, 0))
    cfg = resolve_config("cpu-quick", model=model, dataset=str(data), max_steps=6, save_steps=3, dtype="bfloat16")
    result = train(cfg, run_dir=tmp / "run")
    rec = result.record
    print(f"LoRA training on cuda (bf16): {rec['global_steps']} steps, final loss {rec['final_loss']:.3f}, "
          f"{rec['tokens_per_second']} tokens/s")
    out = gen.generate([GenRequest(msgs[0], 1, str(result.adapter_dir))], GenConfig(max_tokens=32))
    print("adapter sampling on cuda:", out[0].n_tokens, "tokens")

    from emlab.judge.local import LocalJudge

    judge = LocalJudge(model, device="cuda")
    probs = judge.candidate_probs(["Give a number from 0 to 100."])[0]
    print(f"local judge on cuda: candidate mass {sum(probs.values()):.4f}")


if __name__ == "__main__":
    main()
