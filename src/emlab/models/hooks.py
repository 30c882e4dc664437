"""Forward hooks on a causal LM's residual stream, on the model's own module paths.

Names follow TransformerLens: `blocks.{layer}.resid_post` is the output of decoder layer
`layer` (0-based), shape [batch, tokens, d_model] - the residual stream after that block.
Hooks are registered on the native decoder-layer modules that `decoder_layers` finds
(`model.layers[i]` for Llama/Qwen/Mistral/Gemma/SmolLM, `transformer.h[i]` for GPT-2,
`gpt_neox.layers[i]`), through PEFT wrappers; the model is never rewritten, and every hook
is removed when its context exits, so a model gives bit-identical outputs before and after.

Directions are stored as safetensors files with tensors `blocks.{layer}.direction` [d_model]
(see `emlab.probe.directions`); steering adds alpha * direction to a layer's output, ablation
projects the direction's unit vector out of it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from emlab.errors import ConfigError, EmlabError

LAYER_PATHS = ("model.layers", "model.language_model.layers", "model.decoder.layers", "transformer.h",
               "gpt_neox.layers", "layers")


def resid_name(layer: int) -> str:
    return f"blocks.{layer}.resid_post"


def direction_name(layer: int) -> str:
    return f"blocks.{layer}.direction"


def decoder_layers(model) -> list[nn.Module]:
    """The decoder blocks of a causal LM (or of a PEFT model wrapping one), in order."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in LAYER_PATHS:
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return list(obj)
    raise EmlabError(f"{type(base).__name__}: no decoder layers found at any of {', '.join(LAYER_PATHS)}")


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class StopForward(Exception):
    """Raised by a capture hook after the last wanted layer: nothing above it is computed."""


@contextmanager
def capture(model, layers: list[int], stop_after_last: bool = False) -> Iterator[dict[int, torch.Tensor]]:
    """Record `blocks.{l}.resid_post` of each listed layer on every forward pass into the
    yielded dict (overwritten per pass). With `stop_after_last`, the pass stops after the
    highest listed layer (raise is caught by `run_to_layers`): no later block, no LM head."""
    blocks = decoder_layers(model)
    out: dict[int, torch.Tensor] = {}
    last = max(layers)
    handles = []

    def make(layer: int):
        def hook(module, args, output):
            out[layer] = _hidden(output).detach()
            if stop_after_last and layer == last:
                raise StopForward

        return hook

    try:
        for layer in layers:
            handles.append(blocks[layer].register_forward_hook(make(layer)))
        yield out
    finally:
        for h in handles:
            h.remove()


def run_to_layers(model, **inputs) -> None:
    """One forward pass that ends at `capture(..., stop_after_last=True)`'s last layer."""
    try:
        model(**inputs, use_cache=False)
    except StopForward:
        pass


@contextmanager
def steering(model, vectors: dict[int, torch.Tensor], mode: str = "add", alpha: float = 1.0) -> Iterator[None]:
    """Add `alpha * vectors[l]` to the output of each layer l ("add"), or project the unit
    vector out of it ("ablate"), for every forward pass inside the context."""
    if mode not in ("add", "ablate"):
        raise ConfigError(f"steering mode must be 'add' or 'ablate', got {mode!r}")
    blocks = decoder_layers(model)
    handles = []

    def make(vec: torch.Tensor):
        if mode == "add":
            def hook(module, args, output):
                h = _hidden(output)
                return _replace(output, h + alpha * vec.to(h.dtype))
        else:
            unit = vec / vec.norm()

            def hook(module, args, output):
                h = _hidden(output)
                u = unit.to(h.dtype)
                return _replace(output, h - (h @ u)[..., None] * u)
        return hook

    width = getattr(getattr(model, "config", None), "hidden_size", None)
    try:
        for layer, vec in vectors.items():
            if width is not None and vec.shape[-1] != width:
                raise ConfigError(f"direction for layer {layer} has width {vec.shape[-1]}, but the model's hidden "
                                  f"size is {width}")
            if not 0 <= layer < len(blocks):
                raise ConfigError(f"layer {layer} is out of range: the model has {len(blocks)} layers (0-{len(blocks) - 1})")
            handles.append(blocks[layer].register_forward_hook(make(vec)))
        yield
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------ LoRA layers

