"""The activation cache: residual-stream activations of answers, teacher-forced.

    emlab probe collect --project P [--adapter NAME=DIR] [--suite builtin]     # answers in the run store
    emlab probe collect --judged FILE.csv|jsonl                            # any judged file
    emlab probe collect --public --per-question 40                         # the public judged answers

Each item is (key, messages, answer): the conversation is rendered with the model's chat
template, the answer teacher-forced after it, and `blocks.{layer}.resid_post` - the output
of decoder layer `layer` - is kept for the answer's tokens only: their mean (default,
[n, d_model]) or every token (`per_token`, [tokens, d_model] plus `token_offsets` [n + 1]).

Layout (one folder per model x adapter x reduction; nothing else lives there):

    <project>/activations/<model>/<adapter id>/<mean|tokens>-t<max answer tokens>/shard-*.safetensors

A shard holds up to `shard_size` items; its metadata names the item keys (`keys`, JSON), the
layers, the shapes and the model. Shards are written atomically as the collection goes, so a
killed run keeps every finished shard and a rerun computes only keys no shard holds.

Speed: answers are length-sorted and batched (right padding, attention-masked), the forward
pass stops after the last wanted layer (no later block, no LM head), and no logits or
gradients are kept.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emlab.errors import EmlabError
from emlab.hashing import canonical_json, text_hash
from emlab.models.hooks import capture, decoder_layers, resid_name, run_to_layers


@dataclass(frozen=True)
class Item:
    key: str
    messages: tuple  # the conversation before the answer: ({"role", "content"}, ...)
    answer: str
    question_id: str = ""
    label: int | None = None  # 1 misaligned, 0 aligned, None unlabelled

    @staticmethod
    def make(question: str, answer: str, system: str | None = None, **kw) -> "Item":
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        key = kw.pop("key", None) or text_hash(canonical_json([msgs, answer]))[:24]
        return Item(key, tuple(msgs), answer, **kw)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "x"


class ActivationCache:
    """Shards of one model x adapter x reduction (see the module docstring)."""

    def __init__(self, root: Path, model: str, adapter_id: str, per_token: bool = False, max_answer_tokens: int = 256,
                 layers: list[int] | None = None):
        self.per_token = per_token
        self.max_answer_tokens = max_answer_tokens
        self.layers = sorted(set(layers)) if layers else None  # None: every layer
        kind = ("tokens" if per_token else "mean") + f"-t{max_answer_tokens}"
        if self.layers:
            kind += "-L" + "_".join(map(str, self.layers))
        self.dir = Path(root) / _slug(model) / _slug(adapter_id) / kind
        self.model, self.adapter_id = model, adapter_id

    def _shards(self) -> list[Path]:
        """The readable shards. One that cannot be opened (a truncated or damaged file) is
        renamed `*.corrupt` and left out, so its items count as missing and are recomputed."""
        from safetensors import safe_open

        good = []
        for shard in sorted(self.dir.glob("shard-*.safetensors")) if self.dir.is_dir() else []:
            try:
                with safe_open(str(shard), framework="np") as f:
                    json.loads(f.metadata()["keys"])
                good.append(shard)
            except Exception:  # safetensors' own error type for damaged files
                os.replace(shard, shard.with_name(shard.name + ".corrupt"))
        return good

    def index(self) -> dict[str, tuple[Path, int]]:
        """key -> (shard, row) of every cached item."""
        from safetensors import safe_open

        out = {}
        for shard in self._shards():
            with safe_open(str(shard), framework="np") as f:
                keys = json.loads(f.metadata()["keys"])
            out.update({k: (shard, i) for i, k in enumerate(keys)})
        return out

    def layers_held(self) -> list[int]:
        """The layers the shards hold (every shard of a cache holds the same ones)."""
        from safetensors import safe_open

        shards = self._shards()
        if not shards:
            raise EmlabError(f"{self.dir}: nothing collected yet")
        with safe_open(str(shards[0]), framework="np") as f:
            return json.loads(f.metadata()["layers"])

    def write(self, keys: list[str], tensors: dict[str, torch.Tensor], layers: list[int], d_model: int) -> Path:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{text_hash(canonical_json(keys))[:16]}.safetensors"
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        meta = {"keys": keys, "layers": layers, "d_model": d_model, "shapes": shapes, "model": self.model,
                "adapter": self.adapter_id, "reduction": "per_token" if self.per_token else "mean_over_answer_tokens",
                "max_answer_tokens": self.max_answer_tokens}
        tmp = self.dir / (name + ".partial")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in meta.items()})
        os.replace(tmp, self.dir / name)
        return self.dir / name

    def load(self, keys: list[str], layers: list[int]) -> dict[int, np.ndarray]:
        """Mean activations [len(keys), d_model] per layer, rows in `keys` order."""
        from safetensors import safe_open

        if self.per_token:
            raise EmlabError("load() reads mean activations; use load_tokens() for a per-token cache")
        idx = self.index()
        missing = [k for k in keys if k not in idx]
        if missing:
            raise EmlabError(f"{self.dir}: {len(missing)} of {len(keys)} items not collected yet")
        out = {layer: None for layer in layers}
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, k in enumerate(keys):
            shard, row = idx[k]
            by_shard.setdefault(shard, []).append((pos, row))
        for shard, pairs in by_shard.items():
            with safe_open(str(shard), framework="np") as f:
                for layer in layers:
                    block = f.get_tensor(resid_name(layer))
                    if out[layer] is None:
                        out[layer] = np.empty((len(keys), block.shape[1]), np.float32)
                    for pos, row in pairs:
                        out[layer][pos] = block[row]
        return out  # type: ignore[return-value]

    def load_tokens(self, keys: list[str], layer: int) -> list[np.ndarray]:
        """Per-token activations [tokens_i, d_model] of each key at one layer."""
        from safetensors import safe_open

        idx = self.index()
        out = []
        for k in keys:
            if k not in idx:
                raise EmlabError(f"{self.dir}: item {k} not collected yet")
            shard, row = idx[k]
            with safe_open(str(shard), framework="np") as f:
                offsets = f.get_tensor("token_offsets")
                out.append(f.get_tensor(resid_name(layer))[offsets[row]:offsets[row + 1]])
        return out


def encode(tokenizer, item: Item, max_answer_tokens: int) -> tuple[list[int], int]:
    """(token ids of conversation + answer, index of the first answer token); the answer is
    cut at `max_answer_tokens`."""
    msgs = list(item.messages)
    prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": item.answer}], tokenize=True,
                                         return_dict=False)
    if full[:len(prompt)] != prompt:  # a template that re-renders earlier turns: fall back to plain concatenation
        full = prompt + tokenizer.encode(item.answer, add_special_tokens=False)
    return full[:len(prompt) + max_answer_tokens], len(prompt)


def token_batches(lengths: list[int], batch_tokens: int = 4096) -> list[list[int]]:
    """Indices in length order, cut into batches of at most `batch_tokens` padded tokens.
    On CPU a padded batch costs its padded size (and attention its square), so batches are
    sized by tokens, not by rows; a batch of one long sequence is as fast as it gets."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * lengths[order[end]] <= batch_tokens:
            end += 1
        out.append(order[start:end])
        start = end
    return out


