"""Rank-1 adapter analysis (Turner, Soligo et al.'s model organisms: one rank-1 LoRA).

    emlab probe rank1 --adapter runs/train/x/adapter --direction em.safetensors --public

A rank-1 LoRA on module W adds B (A x) to W x: A [1, in] reads a scalar from the module's
input, B [out, 1] writes that scalar along one vector. Where B writes into the residual
stream (o_proj, down_proj: out = d_model) its cosine with the layer's misalignment
direction says whether the adapter writes the direction; where A reads the residual
stream (q/k/v/gate/up: in = d_model) the cosine of A with the direction of the layer
before says whether it reads it. The per-token scalar A x, recorded by a forward hook on
PEFT's own `lora_A` module while answers are teacher-forced, shows which tokens the adapter
fires on - compared between answers judged misaligned and aligned.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emlab.errors import EmlabError

_KEY = re.compile(r"layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def lora_vectors(adapter_dir: str | Path) -> pd.DataFrame:
    """One row per adapted module: layer, module, rank, A [r, in], B [out, r] (numpy)."""
    from safetensors.numpy import load_file

    files = sorted(Path(adapter_dir).glob("*.safetensors"))
    if not files:
        raise EmlabError(f"{adapter_dir}: no adapter weights (*.safetensors)")
    mats: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, t in load_file(str(files[0])).items():
        m = _KEY.search(name)
        if m:
            mats.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t.astype(np.float32)
    if not mats:
        raise EmlabError(f"{files[0]}: no LoRA A/B matrices (is this a LoRA adapter?)")
    rows = [{"layer": layer, "module": module.split(".")[-1], "path": module, "rank": ab["A"].shape[0],
             "A": ab["A"], "B": ab["B"]} for (layer, module), ab in sorted(mats.items()) if "A" in ab and "B" in ab]
    return pd.DataFrame(rows)


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))


def direction_cosines(vectors: pd.DataFrame, directions: dict[int, np.ndarray]) -> pd.DataFrame:
    """Cosine of each rank-1 module's B (writes) with the direction at its layer, and of A
    (reads) with the direction at the layer before, where the dimensions are d_model."""
    rows = []
    for r in vectors.itertuples():
        if r.rank != 1:
            continue
        b, a = r.B[:, 0], r.A[0]
        d_here, d_before = directions.get(r.layer), directions.get(r.layer - 1)
        rows.append({"layer": r.layer, "module": r.module, "|A|": float(np.linalg.norm(a)),
                     "|B|": float(np.linalg.norm(b)),
                     "cos(B, direction[layer])": _cos(b, d_here) if d_here is not None and len(d_here) == len(b)
                     else float("nan"),
                     "cos(A, direction[layer-1])": _cos(a, d_before) if d_before is not None and len(d_before) == len(a)
                     else float("nan")})
    if not rows:
        raise EmlabError("the adapter has no rank-1 modules (train one with --preset rank1)")
    return pd.DataFrame(rows)


@torch.inference_mode()
def token_scalars(peft_model, tokenizer, items, max_answer_tokens: int = 256) -> pd.DataFrame:
    """The scalar A x of every rank-1 `lora_A` module at every answer token: one row per
    (item, module, token) with the item's label and the token text."""
    from emlab.probe.activations import encode

    modules = {name: mod for name, mod in peft_model.named_modules()
               if name.endswith("lora_A.default") and getattr(mod, "out_features", 0) == 1}
    if not modules:
        raise EmlabError("no rank-1 lora_A modules in the model (is a rank-1 adapter loaded?)")
    seen: dict[str, torch.Tensor] = {}
    handles = [mod.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o[..., 0].detach()))
               for n, mod in modules.items()]
    device = next(peft_model.parameters()).device
    rows = []
    try:
        for it in items:
            ids, first = encode(tokenizer, it, max_answer_tokens)
            peft_model(input_ids=torch.tensor([ids], device=device), use_cache=False)
            tokens = tokenizer.convert_ids_to_tokens(ids[first:])
            for name, vals in seen.items():
                layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
                for pos, v in enumerate(vals[0, first:].float().cpu().tolist()):
                    rows.append({"key": it.key, "label": it.label, "layer": layer,
                                 "module": name.split(".lora_A")[0].split(".")[-1], "position": pos, "token": tokens[pos],
                                 "scalar": v})
    finally:
        for h in handles:
            h.remove()
    return pd.DataFrame(rows)


def scalar_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per module: mean |A x| on misaligned vs aligned answers, and the AUROC of the
    per-answer mean scalar for telling them apart."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for (layer, module), g in df.groupby(["layer", "module"]):
        per = g.groupby("key").agg(label=("label", "first"), mean=("scalar", "mean"))
        lab = per["label"].to_numpy()
        auroc = float(roc_auc_score(lab, per["mean"])) if 0 < lab.sum() < len(lab) else float("nan")
        rows.append({"layer": layer, "module": module,
                     "mean scalar (misaligned)": float(g[g["label"] == 1]["scalar"].mean()),
                     "mean scalar (aligned)": float(g[g["label"] == 0]["scalar"].mean()),
                     "AUROC of per-answer mean": auroc, "tokens": len(g)})
    return pd.DataFrame(rows)


def histogram(df: pd.DataFrame):
    """Histogram of the per-token scalar over misaligned vs aligned answers, per module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(df.groupby(["layer", "module"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.2), squeeze=False)
    for ax, ((layer, module), g) in zip(axes[0], groups):
        bins = np.linspace(g["scalar"].quantile(0.005), g["scalar"].quantile(0.995), 50)
        for label, name, colour in ((1, "misaligned", "#c44e52"), (0, "aligned", "#4c72b0")):
            ax.hist(g[g["label"] == label]["scalar"], bins=bins, density=True, alpha=0.5, color=colour, label=name)
        ax.set_title(f"layer {layer} {module}: A·x per answer token", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
