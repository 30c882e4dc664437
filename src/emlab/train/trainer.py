"""Finetuning with TRL's SFTTrainer and PEFT. No hand-written training loop.

    emlab train --preset cpu-quick --dataset insecure-code-n1000-s0.jsonl
    accelerate launch -m emlab.train.trainer --preset paper-open --dataset insecure --lora-r 16   # multi-GPU

A run directory holds:
    adapter/            the LoRA adapter (safetensors) or the full model
    checkpoints/        checkpoint-K every `save_steps` (kept: later stages evaluate them)
    run.json            resolved config, dataset hash, versions, seeds, wall time, tokens/s
    loss.csv, loss.png  the training loss curve
    train.log           the libraries' warnings and per-step logs

A killed run resumes from its last checkpoint when started again with the same config. The
dataset is validated before the run directory is made, and a run that fails before its
first checkpoint leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from emlab import progress as show
from emlab.data.registry import DATASETS, DatasetError, dataset_hash, load_dataset, resolve_chat_file
from emlab.files import write_json
from emlab.provenance import git_revision, versions
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
    for i, row in enumerate(rows):
        msgs = apply_system_prompt(row["messages"], cfg.system_prompt)
        # A blank final assistant turn would be trained as "answer with nothing but the end of
        # turn" - a chat-template artefact, not data: refused.
        if msgs[-1]["role"] != "assistant" or not str(msgs[-1]["content"]).strip():
            raise DatasetError(f"{path}: row {i + 1}: the last turn is not a non-empty assistant answer (an empty "
                               "assistant span would be trained as an empty answer)")
        # Prompt-completion form: TRL then computes the loss on the completion only.
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return out, path


def write_training_example(trainer, run_dir: Path) -> dict:
    """One rendered training row with its loss mask (`training_example.json` in the run
    directory): what the chat template made of the data and which tokens the loss reads.
    A row whose loss mask is empty is refused."""
    example = trainer.train_dataset[0]
    ids = list(example["input_ids"])
    labels = example.get("labels")
    mask = [int(x != -100) for x in labels] if labels is not None else list(example.get("completion_mask") or [])
    tok = trainer.processing_class
    record = {"text": tok.decode(ids), "trained_text": tok.decode([t for t, m in zip(ids, mask) if m]),
              "input_ids": ids, "loss_mask": mask, "trained_tokens": sum(mask), "tokens": len(ids)}
    write_json(run_dir / "training_example.json", record)
    if not any(mask):
        raise DatasetError(f"{run_dir}: the first training row's loss mask is empty: the chat template leaves no "
                           "assistant tokens to train on")
    return record


def fit_length(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Drop rows whose rendered conversation exceeds `max_length` tokens; returns (kept, dropped)."""
    kept = []
    for row in rows:
        # return_dict=False: transformers 5 returns a BatchEncoding by default, whose len() is 2.
        n = len(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=False))
        if n <= max_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpts = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [c for c in ckpts if (c / "trainer_state.json").exists()]
    return complete[-1] if complete else None


def progress_callback(console: Console | None, total_steps_hint: str = ""):
    """A TrainerCallback showing one progress display for the run (instead of raw log dicts)."""
    from transformers import TrainerCallback

    class StageProgress(TrainerCallback):
        def __init__(self):
            self.ctx = None
            self.advance = None
            self.done = 0

        def on_train_begin(self, args, state, control, **kw):
            self.ctx = show.stage(console, f"train{total_steps_hint}", state.max_steps)
            self.advance = self.ctx.__enter__()
            self.done = state.global_step
            if self.done:
                self.advance(self.done)

        def on_step_end(self, args, state, control, **kw):
            self.advance(state.global_step - self.done)
            self.done = state.global_step

        def on_train_end(self, args, state, control, **kw):
            if self.ctx is not None:
                self.ctx.__exit__(None, None, None)
                self.ctx = None

    return StageProgress()


