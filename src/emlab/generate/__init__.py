"""Generation: one protocol (`Generator.generate`, emlab.generate.base), backends named in
`GENERATORS` and imported only when built (`get_generator`): `hf` (transformers), `vllm`,
`openai` (any OpenAI-compatible endpoint) and `scripted` (a fake for dry runs and tests)."""

from __future__ import annotations

from emlab.generate.base import GenConfig, GenRequest, GenResult
from emlab.registry import resolve

GENERATORS = {
    "hf": "emlab.generate.hf:HFGenerator",
    "vllm": "emlab.generate.vllm_backend:VLLMGenerator",
    "openai": "emlab.generate.openai_api:OpenAIGenerator",
    "scripted": "emlab.generate.scripted:ScriptedGenerator",
}


def get_generator(backend: str, model: str, **kwargs):
    """The generation backend `backend` for `model`."""
    return resolve(GENERATORS, backend, "generation backend")(model, **kwargs)


__all__ = ["GENERATORS", "GenConfig", "GenRequest", "GenResult", "get_generator"]
