"""The `vllm` backend (optional extra: `pip install emlab[vllm]`, GPU machines).

The same protocol as `hf`: one `LLM` with LoRA enabled, a `LoRARequest` per adapter,
per-request `SamplingParams` carrying the sample's seed. vLLM cannot run on CPU-only
machines; `build_requests` is pure Python so the request building is tested everywhere.
"""

from __future__ import annotations

import zlib
from pathlib import Path

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


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model: str, max_lora_rank: int = 64, **llm_kwargs):
        from vllm import LLM

        from emlab.models.registry import resolve_model

        self.llm = LLM(model=resolve_model(model), enable_lora=True, max_lora_rank=max_lora_rank, **llm_kwargs)

    def generate(self, requests: list[GenRequest], cfg: GenConfig, progress: Progress | None = None) -> list[GenResult]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        specs = build_requests(requests, cfg)
        outputs = self.llm.chat(
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
