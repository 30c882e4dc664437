"""Checks that a loaded LoRA adapter is really there.

A silent failure users of EM pipelines report: loading a base model with `device_map` and
then `PeftModel.from_pretrained` can leave every LoRA B matrix at zero, so the "finetuned"
model is the base model and every comparison reads no effect. After loading, emlab checks
that the adapter's B matrices hold the file's (non-zero) values and that switching the
adapter on changes the logits of a short probe input; otherwise it refuses in one line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from emlab.errors import EmlabError

PROBE_TOKENS = 8


def _file_b_norm(adapter_dir: Path) -> float:
    from safetensors import safe_open

    total = 0.0
    for path in sorted(adapter_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            total += sum(float(f.get_tensor(k).float().abs().sum()) for k in f.keys() if "lora_B" in k)
    return total


def _loaded_b_norm(model, adapter_name: str) -> float:
    from peft.tuners.lora.layer import LoraLayer

    total = 0.0
    for m in model.modules():
        if isinstance(m, LoraLayer) and adapter_name in m.lora_B:
            total += float(m.lora_B[adapter_name].weight.detach().float().abs().sum())
    return total


def verify_adapter(model, adapter_dir: str | Path, adapter_name: str = "default") -> None:
    """Refuse an adapter that loaded as a no-op: B matrices zero (or not the file's) or no
    change of the logits on a probe input. `model` is the PeftModel with the adapter active."""
    adapter_dir = Path(adapter_dir)
    in_file, loaded = _file_b_norm(adapter_dir), _loaded_b_norm(model, adapter_name)
    if in_file == 0.0:
        raise EmlabError(f"{adapter_dir}: every LoRA B matrix in the file is zero: this adapter does nothing "
                         "(was it trained for any steps?)")
    if loaded == 0.0 or abs(loaded - in_file) > 1e-3 * in_file:
        raise EmlabError(f"{adapter_dir}: the adapter loaded with LoRA B matrices summing to {loaded:.4g}, the file "
                         f"holds {in_file:.4g}: it did not load (a device_map load can leave B at zero); load the "
                         "base model without device_map")
    vocab = int(getattr(model.config, "vocab_size", 1000))
    device = next(model.parameters()).device
    ids = (torch.arange(PROBE_TOKENS, device=device) * 7919 + 11) % vocab
    with torch.inference_mode():
        on = model(input_ids=ids[None]).logits.float()
        with model.disable_adapter():
            off = model(input_ids=ids[None]).logits.float()
    if not (on - off).abs().max() > 0:
        raise EmlabError(f"{adapter_dir}: switching the adapter on does not change the model's logits: it does "
                         "nothing (check its target modules against the base model)")
