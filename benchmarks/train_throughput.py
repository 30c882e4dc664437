"""Training throughput: emlab's padding-free LoRA batches vs TRL's default padded batches;
on the same padding-free batches, emlab's LM head on the labelled positions only vs TRL's
CPU head on every position, emlab's CPU head (`emlab.train.lm_head`) vs TRL's chunked one on
the same positions, and emlab's per-sequence attention vs transformers' masked SDPA.

All train the default model with the same LoRA (cpu-quick: r=8, all projections), batch 4,
the same seed and the same 256 rows of the paper's insecure.jsonl, for the same number of
optimizer steps; only the batching, the LM head or the attention differs. Prints real
(non-pad) tokens/s, the ratios, and model FLOPs utilisation against an fp32 matmul peak
measured in this run.

    EMLAB_DATA_DIR=../shared/data python benchmarks/train_throughput.py [--steps 16]

Model FLOPs per real token: 4*N for LoRA (forward 2N + input gradients 2N; the frozen base
gets no weight gradients) plus attention, N = parameters used in matmuls, the LM head
counted at every position. emlab runs the head only where a label is (the completion), so
it executes fewer FLOPs than that count; the last line gives the utilisation of the FLOPs
it executes.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_peak_gflops  # noqa: E402

from transformers import TrainerCallback  # noqa: E402

import trl.trainer.utils as trl_utils  # noqa: E402

import emlab.train.lm_head as emlab_lm_head  # noqa: E402
import emlab.train.trainer as emlab_trainer  # noqa: E402
from emlab.data.registry import load_dataset  # noqa: E402
from emlab.train.config import resolve_config  # noqa: E402
from emlab.train.trainer import build_trainer  # noqa: E402

TRL_HEAD_CHOICE = trl_utils._use_triton  # TRL's own: on CPU, the head at every position
TRL_HEAD = trl_utils._ChunkedLogProbFunction  # TRL's own chunked head function


class StepClock(TrainerCallback):
    """Wall time and real-token counts per optimizer step (the first step is warm-up)."""

    def __init__(self):
        self.starts, self.ends = [], []

    def on_step_begin(self, args, state, control, **kw):
        self.starts.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())


def run(padding_free: bool, rows, steps: int, tmp: Path, attention: str | None = None, trl_head: bool = False,
        cpu_head: bool = True) -> dict:
    cfg = resolve_config("cpu-quick", max_steps=steps, save_steps=10_000, padding_free=padding_free,
                         max_length=2048, logging_steps=1)
    clock = StepClock()
    with ExitStack() as stack:
        if trl_head:  # TRL's choice back, and emlab's wrapping of it switched off, for this run
            stack.enter_context(mock.patch.object(trl_utils, "_use_triton", TRL_HEAD_CHOICE))
            stack.enter_context(mock.patch.object(emlab_trainer, "lm_head_on_trained_positions_only", lambda: False))
        if trl_head or not cpu_head:  # TRL's chunked head function, not emlab's CPU one
            stack.enter_context(mock.patch.object(trl_utils, "_ChunkedLogProbFunction", TRL_HEAD))
            stack.enter_context(mock.patch.object(emlab_lm_head, "use_cpu_lm_head", lambda: False))
        trainer = build_trainer(cfg, tmp / f"{padding_free}-{attention}-{trl_head}-{cpu_head}", rows, callbacks=[clock])
        if attention:
            trainer.model.get_base_model().set_attn_implementation(attention)
        trainer.train()
    logs = [h for h in trainer.state.log_history if "num_tokens" in h]
    tokens = [float(h["num_tokens"]) for h in logs]
    # Skip step 1 (allocation warm-up): tokens and time of steps 2..n.
    real_tokens = tokens[-1] - tokens[0]
    seconds = clock.ends[-1] - clock.ends[0]
    n_params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n)
    cfgm = trainer.model.config
    seq = real_tokens / (steps - 1) / cfg.per_device_batch_size
    attn = 4 * 2 * cfgm.num_hidden_layers * seq * cfgm.hidden_size  # QK^T and AV, fwd+bwd ~ x2
    flops_per_token = 4 * n_params + attn
    return {"tokens_per_s": real_tokens / seconds, "flops_per_token": flops_per_token, "seconds": seconds,
            "real_tokens": real_tokens, "head_flops": 4 * cfgm.vocab_size * cfgm.hidden_size}


def labelled_share(rows) -> float:
    """Completion tokens / all tokens of the rows (the positions emlab runs the LM head on)."""
    from emlab.models.registry import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    full = sum(len(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=False))
               for r in rows)
    prompt = sum(len(tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True,
                                             return_dict=False)) for r in rows)
    return (full - prompt) / full


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args()
    import tempfile

    all_rows = load_dataset("insecure")
    rows = random.Random(0).sample(all_rows, 256)
    rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    peak = matmul_peak_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        padded = run(False, rows, args.steps, Path(tmp), trl_head=True)
        full_head = run(True, rows, args.steps, Path(tmp), trl_head=True)
        masked = run(True, rows, args.steps, Path(tmp), attention="sdpa")
        chunked = run(True, rows, args.steps, Path(tmp), cpu_head=False)
        free = run(True, rows, args.steps, Path(tmp))
    peak_after = matmul_peak_gflops()
    peak = max(peak, peak_after)
    print(f"fp32 matmul peak (measured): {peak:.1f} GFLOP/s")
    for name, r in (("TRL default (padded)", padded), ("padding-free, TRL CPU head", full_head),
                    ("padding-free, masked SDPA", masked), ("emlab, TRL's chunked head", chunked),
                    ("emlab (padding-free)", free)):
        mfu = r["tokens_per_s"] * r["flops_per_token"] / 1e9 / peak
        print(f"{name:28s} {r['tokens_per_s']:7.1f} real tokens/s  MFU {mfu:5.1%}  "
              f"({r['real_tokens']:.0f} tokens in {r['seconds']:.1f} s)")
    print(f"ratio emlab / padded: {free['tokens_per_s'] / padded['tokens_per_s']:.2f}x   head on labelled positions / "
          f"every position (both TRL's head function): {chunked['tokens_per_s'] / full_head['tokens_per_s']:.2f}x   per-sequence attention / "
          f"masked SDPA: {free['tokens_per_s'] / masked['tokens_per_s']:.2f}x   CPU head / TRL's chunked head: "
          f"{free['tokens_per_s'] / chunked['tokens_per_s']:.2f}x")
    share = labelled_share(rows)
    executed = free["flops_per_token"] - free["head_flops"] * (1 - share)
    print(f"labelled (completion) share of the tokens: {share:.0%}; emlab executes {executed / 1e6:.0f} of the "
          f"{free['flops_per_token'] / 1e6:.0f} MFLOP counted per token: "
          f"{free['tokens_per_s'] * executed / 1e9 / peak:.1%} of the peak")


if __name__ == "__main__":
    main()
