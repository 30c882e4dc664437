"""The generation protocol's pure parts: seeds, vLLM request building (vLLM itself
cannot run on this CPU-only machine, so its engine path is skipped)."""

import importlib.util

import pytest

from emlab.generate.base import GenConfig, GenRequest, sample_seed
from emlab.generate.vllm_backend import build_requests, lora_int_id


def test_sample_seed_is_deterministic_and_distinct():
    assert sample_seed(0, "m", "q", 1) == sample_seed(0, "m", "q", 1)
    assert len({sample_seed(0, "m", "q", i) for i in range(1000)}) == 1000
    assert sample_seed(0, "m", "q", 1) != sample_seed(1, "m", "q", 1)


def test_gen_config_hash_changes_with_settings():
    assert GenConfig().content_hash() == GenConfig().content_hash()
    assert GenConfig().content_hash() != GenConfig(top_p=0.9).content_hash()
    assert (GenConfig().temperature, GenConfig().top_p, GenConfig().max_tokens) == (1.0, 1.0, 600)


def test_vllm_request_building(tmp_path):
    a = tmp_path / "adapter_a"
    a.mkdir()
    msgs = ({"role": "user", "content": "hi"},)
    specs = build_requests([GenRequest(msgs, 7), GenRequest(msgs, 2 ** 40 + 3, adapter_path=str(a))],
                           GenConfig(max_tokens=50))
    assert specs[0]["lora"] is None
    assert specs[0]["sampling"] == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 50, "seed": 7, "n": 1}
    assert specs[1]["lora"]["lora_path"] == str(a.resolve())
    assert specs[1]["lora"]["lora_int_id"] == lora_int_id(str(a)) > 0
    assert 0 <= specs[1]["sampling"]["seed"] < 2 ** 31


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (no GPU here)")
def test_vllm_engine_runs():  # pragma: no cover - GPU machines only
    from emlab.generate.vllm_backend import VLLMGenerator

    gen = VLLMGenerator("smollm2-135m-instruct")
    res = gen.generate([GenRequest(({"role": "user", "content": "hi"},), 1)], GenConfig(max_tokens=8))
    assert res[0].n_tokens > 0


def test_dtype_enters_the_answer_keys_only_when_set():
    from emlab.hashing import canonical_json, text_hash

    # fp32 answers keep the keys they had before dtype was a setting
    before = text_hash(canonical_json({"temperature": 1.0, "top_p": 1.0, "max_tokens": 600, "seed": 0}))[:16]
    assert GenConfig().content_hash() == before
    assert GenConfig(dtype="bfloat16").content_hash() != before


def test_auto_dtype_follows_the_hardware_and_is_resolved_before_keys(monkeypatch):
    import torch
    from pydantic import ValidationError

    from emlab.generate.sample import gen_config
    from emlab.models.registry import resolve_dtype
    from emlab.specs import SampleSpec
    from emlab.train.config import resolve_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("float16") == "float16"
    for amx, dtype in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert resolve_dtype("auto") == dtype
        # the answers' keys and the training run's hash name the dtype that ran, never "auto"
        assert gen_config(SampleSpec(dtype="auto")).dtype == (None if dtype == "float32" else dtype)
        assert resolve_config("cpu-quick", dtype="auto").dtype == dtype
    with pytest.raises(ValidationError, match="hf backend"):
        SampleSpec(backend="openai", dtype="bfloat16")
