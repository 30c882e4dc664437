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