@torch.inference_mode()
def forward_batches(model, tokenizer, items: list[Item], layers: list[int], max_answer_tokens: int = 256,
                    per_token: bool = False, batch_tokens: int = 4096):
    """Yield (items of a batch, {layer: tensor}) with answer-token activations reduced per
    item: mean [b, d] or concatenated tokens [sum_i t_i, d] (+ "token_offsets")."""
    device = next(model.parameters()).device
    encoded = [encode(tokenizer, it, max_answer_tokens) for it in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for idx in token_batches([len(e[0]) for e in encoded], batch_tokens):
        width = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        answer = torch.zeros((len(idx), width), dtype=torch.bool)
        for row, i in enumerate(idx):
            seq, first = encoded[i]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            answer[row, first:len(seq)] = True
        with capture(model, layers, stop_after_last=True) as acts:
            run_to_layers(model, input_ids=ids.to(device), attention_mask=mask.to(device))
        answer = answer.to(device)
        out = {}
        counts = answer.sum(1)
        for layer in layers:
            h = acts[layer].float()
            if per_token:
                out[resid_name(layer)] = h[answer].cpu()
            else:
                out[resid_name(layer)] = ((h * answer[..., None]).sum(1) / counts.clamp(min=1)[:, None]).cpu()
        if per_token:
            out["token_offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cpu().cumsum(0)])
        yield [items[i] for i in idx], out


def collect(model, tokenizer, items: list[Item], cache: ActivationCache, shard_size: int = 256, progress=None) -> int:
    """Collect the items the cache lacks (at the cache's layers: all by default); returns
    how many were computed."""
    n_layers = len(decoder_layers(model))
    layers = cache.layers or list(range(n_layers))
    if layers[-1] >= n_layers or layers[0] < 0:
        raise EmlabError(f"layers {layers}: the model has {n_layers} layers (0-{n_layers - 1})")
    have = cache.index()
    todo = list({it.key: it for it in items if it.key not in have}.values())
    if progress and len(items) - len(todo):
        progress(len(items) - len(todo))
    d_model = model.config.hidden_size if hasattr(model, "config") else None
    done = 0
    for s in range(0, len(todo), shard_size):
        part = todo[s:s + shard_size]
        keys: list[str] = []
        chunks: dict[str, list[torch.Tensor]] = {}
        for batch, out in forward_batches(model, tokenizer, part, layers, cache.max_answer_tokens, cache.per_token):
            keys += [it.key for it in batch]
            for name, t in out.items():
                chunks.setdefault(name, []).append(t)
            if progress:
                progress(len(batch))
        tensors = {}
        for name, parts in chunks.items():
            if name == "token_offsets":
                offsets = [parts[0]]
                for p in parts[1:]:
                    offsets.append(p[1:] + offsets[-1][-1])
                tensors[name] = torch.cat(offsets)
            else:
                tensors[name] = torch.cat(parts)
        cache.write(keys, tensors, layers, int(d_model or tensors[resid_name(layers[0])].shape[-1]))
        done += len(part)
    return done


def load_with_adapter(model_name: str, adapter_path: str | None = None):
    """(model, tokenizer) in eval mode, the adapter attached (not merged) when given."""
    from emlab.models.registry import load_model

    model, tokenizer = load_model(model_name)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path).eval()
        from emlab.models.adapters import verify_adapter

        verify_adapter(model, adapter_path)
    return model, tokenizer


def collect_stage(project: Path, model_name: str, items: list[Item], adapter_path: str | None = None,
                  adapter_id: str = "base", layers: list[int] | None = None, per_token: bool = False,
                  max_answer_tokens: int = 256, console=None, loaded=None) -> ActivationCache:
    """Collect (or reuse) activations of `items` under one model variant; returns the cache."""
    from emlab import progress as show

    cache = ActivationCache(Path(project) / "activations", model_name, adapter_id, per_token, max_answer_tokens,
                            layers)
    missing = len({it.key for it in items} - set(cache.index()))
    if not missing:
        show.summary(console, "collect", f"{len(items)} items already cached in {cache.dir}")
        return cache
    model, tokenizer = loaded if loaded is not None else load_with_adapter(model_name, adapter_path)
    with show.stage(console, "collect", len(items)) as advance:
        done = collect(model, tokenizer, items, cache, progress=advance)
    show.summary(console, "collect", f"{done} computed, {len(items) - done} reused -> {cache.dir}")
    return cache
