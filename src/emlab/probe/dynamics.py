"""Training dynamics: what happens between the first step and the final adapter.

An experiment with `checkpoints: every` (or a list of steps) samples, judges, scores and
code-evaluates every kept checkpoint as its own model variant (`<condition>@<step>`); this
module gives the per-checkpoint quantities that need no judge:

- LoRA rotation: cosine of each checkpoint's B (and A) matrices, all modules flattened
  together, with the final adapter's - a sudden rise locates the phase transition in
  which the adapter's direction settles;
- the training loss at the checkpoint (from the trainer's own log);
- the projection of the checkpoint's own answers (mean answer-token activation at one
  layer) on a misalignment direction (`projection: {direction: FILE, layer: L}`);

and `early_stop`, which reads the curves and suggests the last checkpoint before the EM
measure rises while the narrow task has already converged - a suggestion, stated as such.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from emlab.errors import EmlabError


def kept_checkpoints(run_dir: str | Path, which) -> list[tuple[int, Path]]:
    """(step, directory) of the run's complete checkpoints that `which` asks for ("every" or
    a list of steps), excluding the final step (the final adapter stands for it)."""
    run_dir = Path(run_dir)
    final = json.loads((run_dir / "run.json").read_text())["global_steps"]
    out = []
    for d in sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(d.name.split("-")[1])
        if not (d / "trainer_state.json").exists() or not list(d.glob("*.safetensors")) or step >= final:
            continue
        if which == "every" or step in which:
            out.append((step, d))
    if which != "every":
        missing = sorted(set(which) - {s for s, _ in out} - {final})
        if missing:
            raise EmlabError(f"{run_dir}: no kept checkpoint at step(s) {missing} (save_steps decides which are kept)")
    return out


def _flat(adapter_dir: Path, which: str) -> np.ndarray:
    from emlab.probe.rank1 import lora_vectors

    vecs = lora_vectors(adapter_dir)
    return np.concatenate([m.ravel() for m in vecs[which]])


def rotation(adapter_dir: str | Path, final_dir: str | Path) -> dict:
    """Cosine of the flattened LoRA B and A matrices with the final adapter's."""
    out = {}
    for which in ("B", "A"):
        u, v = _flat(Path(adapter_dir), which), _flat(Path(final_dir), which)
        out[f"{which.lower()}_cosine_to_final"] = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))
    return out


def loss_at(run_dir: str | Path, step: int, window: int = 3) -> float | None:
    """Mean logged training loss over the `window` logged steps up to `step`."""
    path = Path(run_dir) / "loss.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    df = df[df["step"] <= step].tail(window)
    return float(df["loss"].mean()) if len(df) else None


def projection(cache, keys: list[str], direction: np.ndarray, layer: int) -> tuple[float, float]:
    """Mean and standard error of the answers' projection on the unit direction."""
    x = cache.load(keys, [layer])[layer]
    p = x @ (direction / np.linalg.norm(direction))
    return float(p.mean()), float(p.std(ddof=1) / np.sqrt(len(p))) if len(p) > 1 else float("nan")


def early_stop(points: pd.DataFrame, measure: str, low: str, baseline: float) -> dict:
    """For one condition's points (step, train_loss, measure, its CI low), ordered by step:
    the first step whose CI lower bound exceeds `baseline` (EM has risen), the first step at
    which the loss has made 90% of its total drop (the task has converged), and the
    suggested stop: the last checkpoint before the rise."""
    pts = points.sort_values("step")
    rise = next((int(r.step) for r in pts.itertuples() if getattr(r, low) > baseline and r.step > 0), None)
    loss = pts.dropna(subset=["train_loss"])
    converged = None
    if len(loss) >= 2:
        first, last = loss["train_loss"].iloc[0], loss["train_loss"].iloc[-1]
        drop = first - last
        converged = next((int(r.step) for r in loss.itertuples() if r.train_loss - last <= 0.1 * drop), None) \
            if drop > 0 else int(loss["step"].iloc[0])
    before = [int(s) for s in pts["step"] if rise is not None and s < rise]
    suggestion = before[-1] if before else None
    if rise is None:
        text = f"{measure} never rose above the base value ({baseline:.3g}) with its CI: no early stop suggested"
    elif suggestion is None:
        text = f"{measure} had already risen at the first checkpoint (step {rise}): keep fewer steps or save earlier"
    else:
        conv = "the task had converged by then" if converged is not None and converged <= suggestion else \
            "the task had not yet converged by then (the stop would cost narrow-task performance)"
        text = f"suggested early stop: step {suggestion}, the last checkpoint before {measure} rose (step {rise}); {conv}"
    return {"measure": measure, "rise_step": rise, "converged_step": converged, "suggested_step": suggestion,
            "text": text}