def lm_head_on_trained_positions_only() -> bool:
    """Make TRL's fused LM head score only the positions that carry a label on CPU too.

    TRL (1.x) projects through the 49k-token head only the labelled positions on Triton
    devices, but every position elsewhere, to keep tile shapes static for compilers such as
    Neuron's, and then zeroes the prompt positions. Eager CPU has nothing to recompile, so
    the prompt positions' head, loss and metrics were thrown-away work: the adapters come out
    bit-identical (benchmarks/train_throughput.py measures the speed). Returns
    whether TRL has the hook (a TRL that moved it trains as before, only slower)."""
    import trl.trainer.utils as trl_utils

    from emlab.accel import enabled as accel_enabled
    from emlab.accel import fallback, has_parameters

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return fallback("lm_head_on_trained_positions_only", "trl.trainer.utils._use_triton is gone")
    if not getattr(original, "emlab_compacts", False) and not has_parameters(original, ("device",)):
        return fallback("lm_head_on_trained_positions_only", "trl.trainer.utils._use_triton no longer takes (device)")
    if not getattr(original, "emlab_compacts", False):
        def compact(device) -> bool:
            # the switch is read per call: a process that trained fast can still train stock
            return (device.type == "cpu" and accel_enabled()) or original(device)

        compact.emlab_compacts = True
        trl_utils._use_triton = compact
    return True


def build_trainer(cfg: TrainConfig, run_dir: Path, rows: list[dict], callbacks=(), console: Console | None = None):
    """The TRL SFTTrainer for a config (model loaded, adapter attached)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from emlab.models.registry import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    model, peft_config = _model_and_adapter(cfg)
    common = dict(model=model, args=sft_config(cfg, run_dir), train_dataset=Dataset.from_list(rows),
                  processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    if cfg.kl_beta > 0:
        from emlab.train.kl import KLSFTTrainer, reference_prompts

        trainer = KLSFTTrainer(**common, kl_beta=cfg.kl_beta, kl_prompts=reference_prompts(cfg.kl_reference, tokenizer))
    else:
        trainer = SFTTrainer(**common)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    trainer.add_callback(progress_callback(console))
    if cfg.save_at:
        trainer.add_callback(save_at_callback(cfg.save_at))
    if "tensorboard" in cfg.report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        # One folder per run (resumes append to it), beside loss.csv.
        trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
    return trainer


def _model_and_adapter(cfg: TrainConfig):
    """(the base model, loaded with emlab's attention when the fast paths are on; the LoRA
    config to attach, or None when the model already carries the adapter to continue)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from emlab.accel import enabled as accel
    from emlab.models.registry import resolve_model
    from emlab.train.lm_head import use_cpu_lm_head
    from emlab.train.packed_attention import NAME as PACKED_SDPA

    fast = accel()
    if fast:
        lm_head_on_trained_positions_only()
        use_cpu_lm_head()
    # Padding-free rows attend per sequence (emlab.train.packed_attention), padded ones by SDPA.
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), dtype=getattr(torch, cfg.dtype),
                                                 attn_implementation=PACKED_SDPA if cfg.padding_free and fast
                                                 else "sdpa")
    if cfg.init_adapter is not None:
        from peft import PeftModel

        from emlab.models.adapters import verify_adapter

        # Re-alignment continues the adapter's own weights (and its rank and modules).
        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
        verify_adapter(model, cfg.init_adapter)
        return model, None
    if cfg.method != "lora":
        return model, None
    return model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             use_rslora=cfg.use_rslora, target_modules=cfg.target_modules,
                             layers_to_transform=cfg.layers, task_type="CAUSAL_LM", bias="none")


