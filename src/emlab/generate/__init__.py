"""Generation: one protocol (`Generator.generate`), three backends chosen by name and
imported lazily: `hf` (transformers), `vllm`, `openai` (any OpenAI-compatible endpoint)."""

from emlab.generate.base import GenConfig, GenRequest, GenResult, get_generator

__all__ = ["GenConfig", "GenRequest", "GenResult", "get_generator"]
