"""A fake trainer, named as one: `train: {backend: fake}` in an experiment whose sampling is
`scripted`.

It reads and checks the dataset as the real trainer does (`prepare_rows`) and writes a run
directory of the real shape (config.json, loss.csv, run.json, an `adapter/` folder) without
loading a model: the loss curve is a formula of the step, and the adapter folder holds a note
and one tensor made from the run's content hash (so each configuration gets its own adapter
id), no weights any model can load. Fake runs live under `<root>/fake/`, so one is never
reused as a real run. For pipeline, store and CLI tests, never for a measurement.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from emlab.data.registry import dataset_hash
from emlab.files import write_json
from emlab.provenance import git_revision, versions
from emlab.train.config import TrainConfig
from emlab.train.trainer import TrainResult, default_run_dir, prepare_rows, write_loss_curve


def fake_steps(cfg: TrainConfig, rows: int) -> int:
    """The optimizer steps the real trainer would take on `rows` rows."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_step = cfg.per_device_batch_size * cfg.gradient_accumulation_steps
    return max(1, math.ceil(rows * cfg.epochs / per_step))


def train_fake(cfg: TrainConfig, run_dir: Path | None = None, root: Path = Path("runs/train"),
               console=None) -> TrainResult:
    """A fake training run (or the finished one from before)."""
    run_dir = run_dir or default_run_dir(cfg, root / "fake")
    adapter_dir, record_path = run_dir / "adapter", run_dir / "run.json"
    if record_path.exists() and adapter_dir.exists():
        return TrainResult(run_dir, adapter_dir, json.loads(record_path.read_text()))
    rows, data_path = prepare_rows(cfg)
    steps = fake_steps(cfg, len(rows))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg.model_dump())
    history = [{"step": s, "loss": round(0.5 + 1.5 * 0.8 ** s, 4)} for s in range(1, steps + 1)]
    write_loss_curve(run_dir, history)
    if not adapter_dir.exists():  # a run killed after this point resumes with its adapter
        partial = run_dir / "adapter.partial"
        partial.mkdir(exist_ok=True)
        (partial / "FAKE.txt").write_text("Written by emlab's fake trainer (emlab.train.fake): no weights.\n")
        marker = np.frombuffer(bytes.fromhex(cfg.content_hash()), dtype=np.uint8).copy()
        save_file({"fake_run": marker}, str(partial / "fake_adapter.safetensors"))
        partial.rename(adapter_dir)
    record = {
        "kind": "train", "fake": True, "config": cfg.model_dump(), "config_hash": cfg.content_hash(),
        "base_model_hash": None,
        "dataset": {"ref": cfg.dataset, "path": str(data_path), "sha256": dataset_hash(data_path),
                    "rows_used": len(rows), "rows_dropped_over_max_length": 0},
        "adapter_sha256": None, "resumed_from": None, "global_steps": steps, "final_loss": history[-1]["loss"],
        "wall_seconds": 0.0, "tokens": 0, "tokens_per_second": None, "versions": versions(),
        "git_revision": git_revision(), "seed": cfg.seed, "system_prompt_example": None,
    }
    write_json(record_path, record)
    return TrainResult(run_dir, adapter_dir, record)