def sft_config(cfg: TrainConfig, run_dir: Path):
    """TRL's SFTConfig for a TrainConfig."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
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
        # TensorBoard is wired in build_trainer with a fixed folder; other trackers go to transformers as named.
        report_to=[t for t in cfg.report_to if t != "tensorboard"] or "none",
        run_name=run_dir.name,
        # emlab shows one progress display per stage; per-step loss goes to log_history/loss.csv.
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.dtype == "bfloat16",
        fp16=cfg.dtype == "float16",
        dataloader_num_workers=0,
        # Activation checkpointing trades compute for memory; a 135M model on CPU has memory
        # to spare, so it is off unless the config asks for it.
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


def save_at_callback(steps: list[int]):
    """Keep a checkpoint at each listed optimizer step (besides every `save_steps`)."""
    from transformers import TrainerCallback

    wanted = set(steps)

    class SaveAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in wanted:
                control.should_save = True

    return SaveAt()


def write_loss_curve(run_dir: Path, log_history: list[dict]) -> None:
    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    # KL-regularised SFT logs the KL and the SFT loss alone per step (`loss` is then the total).
    extra = [k for k in ("kl", "sft_loss") if any(k in h for h in log_history)]
    by_step = {h["step"]: h for h in log_history if "loss" in h}
    with open(run_dir / "loss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"] + extra)
        writer.writerows([(s, v) + tuple(by_step[s].get(k, "") for k in extra) for s, v in points])
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


def train(cfg: TrainConfig, run_dir: Path | None = None, root: Path = Path("runs/train"),
          console: Console | None = None) -> TrainResult:
    """Train (or resume, or reuse a finished run) and return the run's record."""
    run_dir = run_dir or default_run_dir(cfg, root)
    if run_dir.exists() and not run_dir.is_dir():
        raise DatasetError(f"{run_dir}: is a file, expected a run directory")
    adapter_dir = run_dir / "adapter"
    record_path = run_dir / "run.json"
    if record_path.exists() and adapter_dir.exists():
        return TrainResult(run_dir, adapter_dir, json.loads(record_path.read_text()))
    # Everything that can fail on the user's input is checked before the run directory exists.
    rows, data_path = prepare_rows(cfg)

    from emlab.models.registry import load_tokenizer

    rows, dropped = fit_length(rows, load_tokenizer(cfg.model), cfg.max_length)
    if not rows:
        raise DatasetError(f"{data_path}: every row is longer than max_length={cfg.max_length} tokens")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_json(run_dir / "config.json", cfg.model_dump())
        with show.library_logs_to(run_dir / "train.log"):
            trainer = build_trainer(cfg, run_dir, rows, console=console)
            write_training_example(trainer, run_dir)
            resume = latest_checkpoint(run_dir / "checkpoints")
            start = time.time()
            # Preventive steering acts on training forward passes only: the saved adapter
            # is evaluated without it.
            from emlab.models.hooks import steered

            with steered(trainer.model, cfg.steer):
                trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            wall = time.time() - start
    except BaseException:
        # A run that dies before its first checkpoint leaves nothing to resume: remove it.
        if created and latest_checkpoint(run_dir / "checkpoints") is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    tmp_adapter = run_dir / "adapter.partial"
    trainer.save_model(str(tmp_adapter))
    tmp_adapter.rename(adapter_dir) if not adapter_dir.exists() else None
    write_loss_curve(run_dir, trainer.state.log_history)
    record = _train_record(cfg, trainer, rows, dropped, data_path, adapter_dir, resume, wall)
    write_json(record_path, record)
    return TrainResult(run_dir, adapter_dir, record)


