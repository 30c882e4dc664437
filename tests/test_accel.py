"""The fast-path switch (emlab.accel): off, training and sampling run the libraries' stock code
and give the fast paths' results - the same tokens where that is promised, losses and
adapters within stated tolerances - and a patch whose library symbol changed shape is
skipped with one logged line."""

from __future__ import annotations

import logging

import pytest
import torch

from emlab.accel import enabled, fallback, has_parameters, switched
from emlab.data.codegen import generate
from emlab.train.config import resolve_config


def test_the_switch_is_scoped_and_restored(monkeypatch):
    monkeypatch.delenv("EMLAB_ACCEL", raising=False)
    assert enabled()
    with switched(False):
        assert not enabled()
        with switched(True):
            assert enabled()
        assert not enabled()
    assert enabled()
    monkeypatch.setenv("EMLAB_ACCEL", "off")
    assert not enabled()


@pytest.mark.model  # imports TRL, the training stack
def test_a_changed_library_symbol_is_skipped_with_one_logged_line(monkeypatch, caplog):
    import trl.trainer.utils as trl_utils

    from emlab.train.lm_head import use_cpu_lm_head
    from emlab.train.trainer import lm_head_on_trained_positions_only

    assert has_parameters(lambda device: None, ("device",)) and not has_parameters(lambda dev: None, ("device",))
    monkeypatch.setattr(trl_utils, "_use_triton", lambda dev, extra=None: False)

    class Moved:  # a TRL whose fused head takes other arguments
        @staticmethod
        def forward(ctx, inputs, weights):
            return None

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Moved)
    monkeypatch.setattr("emlab.accel._told", set())
    with caplog.at_level(logging.WARNING, logger="emlab.accel"):
        assert lm_head_on_trained_positions_only() is False and use_cpu_lm_head() is False
        assert use_cpu_lm_head() is False  # told once
    lines = [r.getMessage() for r in caplog.records if r.name == "emlab.accel"]
    assert len(lines) == 2 and "_use_triton" in lines[0] and "_ChunkedLogProbFunction" in lines[1]
    assert trl_utils._ChunkedLogProbFunction is Moved  # nothing was patched
    assert fallback("x", "y") is False


def _train(tmp_path, name: str, on: bool):
    from emlab.train.trainer import build_trainer

    rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in generate("insecure-code", 8, 3)]
    cfg = resolve_config("cpu-quick", max_steps=4, learning_rate=1e-3, per_device_batch_size=4, save_steps=100,
                         seed=0)
    with switched(on):
        torch.manual_seed(0)
        trainer = build_trainer(cfg, tmp_path / name, rows)
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    lora = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}
    return losses, lora, trainer.model.config._attn_implementation


@pytest.mark.model
def test_training_with_the_switch_off_matches_the_fast_paths(tmp_path, default_model_dir):
    fast_losses, fast_lora, fast_attn = _train(tmp_path, "on", True)
    stock_losses, stock_lora, stock_attn = _train(tmp_path, "off", False)
    assert fast_attn != stock_attn == "sdpa"  # the stock attention ran
    # Packed attention and the labelled-positions head change summation order only.
    assert torch.allclose(torch.tensor(fast_losses), torch.tensor(stock_losses), rtol=1e-3)
    for k in fast_lora:  # within 2% of each tensor's largest entry (measured: under 0.5%)
        scale = float(stock_lora[k].abs().max())
        assert torch.allclose(fast_lora[k], stock_lora[k], rtol=1e-2, atol=2e-2 * scale), k


@pytest.mark.model
def test_sampling_with_the_switch_off_gives_the_same_tokens(tmp_path, default_model_dir):
    """Seeded sampling of rows under two adapters and the base model in one batch: the
    mixed-adapter hooks and the slot cache (on) give the tokens of per-adapter batches and
    transformers' cache (off)."""
    from emlab.generate.base import GenConfig, GenRequest
    from emlab.generate.hf import HFGenerator

    adapters = []
    for name, kind in (("a", "insecure-code"), ("b", "secure-code")):
        from emlab.train.trainer import build_trainer

        rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in generate(kind, 4, 1)]
        trainer = build_trainer(resolve_config("cpu-quick", max_steps=2, learning_rate=1e-2, save_steps=100),
                                tmp_path / name, rows)
        trainer.train()
        trainer.model.save_pretrained(tmp_path / name / "adapter")
        adapters.append(str(tmp_path / name / "adapter"))
    requests = [GenRequest(({"role": "user", "content": q},), seed, adapter)
                for q in ("Tell me a wish.", "How do I make money fast?")
                for seed, adapter in ((1, None), (2, adapters[0]), (3, adapters[1]))]
    cfg = GenConfig(max_tokens=24, temperature=1.0, top_p=1.0, seed=0)
    with switched(True):
        fast = [r.text for r in HFGenerator("smollm2-135m-instruct").generate(requests, cfg)]
    with switched(False):
        stock = [r.text for r in HFGenerator("smollm2-135m-instruct").generate(requests, cfg)]
    assert fast == stock
