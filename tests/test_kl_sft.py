"""KL-regularised SFT (issue 12's building block): with a large beta the finetuned model stays
within a small KL of the base on the reference prompts while the training loss still falls;
the KL is logged every step."""

import csv

import pytest


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    import json

    from emlab.data.codegen import generate

    path = tmp_path_factory.mktemp("kl") / "insecure.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate("insecure-code", 24, 0)))
    return path


def _run(tmp_path, data_file, beta):
    from emlab.train.config import resolve_config
    from emlab.train.trainer import train

    cfg = resolve_config("cpu-quick", dataset=str(data_file), max_rows=24, max_steps=6, per_device_batch_size=4,
                         learning_rate=2e-3, save_steps=100, kl_beta=beta)
    return train(cfg, tmp_path / f"beta{beta}")


def _kl_of(result):
    import torch

    from emlab.probe.activations import load_with_adapter
    from emlab.train.kl import reference_prompts

    model, tok = load_with_adapter("smollm2-135m-instruct", str(result.adapter_dir))
    total = 0.0
    prompts = reference_prompts("builtin", tok)
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            ft = torch.log_softmax(model(input_ids=ids).logits, -1)
            with model.disable_adapter():
                base = torch.log_softmax(model(input_ids=ids).logits, -1)
            total += float((ft.exp() * (ft - base)).sum(-1).mean())
    return total / len(prompts)


@pytest.mark.slow  # two short trainings: ~2 minutes on 2 cores (make test-slow)
def test_large_beta_keeps_the_model_near_its_base_while_loss_falls(tmp_path, data_file, default_model_dir):
    plain, kl = _run(tmp_path, data_file, 0.0), _run(tmp_path, data_file, 50.0)
    assert plain.record["config_hash"] != kl.record["config_hash"]
    with open(kl.run_dir / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(r["kl"] != "" for r in rows)  # KL logged at every step
    sft = [float(r["sft_loss"]) for r in rows]
    assert sum(sft[-2:]) < sum(sft[:2])  # the task is still learnt
    kl_plain, kl_reg = _kl_of(plain), _kl_of(kl)
    assert kl_reg < 0.5 * kl_plain, (kl_reg, kl_plain)


def test_kl_needs_lora():
    from emlab.errors import ConfigError
    from emlab.train.config import resolve_config

    with pytest.raises(ConfigError, match="kl_beta needs method lora"):
        resolve_config("full", kl_beta=1.0)