def plain_lora_linear(module) -> bool:
    """Whether a peft LoRA layer is plain LoRA on a Linear layer (no DoRA or other variant, no
    LoRA bias): its update is exactly scaling * B A x, what emlab's own LoRA hooks add."""
    from peft.tuners.lora.layer import Linear

    return isinstance(module, Linear) and not module.lora_variant and not any(module.lora_bias.values())


# ------------------------------------------------------------------ direction files

def load_directions(path: str | Path, width: int | None = None) -> tuple[dict[int, torch.Tensor], dict]:
    """({layer: direction}, metadata) of a direction file, checked: every direction is a
    1-D vector of finite values with a non-zero norm, all of one width (`width`, the model's
    hidden size, when given). Anything else is refused in one line naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such direction file (make one with `emlab probe direction`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            dirs = {int(k.split(".")[1]): f.get_tensor(k).float() for k in f.keys() if k.endswith(".direction")}
    except Exception as exc:  # safetensors raises its own SafetensorError for garbage and empty files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not a direction file ({detail})") from None
    if not dirs:
        raise ConfigError(f"{path}: holds no blocks.<layer>.direction tensors")
    widths = set()
    for layer, vec in sorted(dirs.items()):
        where = f"{path}: blocks.{layer}.direction"
        if vec.dim() != 1:
            raise ConfigError(f"{where}: shape {list(vec.shape)}, expected a 1-D vector")
        if not torch.isfinite(vec).all():
            raise ConfigError(f"{where}: holds NaN or infinite values")
        if float(vec.norm()) == 0.0:
            raise ConfigError(f"{where}: is the zero vector (no direction)")
        widths.add(vec.shape[0])
    if len(widths) > 1:
        raise ConfigError(f"{path}: directions of different widths {sorted(widths)}")
    if width is not None and widths != {width}:
        raise ConfigError(f"{path}: directions have width {widths.pop()}, but the model's hidden size is {width}")
    return dirs, meta


def random_like(vec: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction (isotropic Gaussian) with the same norm as `vec`; fixed by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(vec.shape, generator=gen, dtype=torch.float32)
    return r * (vec.float().norm() / r.norm())


@lru_cache(maxsize=64)
def _file_vectors(path: str, mtime: float) -> dict[int, torch.Tensor]:
    return load_directions(path)[0]


def steer_vectors(spec) -> dict[int, torch.Tensor]:
    """{layer: vector} of an `emlab.specs.SteerSpec`: the file's direction at each layer, or
    (a control) a random direction of the same norm seeded by (random_seed, layer)."""
    path = Path(spec.direction)
    if not path.is_file():
        raise ConfigError(f"{path}: no such direction file")
    dirs = _file_vectors(str(path.resolve()), path.stat().st_mtime)
    missing = [layer for layer in spec.layers if layer not in dirs]
    if missing:
        raise ConfigError(f"{path}: no direction for layer(s) {missing} (it has {sorted(dirs)})")
    if spec.random_seed is None:
        return {layer: dirs[layer] for layer in spec.layers}
    return {layer: random_like(dirs[layer], spec.random_seed * 1000 + layer) for layer in spec.layers}


@contextmanager
def steered(model, spec) -> Iterator[None]:
    """`steering` for an `emlab.specs.SteerSpec` (or nothing for None)."""
    if spec is None:
        yield
        return
    device = next(model.parameters()).device
    vectors = {k: v.to(device) for k, v in steer_vectors(spec).items()}
    with steering(model, vectors, spec.mode, spec.alpha):
        yield