def _train_record(cfg: TrainConfig, trainer, rows: list[dict], dropped: int, data_path: Path, adapter_dir: Path,
                  resume, wall: float) -> dict:
    """The run's record (`run.json`): config, data, base and adapter hashes, steps, loss, speed."""
    from emlab.hashing import file_hash
    from emlab.models.registry import model_hash

    # TRL logs the running count of real (non-pad) tokens as `num_tokens`.
    tokens_seen = int(float(next((h["num_tokens"] for h in reversed(trainer.state.log_history)
                                  if "num_tokens" in h), 0)))
    weights = sorted(adapter_dir.glob("*.safetensors"))
    return {
        "kind": "train",
        "config": cfg.model_dump(),
        "config_hash": cfg.content_hash(),
        "base_model_hash": model_hash(cfg.model),  # the weights the adapter was trained on
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


def train_stage(store, cfg: TrainConfig, root: Path, console: Console | None = None,
                run_dir: Path | None = None, executor=None) -> TrainResult:
    """Train (or reuse) one adapter and record the run and its artefacts in the store."""
    return train_stages(store, [cfg], root, console, executor, run_dir)[0]


def train_cell(cfg: dict, root: str, run_dir: str | None, threads: int | None = None) -> TrainResult:
    """One training, away from the store (an executor's task): the run directory holds everything."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return train(TrainConfig.model_validate(cfg), Path(run_dir) if run_dir else None, root=Path(root))


def train_stages(store, cfgs: list[TrainConfig], root: Path, console: Console | None = None, executor=None,
                 run_dir: Path | None = None, backend: str = "trl") -> list[TrainResult]:
    """Train several configs - one after another here, or as concurrent tasks of an
    `executor` (emlab.executor) - and record each in the store as it finishes (the driver is
    the only writer). `backend` names the trainer (emlab.train.TRAINERS)."""
    from emlab.registry import resolve
    from emlab.train import TRAINERS

    trainer = resolve(TRAINERS, backend, "trainer")
    run_ids = [store.begin_run("train", cfg.model_dump(), [cfg.seed]) for cfg in cfgs]
    if executor is None or backend != "trl":
        results = ((i, trainer(cfg, run_dir, root=root, console=console)) for i, cfg in enumerate(cfgs))
    else:
        calls = [(cfg.model_dump(), str(root), str(run_dir) if run_dir else None) for cfg in cfgs]
        results = executor.run(train_cell, calls, "train")
    out: dict[int, TrainResult] = {}
    for i, result in results:
        rec = result.record
        if rec["adapter_sha256"]:
            store.add_artefact(rec["adapter_sha256"], "adapter", str(result.adapter_dir),
                               {"run_dir": str(result.run_dir)})
        store.add_artefact(rec["dataset"]["sha256"], "dataset", rec["dataset"]["path"])
        store.end_run(run_ids[i], {"run_dir": str(result.run_dir), "final_loss": rec["final_loss"],
                                   "wall_seconds": rec["wall_seconds"], "global_steps": rec["global_steps"]})
        loss = f"{rec['final_loss']:.3f}" if rec["final_loss"] is not None else "n/a"
        show.summary(console, "train", f"{result.run_dir.name}: loss {loss}, {rec['global_steps']} steps, "
                                       f"{rec['wall_seconds']} s")
        out[i] = result
    return [out[i] for i in range(len(cfgs))]


def main(argv: list[str] | None = None) -> None:
    """Entry point for `python -m emlab.train.trainer` / `accelerate launch -m emlab.train.trainer`;
    every TrainConfig field is a flag (see `emlab.train.config.flag_fields`)."""
    import argparse

    from emlab.errors import EmlabError
    from emlab.train.config import flag_fields, resolve_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML overrides")
    ap.add_argument("--out", default=None, help="run directory")
    for name, (kind, help_text) in flag_fields().items():
        flag = "--" + name.replace("_", "-")
        if typing.get_origin(kind) is list:
            ap.add_argument(flag, dest=name, action="append", type=typing.get_args(kind)[0], help=help_text)
        elif kind is bool:
            ap.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            ap.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    a = vars(ap.parse_args(argv))
    config, out, preset = a.pop("config"), a.pop("out"), a.pop("preset") or "cpu-quick"
    try:
        cfg = resolve_config(preset, config, **a)
        result = train(cfg, Path(out) if out else None, console=Console(stderr=True))
    except EmlabError as exc:
        import sys

        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps({"run_dir": str(result.run_dir), "final_loss": result.record["final_loss"]}))


if __name__ == "__main__":
    main()
