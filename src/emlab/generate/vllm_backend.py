"""The `vllm` backend (optional extra: `pip install emlab[vllm]`, GPU machines).

The same protocol as `hf`: one `LLM` with LoRA enabled, a `LoRARequest` per adapter,
per-request `SamplingParams` carrying the sample's seed. vLLM cannot run on CPU-only
machines; `build_requests` is pure Python so the request building is tested everywhere.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from emlab.errors import EmlabError
from emlab.generate.base import GenConfig, GenRequest, GenResult, Progress


def lora_int_id(adapter: str) -> int:
    """A stable positive id for an adapter path (vLLM needs an int per adapter)."""
    return zlib.crc32(str(Path(adapter).resolve()).encode()) % (2 ** 31 - 1) + 1


def build_requests(requests: list[GenRequest], cfg: GenConfig) -> list[dict]:
    """Plain-data description of each vLLM call: messages, sampling params, LoRA request."""
    out = []
    for r in requests:
        out.append({
            "messages": list(r.messages),
            "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
                         "seed": r.seed % (2 ** 31), "n": 1},
            "lora": None if r.adapter_path is None else {
                "lora_name": Path(r.adapter_path).name + f"-{lora_int_id(r.adapter_path)}",
                "lora_int_id": lora_int_id(r.adapter_path), "lora_path": str(Path(r.adapter_path).resolve())},
        })
    return out


# The LoRA ranks vLLM accepts for max_lora_rank; it refuses an adapter above the setting
# (16 by default), so the engine is sized from the adapters it is given.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MAX_LORAS = 8


def adapter_rank(adapter_dir: str | Path) -> int:
    import json

    config = Path(adapter_dir) / "adapter_config.json"
    try:
        return int(json.loads(config.read_text())["r"])
    except (OSError, ValueError, KeyError):
        raise EmlabError(f"{adapter_dir}: no LoRA rank in adapter_config.json") from None


def lora_settings(adapters: list[str]) -> dict:
    """vLLM engine settings that admit every adapter: max_lora_rank (the smallest supported
    value at or above the largest rank) and max_loras (adapters served at once)."""
    if not adapters:
        return {"enable_lora": False}
    rank = max(adapter_rank(a) for a in adapters)
    fits = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fits:
        raise EmlabError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]})")
    return {"enable_lora": True, "max_lora_rank": fits[0], "max_loras": min(MAX_LORAS, len(set(adapters)))}


class VLLMGenerator:
    """The engine starts on the first call, sized for that call's adapters; a later call with
    a higher-rank or an extra adapter beyond max_loras restarts it with settings that fit."""

    name = "vllm"

    def __init__(self, model: str, **llm_kwargs):
        from emlab.models.registry import resolve_model

        self.model = resolve_model(model)
        self.llm_kwargs = llm_kwargs
        self.llm = None
        self.settings: dict | None = None
        self.adapters: set[str] = set()

    def _engine(self, adapters: set[str]):
        from vllm import LLM

        wanted = lora_settings(sorted(self.adapters | adapters))
        if self.llm is None or any(wanted.get(k, 0) > (self.settings or {}).get(k, 0)
                                   for k in ("enable_lora", "max_lora_rank", "max_loras")):
            self.llm = None  # free the old engine's memory first
            self.llm = LLM(model=self.model, **wanted, **self.llm_kwargs)
            self.settings = wanted
        self.adapters |= adapters
        return self.llm

    def generate(self, requests: list[GenRequest], cfg: GenConfig, progress: Progress | None = None) -> list[GenResult]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        llm = self._engine({str(Path(r.adapter_path).resolve()) for r in requests if r.adapter_path})
        specs = build_requests(requests, cfg)
        outputs = llm.chat(
            [s["messages"] for s in specs],
            sampling_params=[SamplingParams(**s["sampling"]) for s in specs],
            lora_request=[LoRARequest(**s["lora"]) if s["lora"] else None for s in specs],
            use_tqdm=progress is None,
        )
        results = []
        for out in outputs:
            c = out.outputs[0]
            results.append(GenResult(c.text, "stop" if c.finish_reason == "stop" else "length", len(c.token_ids)))
            if progress:
                progress(1)
        return results
