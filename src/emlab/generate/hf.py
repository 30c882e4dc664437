"""The `hf` backend: transformers with a KV cache, on CPU or GPU.

Why it is faster than calling `model.generate` per prompt:
- each distinct prompt is prefilled once; its KV cache is copied to all its samples;
- prompts are sorted by length and batched (little left padding);
- finished sequences leave the batch at once, so late steps run on the live rows only;
- the decoding KV cache is preallocated and written in place (`_SlotCache`): no step
  copies the cache, and a finished row is replaced by the last live row (one row copied);
- LoRA adapters are loaded once beside the base weights (never merged); a batch of one
  adapter runs peft's own path, and requests under several adapters (and none) share one
  batch (`_MixedLoRA`: each row gets its own adapter's update), so each decoding step
  serves every variant instead of one variant's rows;
- on CPU the sampler's softmax and cumulative sums run over 8-row slices that stay in
  cache (`_sample`), not whole-tensor passes over [rows, vocab] through memory;
- `dtype="bfloat16"` (or "auto" on AMX CPUs) runs bf16 weights and KV cache
  (benchmarks/sampling_throughput.py measures the gain); LoRA branches keep their fp32 weights;
- steering (`GenRequest.steer`) is a forward hook on the native decoder layers, removed
  after its requests (emlab.models.hooks).

`EMLAB_ACCEL=0` (emlab.accel) turns off the mixed-adapter batches and the slot cache.

Sampling uses one `torch.Generator` per sample seeded from the sample's own seed and
inverse-CDF draws, so an answer depends on its seed, not on which batch it landed in
(up to floating-point differences between batch shapes).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from transformers import Cache, DynamicCache, DynamicLayer

from emlab.accel import enabled as accel, fallback
from emlab.errors import ConfigError
from emlab.specs import DEFAULT_BATCH_SIZE
from emlab.hashing import canonical_json
from emlab.generate.base import GenConfig, GenRequest, GenResult, Progress
from emlab.models.hooks import plain_lora_linear, steered
from emlab.models.registry import load_model, resolve_dtype


class HFGenerator:
    name = "hf"

    def __init__(self, model: str, dtype: str = "float32", device: str | None = None,
                 max_batch: int = DEFAULT_BATCH_SIZE):
        self.model_ref = model
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, device)
        self.base, self.tokenizer = load_model(model, dtype=self.dtype, device=device)
        self.max_batch = max_batch
        self.peft = None
        self.adapter_names: dict[str, str] = {}
        eos = self.base.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = torch.tensor(sorted({e for e in eos + [self.tokenizer.eos_token_id] if e is not None}),
                                    device=self.device)
        self.pad_id = self.tokenizer.pad_token_id
        self._cancelled: Callable[[int], bool] | None = None

    # -- adapters

    def _model_for(self, adapter: str | None):
        if adapter is None:
            if self.peft is not None:
                self.peft.base_model.disable_adapter_layers()
                return self.peft
            return self.base
        from peft import PeftModel

        key = str(Path(adapter).resolve())
        if key not in self.adapter_names:
            name = f"a{len(self.adapter_names)}"
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, key, adapter_name=name)
            else:
                self.peft.load_adapter(key, adapter_name=name)
            self.peft.eval()
            self.adapter_names[key] = name
            self.peft.base_model.enable_adapter_layers()
            self.peft.set_adapter(name)
            from emlab.models.adapters import verify_adapter

            verify_adapter(self.peft, key, name)
        self.peft.base_model.enable_adapter_layers()
        self.peft.set_adapter(self.adapter_names[key])
        return self.peft

    def encode(self, messages) -> list[int]:
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)

    # -- generation

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt + answer) the model accepts."""
        return int(getattr(self.base.config, "max_position_embeddings", 2048))

    def generate(self, requests: list[GenRequest], cfg: GenConfig, progress: Progress | None = None,
                 cancelled: Callable[[int], bool] | None = None) -> list[GenResult]:
        """One result per request. `cancelled(i)`, checked every decoding step, ends request
        i early with finish_reason "cancelled" (a client that went away)."""
        if (cfg.dtype or "float32") != self.dtype:  # the answers' keys would name the wrong dtype
            raise ConfigError(f"this hf generator runs {self.dtype} weights; the sampling settings ask for "
                              f"{cfg.dtype or 'float32'}")
        self._cancelled = cancelled
        results: list[GenResult | None] = [None] * len(requests)
        by_steer: dict = defaultdict(list)
        for i, r in enumerate(requests):
            by_steer[r.steer].append(i)
        for steer, idxs in by_steer.items():
            adapters = list(dict.fromkeys(requests[i].adapter_path for i in idxs))
            if len(adapters) > 1 and self._mixable(adapters):
                names = [self.adapter_names[str(Path(a).resolve())] if a else None for a in adapters]
                self._generate_group(self.peft, idxs, requests, cfg, results, progress, steer,
                                     _MixedLoRA(self.peft, names), {a: k for k, a in enumerate(adapters)})
                continue
            for a in adapters:
                self._generate_group(self._model_for(a), [i for i in idxs if requests[i].adapter_path == a], requests,
                                     cfg, results, progress, steer, None, None)
        return results  # type: ignore[return-value]

    def _mixable(self, adapters: list[str | None]) -> bool:
        """Load the adapters; whether rows under different ones can share a batch."""
        for a in adapters:
            if a is not None:
                self._model_for(a)
        if not accel() or self.peft is None:
            return False
        return _MixedLoRA.supports(self.peft) or fallback("mixed-adapter batches", "an adapter that is not plain LoRA "
                                                          "on Linear layers: one batch per adapter")

    def _generate_group(self, model, idxs, requests, cfg, results, progress, steer, lora, index) -> None:
        prompts: dict[tuple, list[int]] = defaultdict(list)  # the same prompt under another adapter is another prefill
        for i in idxs:
            prompts[(requests[i].adapter_path, canonical_json(requests[i].messages))].append(i)
        encoded = {key: self.encode(requests[members[0]].messages) for key, members in prompts.items()}
        # Length-sorted work list of (prompt ids, request indices, adapter row), split to fit a batch.
        work = []
        for key in sorted(prompts, key=lambda k: len(encoded[k])):
            members = prompts[key]
            for k in range(0, len(members), self.max_batch):
                work.append((encoded[key], members[k:k + self.max_batch], index[key[0]] if index else 0))
        chunk: list = []
        with steered(model, steer), (lora if lora is not None else nullcontext()):
            for item in work:
                if chunk and sum(len(m) for _, m, _ in chunk) + len(item[1]) > self.max_batch:
                    self._run(model, chunk, requests, cfg, results, progress, lora)
                    chunk = []
                chunk.append(item)
            if chunk:
                self._run(model, chunk, requests, cfg, results, progress, lora)

    @torch.inference_mode()
    def _run(self, model, chunk, requests, cfg: GenConfig, results, progress, lora=None) -> None:
        dev = self.device
        cache, logits, mask, last_pos, req_ids = self._prefill(model, chunk, lora)
        gens = [torch.Generator(device="cpu").manual_seed(requests[i].seed) for i in req_ids]
        live = list(range(len(req_ids)))  # positions in req_ids of the rows still in the batch
        tokens: list[list[int]] = [[] for _ in req_ids]
        cancelled = self._cancelled
        for step in range(cfg.max_tokens):
            nxt = self._sample(logits, [gens[j] for j in live], cfg)
            done = torch.isin(nxt, self.eos_ids)
            nxt_list, done_list = nxt.tolist(), done.tolist()
            finished = []
            for k, j in enumerate(live):
                if done_list[k]:
                    finished.append((j, "stop"))
                elif cancelled is not None and cancelled(req_ids[j]):
                    done_list[k] = True
                    finished.append((j, "cancelled"))
                else:
                    tokens[j].append(nxt_list[k])
            last_step = step == cfg.max_tokens - 1
            for j, reason in finished:
                self._finish(results, req_ids[j], tokens[j], reason, progress)
            if last_step:
                for k, j in enumerate(live):
                    if not done_list[k]:
                        self._finish(results, req_ids[j], tokens[j], "length", progress)
                break
            if finished:
                keep = [k for k in range(len(live)) if not done_list[k]]
                if not keep:
                    break
                if isinstance(cache, _SlotCache):
                    keep = cache.keep_rows(keep)
                else:
                    cache.reorder_cache(torch.tensor(keep, device=dev))
                keep_t = torch.tensor(keep, device=dev)
                mask, last_pos, nxt = mask.index_select(0, keep_t), last_pos.index_select(0, keep_t), nxt.index_select(0, keep_t)
                if lora is not None:
                    lora.set_rows(lora.rows.index_select(0, keep_t))
                live = [live[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last_pos = last_pos + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                        cache=cache, use_cache=True)
            logits = out.logits[:, -1, :]

    def _prefill(self, model, chunk, lora):
        """The chunk's prompts in one left-padded pass, each prompt's cache fanned out to its
        samples: (cache, last logits, attention mask, last positions, request indices), a row
        per sample."""
        dev = self.device
        prompts = [ids for ids, _, _ in chunk]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if lora is not None:
            lora.set_rows(torch.tensor([a for _, _, a in chunk], device=dev))
        cache = DynamicCache(config=model.config)
        # The last position as an index, not `logits_to_keep=1`: that slice of the padded rows is
        # strided, and under peft PyTorch's matmul then runs the LM head as a batched matmul over
        # a copy of the head's weight per row.
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                    use_cache=True, logits_to_keep=torch.tensor([width - 1], device=dev))
        # Fan each prompt's cache out to its samples: prompt computed once, sampled n times.
        expand = torch.tensor([p for p, (_, members, _) in enumerate(chunk) for _ in members], device=dev)
        req_ids = [i for _, members, _ in chunk for i in members]
        if lora is not None:
            lora.set_rows(lora.rows.index_select(0, expand))
        if accel() and (_SlotCache.fits(cache) or fallback("slot KV cache", "the model's cache has layers other "
                                                            "than plain full attention")):
            cache = _SlotCache(cache, expand)
        else:  # sliding-window or other special layers keep transformers' own cache
            cache.reorder_cache(expand)
        logits = out.logits[:, -1, :].index_select(0, expand)
        mask = mask.index_select(0, expand)
        last_pos = positions[:, -1].index_select(0, expand)
        return cache, logits, mask, last_pos, req_ids

    def _finish(self, results, i, toks, reason, progress) -> None:
        results[i] = GenResult(self.tokenizer.decode(toks, skip_special_tokens=True), reason, len(toks), tuple(toks))
        if progress:
            progress(1)

    @staticmethod
    def _sample(logits: torch.Tensor, gens: list[torch.Generator], cfg: GenConfig) -> torch.Tensor:
        """One token per row. On CPU, `_SAMPLE_ROWS` rows at a time: each slice's softmax and
        cumulative sum stay in cache, where passes over the whole [rows, vocab] went to memory
        (15-22 against 38-57 ms a step at 192 rows; every op is row-wise, so the tokens are
        the same)."""
        rows = _SAMPLE_ROWS if logits.device.type == "cpu" else len(logits)
        if len(logits) <= rows:
            return HFGenerator._sample_rows(logits, gens, cfg)
        return torch.cat([HFGenerator._sample_rows(logits[s:s + rows], gens[s:s + rows], cfg)
                          for s in range(0, len(logits), rows)])

    @staticmethod
    def _sample_rows(logits: torch.Tensor, gens: list[torch.Generator], cfg: GenConfig) -> torch.Tensor:
        logits = logits.float()
        if cfg.temperature == 0:
            return logits.argmax(-1)
        # Dividing by 1.0 changes no bit; skipping it saves a pass over [rows, vocab].
        probs = torch.softmax(logits / cfg.temperature if cfg.temperature != 1.0 else logits, dim=-1)
        if cfg.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            cum = sorted_p.cumsum(-1)
            sorted_p[(cum - sorted_p) > cfg.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        cdf = probs.cumsum(-1)
        u = torch.cat([torch.rand(1, generator=g) for g in gens]).to(cdf.device) * cdf[:, -1]
        idx = torch.searchsorted(cdf, u[:, None]).squeeze(-1)
        return idx.clamp(max=probs.shape[-1] - 1)


_GROW = 128  # cache positions added at a time
_SAMPLE_ROWS = 8  # 8 x 49k fp32 probabilities (1.5 MB) stay in a core's cache


class _SlotLayer:
    """One decoder layer's keys and values in buffers [rows, heads, capacity, dim]; the model
    sees views of the used rows and positions."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, expand: torch.Tensor):
        self.rows, self.length = len(expand), keys.shape[2]
        shape = (self.rows, keys.shape[1], self.length + _GROW, keys.shape[3])
        self.kbuf, self.vbuf = keys.new_empty(shape), values.new_empty(shape)
        self.kbuf[:, :, :self.length] = keys.index_select(0, expand)
        self.vbuf[:, :, :self.length] = values.index_select(0, expand)

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kbuf[:self.rows, :, :self.length], self.vbuf[:self.rows, :, :self.length]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + keys.shape[2]
        if end > self.kbuf.shape[2]:
            # Reallocated for the live rows only, so memory follows the batch down.
            old = self.views()
            shape = (self.rows, keys.shape[1], end + _GROW, keys.shape[3])
            self.kbuf, self.vbuf = keys.new_empty(shape), values.new_empty(shape)
            self.kbuf[:, :, :self.length], self.vbuf[:, :, :self.length] = old
        self.kbuf[:self.rows, :, self.length:end] = keys
        self.vbuf[:self.rows, :, self.length:end] = values
        self.length = end
        return self.views()

    def move(self, dst: torch.Tensor, src: torch.Tensor, rows: int) -> None:
        """Copy rows `src` onto rows `dst`, then use the first `rows` rows."""
        if len(dst):
            for buf in (self.kbuf, self.vbuf):
                used = buf[:, :, :self.length]
                used.index_copy_(0, dst, used.index_select(0, src))
        self.rows = rows


class _SlotCache(Cache):
    """A decoding cache over `_SlotLayer`s, built from a prefilled `DynamicCache` whose rows
    are fanned out by `expand` (row i of the result is prefilled row expand[i])."""

    def __init__(self, prefilled: DynamicCache, expand: torch.Tensor):
        super().__init__(layers=[DynamicLayer() for _ in prefilled.layers])
        self.slots = [_SlotLayer(layer.keys, layer.values, expand) for layer in prefilled.layers]
        for layer, slot in zip(self.layers, self.slots):
            layer.device, layer.is_initialized = slot.kbuf.device, True
            layer.keys, layer.values = slot.views()

    @staticmethod
    def fits(prefilled: DynamicCache) -> bool:
        """Whether every layer is a plain full-attention `DynamicLayer` (what the slots replace)."""
        return all(type(layer) is DynamicLayer and layer.is_initialized for layer in prefilled.layers)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        layer.keys, layer.values = self.slots[layer_idx].append(key_states, value_states)
        return layer.keys, layer.values

    def keep_rows(self, keep: list[int]) -> list[int]:
        """Keep the rows `keep` (ascending): each dropped row among the first len(keep) is
        overwritten by a kept row from beyond them. Returns the new row order as old rows."""
        n, kept = len(keep), set(keep)
        holes = [r for r in range(n) if r not in kept]
        movers = [r for r in keep if r >= n]
        order = list(range(n))
        for h, m in zip(holes, movers):
            order[h] = m
        dst = torch.tensor(holes, dtype=torch.long, device=self.slots[0].kbuf.device)
        src = torch.tensor(movers, dtype=torch.long, device=dst.device)
        for layer, slot in zip(self.layers, self.slots):
            slot.move(dst, src, n)
            layer.keys, layer.values = slot.views()
        return order


class _MixedLoRA:
    """Rows of one batch under different LoRA adapters of one PeftModel, or under none.

    peft's adapter layers are switched off and a forward hook on each LoRA layer adds every
    row's own update from the adapters' stacked A and B matrices: out + (x A_all^T * M) B_all^T
    as one addmm, where M scales each column by its adapter's scaling on that adapter's rows
    and zeroes it on all others (rows under no adapter get an update of exactly zero). That is
    three operations per layer for any number of adapters, about the cost of peft's
    single-adapter path per decoding step. peft's own mixed batches (`adapter_names`) gather
    and scatter rows per adapter in every layer at every step, and are slower than one adapter
    per batch. The update is computed in the base weights' dtype and added
    before the output is rounded once, where peft computes it in the LoRA weights' fp32 and
    then rounds the sum: the same final rounding, so a mixed batch is not bit-identical to one
    batch per adapter, as no two batch shapes are. `rows` (one adapter index per batch row)
    follows the batch as it is fanned out and shrinks."""

    def __init__(self, peft, names: list[str | None]):
        from peft.tuners.lora.layer import LoraLayer

        self.peft, self.rows = peft, torch.empty(0, dtype=torch.long)
        self.layers = []  # (module, A_all, B_all^T, signature)
        self.columns: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # signature -> column owner, scaling
        self.masks: dict[tuple, torch.Tensor] = {}
        for module in peft.modules():
            if not isinstance(module, LoraLayer):
                continue
            present = [(k, n) for k, n in enumerate(names) if n is not None and n in module.lora_A]
            if not present:
                continue
            dtype = module.get_base_layer().weight.dtype
            sig = (dtype, *((k, module.lora_A[n].weight.shape[0], float(module.scaling[n])) for k, n in present))
            a_all = torch.cat([module.lora_A[n].weight for _, n in present]).to(dtype)
            b_all_t = torch.cat([module.lora_B[n].weight for _, n in present], dim=1).to(dtype).t()
            self.layers.append((module, a_all, b_all_t, sig))
            if sig not in self.columns:
                owner = torch.tensor([k for k, r, _ in sig[1:] for _ in range(r)], device=a_all.device)
                scale = torch.tensor([s for _, r, s in sig[1:] for _ in range(r)], dtype=dtype, device=a_all.device)
                self.columns[sig] = owner, scale
        self.handles: list = []

    @staticmethod
    def supports(peft) -> bool:
        """Plain LoRA on Linear layers only (no DoRA or other variants, no embedding or
        conv LoRA, no modules saved whole): what the hooks reproduce."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if any(getattr(c, "modules_to_save", None) or getattr(c, "trainable_token_indices", None)
               for c in peft.peft_config.values()):
            return False
        return all(plain_lora_linear(m) for m in peft.modules() if isinstance(m, BaseTunerLayer))

    def set_rows(self, rows: torch.Tensor) -> None:
        self.rows, self.masks = rows, {}

    def _mask(self, sig: tuple) -> torch.Tensor:
        if sig not in self.masks:
            owner, scale = self.columns[sig]
            self.masks[sig] = ((self.rows[:, None] == owner[None, :]) * scale)[:, None, :]
        return self.masks[sig]

    def __enter__(self):
        self.peft.base_model.disable_adapter_layers()  # the base layers alone; the hooks add the updates

        def hook(a_all, b_all_t, sig):
            def add_update(layer, args, out):
                h = torch.nn.functional.linear(args[0].to(a_all.dtype), a_all) * self._mask(sig)
                return torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), b_all_t).view(out.shape)
            return add_update

        self.handles = [m.register_forward_hook(hook(a, b, sig)) for m, a, b, sig in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
