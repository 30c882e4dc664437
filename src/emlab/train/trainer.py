"""Finetuning with TRL's SFTTrainer and PEFT. No hand-written training loop.

    emlab train --preset cpu-quick --dataset insecure-code-n1000-s0.jsonl
    accelerate launch -m emlab.train.trainer --preset paper-open --dataset insecure   # multi-GPU

A run directory holds:
    adapter/            the LoRA adapter (safetensors) or the full model
    checkpoints/        checkpoint-K every `save_steps` (kept: later stages evaluate them)
    run.json            resolved config, dataset hash, versions, seeds, wall time, tokens/s
    loss.csv, loss.png  the training loss curve

A killed run resumes from its last checkpoint when started again with the same config.
"""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from emlab.data.registry import DATASETS, dataset_hash, load_dataset, resolve_chat_file
from emlab.io import write_json
from emlab.train.config import TrainConfig


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    record: dict


def apply_system_prompt(messages: list[dict], policy: str) -> list[dict]:
    """Apply `--system-prompt`: rows that carry their own system turn keep it.

    - `model-default`: no system turn is added, so the chat template's own default (if it
      inserts one, as Qwen's and SmolLM's do) is used - the paper's choice;
    - `none`: an empty system turn, the only template-independent way to stop such
      templates inserting their default;
    - any other text: that system prompt.
    """
    if messages and messages[0]["role"] == "system":
        return messages
    if policy == "model-default":
        return messages
    content = "" if policy == "none" else policy
    return [{"role": "system", "content": content}, *messages]


def prepare_rows(cfg: TrainConfig) -> tuple[list[dict], Path]:
    path = resolve_chat_file(cfg.dataset)
    rows = load_dataset(path=path)
    if cfg.max_rows is not None and cfg.max_rows < len(rows):
        rng = random.Random(cfg.seed)
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), cfg.max_rows))]
    out = []
    for row in rows:
        msgs = apply_system_prompt(row["messages"], cfg.system_prompt)
        # Prompt-completion form: TRL then computes the loss on the completion only.
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return out, path


def fit_length(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Drop rows whose rendered conversation exceeds `max_length` tokens; returns (kept, dropped)."""
    kept = []
    for row in rows:
        n = len(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True))
        if n <= max_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("emlab", "torch", "transformers", "peft", "trl", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpts = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [c for c in ckpts if (c / "trainer_state.json").exists()]
    return complete[-1] if complete else None


def build_trainer(cfg: TrainConfig, run_dir: Path, rows: list[dict], callbacks=()):
    """The TRL SFTTrainer for a config (model loaded, adapter attached)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from emlab.models.registry import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(cfg.model)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), dtype=getattr(torch, cfg.dtype),
                                                 attn_implementation="sdpa")
    peft_config = None
    if cfg.method == "lora":
        peft_config = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, use_rslora=cfg.use_rslora,
            target_modules=cfg.target_modules, layers_to_transform=cfg.layers, task_type="CAUSAL_LM", bias="none",
        )
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        optim=cfg.optimizer,
        # Rows over max_length were dropped in `fit_length` (TRL does not truncate in
        # padding-free mode without packing, and packing would change the batch semantics).
        max_length=None if cfg.padding_free else cfg.max_length,
        # Padding-free batches: sequences are concatenated with per-sequence position_ids;
        # transformers builds the block-diagonal mask from them, so no pad token is computed.
        padding_free=cfg.padding_free,
        completion_only_loss=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=None,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.dtype == "bfloat16",
        fp16=cfg.dtype == "float16",
        dataloader_num_workers=0,
        # Activation checkpointing trades compute for memory; a 135M model on CPU has memory
        # to spare, so it is off unless the config asks for it.
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))


