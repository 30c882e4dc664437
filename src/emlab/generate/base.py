"""The generation protocol shared by every backend, and the backends' registry."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

from emlab.hashing import canonical_json, text_hash
from emlab.specs import SampleSpec

_SPEC = SampleSpec.model_fields


@dataclass(frozen=True)
class GenConfig:
    """What a backend needs of a `SampleSpec` to generate (see `emlab.generate.sample.gen_config`);
    the defaults are the spec's (the paper's)."""

    temperature: float = _SPEC["temperature"].default
    top_p: float = _SPEC["top_p"].default
    max_tokens: int = _SPEC["max_tokens"].default
    seed: int = _SPEC["seed"].default
    dtype: str | None = None  # the local model's compute dtype when not the backend's default (hf: float32)

    def content_hash(self) -> str:
        fields = asdict(self)
        if fields["dtype"] is None:  # answers sampled before dtype was a setting keep their keys
            del fields["dtype"]
        return text_hash(canonical_json(fields))[:16]


@dataclass(frozen=True)
class GenRequest:
    messages: tuple  # tuple of {"role", "content"} dicts (hashable container)
    seed: int  # per-sample seed: same seed and backend -> same answer
    adapter_path: str | None = None  # a local LoRA adapter directory (hf, vllm backends)
    served_model: str | None = None  # a model name on an OpenAI-compatible server (openai backend)
    steer: object = None  # an emlab.specs.SteerSpec: steering hooks during generation (hf backend)


@dataclass(frozen=True)
class GenResult:
    text: str
    finish_reason: str  # "stop" (EOS), "length" or "cancelled"
    n_tokens: int
    token_ids: tuple[int, ...] = ()  # filled by local backends


Progress = Callable[[int], None]


class Generator(Protocol):
    name: str

    def generate(self, requests: list[GenRequest], cfg: GenConfig, progress: Progress | None = None) -> list[GenResult]:
        """One result per request, in order."""
        ...


def sample_seed(base_seed: int, *parts: object) -> int:
    """A deterministic 63-bit seed for one sample from the run seed and the sample's key."""
    digest = hashlib.sha256(canonical_json([base_seed, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