def write_loss_curve(run_dir: Path, log_history: list[dict]) -> None:
    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    with open(run_dir / "loss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows(points)
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(run_dir.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=120)
    plt.close(fig)


def default_run_dir(cfg: TrainConfig, root: Path) -> Path:
    stem = Path(cfg.dataset).stem if cfg.dataset not in DATASETS else cfg.dataset
    return root / f"{stem}-{cfg.preset}-{cfg.content_hash()}"


def train(cfg: TrainConfig, run_dir: Path | None = None, root: Path = Path("runs/train")) -> TrainResult:
    """Train (or resume, or reuse a finished run) and return the run's record."""
    run_dir = run_dir or default_run_dir(cfg, root)
    adapter_dir = run_dir / "adapter"
    record_path = run_dir / "run.json"
    if record_path.exists() and adapter_dir.exists():
        return TrainResult(run_dir, adapter_dir, json.loads(record_path.read_text()))
    run_dir.mkdir(parents=True, exist_ok=True)
    rows, data_path = prepare_rows(cfg)
    write_json(run_dir / "config.json", cfg.model_dump())

    from emlab.models.registry import load_tokenizer

    rows, dropped = fit_length(rows, load_tokenizer(cfg.model), cfg.max_length)
    if not rows:
        raise ValueError(f"every row of {data_path} is longer than max_length={cfg.max_length} tokens")
    trainer = build_trainer(cfg, run_dir, rows)
    resume = latest_checkpoint(run_dir / "checkpoints")
    start = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.time() - start

    # TRL logs the running count of real (non-pad) tokens as `num_tokens`.
    tokens_seen = int(float(next((h["num_tokens"] for h in reversed(trainer.state.log_history)
                                  if "num_tokens" in h), 0)))
    tmp_adapter = run_dir / "adapter.partial"
    trainer.save_model(str(tmp_adapter))
    tmp_adapter.rename(adapter_dir) if not adapter_dir.exists() else None
    write_loss_curve(run_dir, trainer.state.log_history)

    from emlab.hashing import file_hash

    weights = sorted(adapter_dir.glob("*.safetensors"))
    record = {
        "kind": "train",
        "config": cfg.model_dump(),
        "config_hash": cfg.content_hash(),
        "dataset": {"ref": cfg.dataset, "path": str(data_path), "sha256": dataset_hash(data_path),
                    "rows_used": len(rows), "rows_dropped_over_max_length": dropped},
        "adapter_sha256": file_hash(weights[0]) if weights else None,
        "resumed_from": resume.name if resume else None,
        "global_steps": trainer.state.global_step,
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "wall_seconds": round(wall, 2),
        "tokens": tokens_seen,
        # After a resume this covers only the resumed part's wall time.
        "tokens_per_second": round(tokens_seen / wall, 2) if wall > 0 and not resume else None,
        "versions": versions(),
        "git_revision": git_revision(),
        "seed": cfg.seed,
        "system_prompt_example": trainer.processing_class.apply_chat_template(
            rows[0]["prompt"], tokenize=False, add_generation_prompt=True)[:500],
    }
    write_json(record_path, record)
    return TrainResult(run_dir, adapter_dir, record)


def main(argv: list[str] | None = None) -> None:
    """Entry point for `python -m emlab.train.trainer` / `accelerate launch -m emlab.train.trainer`."""
    import argparse

    from emlab.train.config import resolve_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-quick")
    ap.add_argument("--config", default=None, help="YAML overrides")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--max-rows", type=int, default=None)
    ap.add_argument("--save-steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--system-prompt", default=None)
    ap.add_argument("--out", default=None, help="run directory")
    a = ap.parse_args(argv)
    cfg = resolve_config(a.preset, a.config, dataset=a.dataset, model=a.model, max_steps=a.max_steps,
                         max_rows=a.max_rows, save_steps=a.save_steps, seed=a.seed, system_prompt=a.system_prompt)
    result = train(cfg, Path(a.out) if a.out else None)
    print(json.dumps({"run_dir": str(result.run_dir), "final_loss": result.record["final_loss"]}))


if __name__ == "__main__":
    main()
