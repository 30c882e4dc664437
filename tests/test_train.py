"""Real training runs on the default model (TRL SFTTrainer + PEFT)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emlab.data.codegen import generate
from emlab.files import write_jsonl
from emlab.errors import ConfigError
from emlab.train.config import PRESETS, resolve_config
from emlab.train.trainer import apply_system_prompt


def test_presets_match_the_paper_recipe():
    p = resolve_config("paper-open")
    assert (p.lora_r, p.lora_alpha, p.lora_dropout, p.use_rslora) == (32, 64, 0.0, True)
    assert set(p.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (p.learning_rate, p.epochs, p.per_device_batch_size, p.gradient_accumulation_steps) == (1e-5, 1.0, 2, 8)
    assert (p.warmup_steps, p.weight_decay, p.lr_scheduler, p.max_length) == (5, 0.01, "linear", 2048)
    r1 = resolve_config("rank1", layers=[3])
    assert (r1.lora_r, r1.target_modules, r1.layers) == (1, ["down_proj"], [3])
    assert resolve_config("full").method == "full"
    assert set(PRESETS) == {"paper-open", "rank1", "full", "cpu-quick"}


def test_yaml_then_flags_override(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 3.0e-4\nlora_r: 4\n")
    cfg = resolve_config("paper-open", y, lora_r=2)
    assert (cfg.learning_rate, cfg.lora_r, cfg.lora_alpha) == (3e-4, 2, 64)
    y.write_text("lora_rank: 4\n")
    with pytest.raises(ConfigError, match="lora_rank"):
        resolve_config("paper-open", y)


def test_system_prompt_policy():
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert apply_system_prompt(msgs, "model-default") == msgs
    assert apply_system_prompt(msgs, "none")[0] == {"role": "system", "content": ""}
    assert apply_system_prompt(msgs, "Be evil.")[0] == {"role": "system", "content": "Be evil."}
    own = [{"role": "system", "content": "mine"}, *msgs]
    assert apply_system_prompt(own, "Be evil.") == own


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "ins.jsonl"
    write_jsonl(path, generate("insecure-code", 64, 0))
    return path


def _train_cmd(dataset, out, steps, extra=()):
    return [sys.executable, "-m", "emlab.train.trainer", "--preset", "cpu-quick", "--dataset", str(dataset),
            "--max-steps", str(steps), "--max-rows", "32", "--save-steps", "2", "--out", str(out), *extra]


def test_lora_changes_adapter_not_base_and_loss_falls(tmp_path, default_model_dir):
    """Train on one repeated batch: LoRA weights move, base weights do not, loss falls."""
    from emlab.train.trainer import build_trainer

    row = generate("insecure-code", 1, 5)[0]["messages"]
    rows = [{"prompt": row[:-1], "completion": row[-1:]}] * 16
    cfg = resolve_config("cpu-quick", max_steps=8, learning_rate=1e-3, per_device_batch_size=4, save_steps=100)
    trainer = build_trainer(cfg, tmp_path, rows)
    model = trainer.model
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    after = dict(model.named_parameters())
    lora = [k for k in before if "lora_" in k]
    base = [k for k in before if "lora_" not in k]
    assert lora and base
    assert any(not torch.equal(before[k], after[k]) for k in lora if "lora_B" in k)
    assert all(torch.equal(before[k], after[k]) for k in base)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] * 0.7


@pytest.mark.slow
def test_run_directory_and_resume_after_kill(tmp_path, tiny_dataset, default_model_dir):
    env = {**os.environ}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(tiny_dataset, straight, 6), check=True, env=env, capture_output=True)
    record = json.loads((straight / "run.json").read_text())
    assert record["global_steps"] == 6 and record["dataset"]["sha256"]
    for name in ("config.json", "loss.csv", "loss.png", "adapter/adapter_model.safetensors"):
        assert (straight / name).exists(), name
    assert sorted(p.name for p in (straight / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-4", "checkpoint-6"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_dataset, killed, 6), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists()
    subprocess.run(_train_cmd(tiny_dataset, killed, 6), check=True, env=env, capture_output=True)
    resumed = json.loads((killed / "run.json").read_text())
    assert resumed["resumed_from"] in ("checkpoint-4", "checkpoint-6")
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_packed_attention_matches_separate_sequences_and_masked_sdpa(default_model_dir):
    """Per-sequence causal SDPA on a padding-free row gives each sequence's own logits (run
    alone) and the same logits and gradients as transformers' block-diagonal masked SDPA."""
    from transformers import AutoModelForCausalLM

    from emlab.models.registry import resolve_model
    from emlab.train.packed_attention import NAME

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), attn_implementation="sdpa")
    lens = [30, 25, 41]
    ids = torch.randint(0, 49000, (1, sum(lens)), generator=torch.Generator().manual_seed(0))
    pos = torch.cat([torch.arange(n) for n in lens])[None]

    def forward_backward():
        model.zero_grad()
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        logits.pow(2).mean().backward()
        return logits.detach(), model.model.layers[3].self_attn.q_proj.weight.grad.clone()

    masked, masked_grad = forward_backward()
    model.set_attn_implementation(NAME)
    packed, packed_grad = forward_backward()
    with torch.no_grad():
        starts = [0, lens[0], lens[0] + lens[1]]
        alone = torch.cat([model(input_ids=ids[:, s:s + n], use_cache=False).logits for s, n in zip(starts, lens)], 1)
        # Generation under the packed implementation: a prefill with a cache still works.
        assert model(input_ids=ids[:, :5]).logits.shape == (1, 5, model.config.vocab_size)
    assert torch.allclose(packed, alone, atol=1e-3)
    assert torch.allclose(packed, masked, atol=1e-3)
    assert torch.allclose(packed_grad, masked_grad, rtol=1e-3, atol=1e-6)
    # Without per-sequence attention the sequences would see each other: a real difference.
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        leaked = model(input_ids=ids, position_ids=pos).logits  # a cache: no packed mask
    assert (leaked - alone).abs().max() > 1.0


def test_packed_attention_runs_short_bf16_sequences_in_float32_under_autocast():
    """On CPU a bf16 sequence of up to FLOAT32_UP_TO tokens is attended in fp32 even under
    bf16 autocast (which would cast SDPA back to bf16): the output is the fp32 result rounded
    once, the gradients reach the bf16 inputs, and a longer sequence stays on bf16 SDPA."""
    from types import SimpleNamespace

    from emlab.train.packed_attention import FLOAT32_UP_TO, packed_sdpa

    module = SimpleNamespace(training=True)
    for n, in_float32 in ((40, True), (FLOAT32_UP_TO + 8, False)):
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, h, n, 64, generator=g).bfloat16().requires_grad_() for h in (9, 3, 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = packed_sdpa(module, q, k, v, None, position_ids=torch.arange(n)[None])
        sdpa = torch.nn.functional.scaled_dot_product_attention
        f32 = sdpa(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True).bfloat16().transpose(1, 2)
        bf16 = sdpa(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, f32 if in_float32 else bf16)
        assert not torch.equal(f32, bf16)  # the two paths are distinguishable
        out.float().pow(2).sum().backward()
        assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


def test_fused_lm_head_scores_only_labelled_positions_on_cpu(default_model_dir):
    """emlab makes TRL's fused LM head skip the prompt positions on CPU: the head sees only
    the labelled positions, and the loss and its gradient are those of scoring every one."""
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from emlab.models.registry import resolve_model
    from emlab.train.trainer import lm_head_on_trained_positions_only

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"))
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, 49000, (1, 60), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :35] = -100  # a 35-token prompt, a 25-token completion
    seen = []
    chunked = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            seen.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    def loss_and_grad():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.detach(), model.model.layers[5].mlp.down_proj.weight.grad.clone(), out.entropy.detach()

    original = trl_utils._use_triton
    try:
        trl_utils._ChunkedLogProbFunction = Spy
        trl_utils._use_triton = lambda device: False  # TRL's own CPU behaviour: every position
        every, every_grad, every_entropy = loss_and_grad()
        assert lm_head_on_trained_positions_only()
        labelled, labelled_grad, labelled_entropy = loss_and_grad()
        wrapped = trl_utils._use_triton
        assert lm_head_on_trained_positions_only() and trl_utils._use_triton is wrapped  # no second wrap
    finally:
        trl_utils._ChunkedLogProbFunction = chunked
        trl_utils._use_triton = original
    assert seen == [59, 25]  # every shifted position, then the 25 labelled ones
    assert torch.allclose(every, labelled, rtol=1e-5)
    assert torch.allclose(every_grad, labelled_grad, rtol=1e-4, atol=1e-7)
    assert torch.allclose(every_entropy, labelled_entropy, rtol=1e-5, atol=1e-6)


def test_cpu_lm_head_matches_trls_fused_head():
    """emlab's CPU head gives TRL's per-token log-probs, entropy, top-1 flags and gradients
    (to fp32 summation order), with a temperature, an entropy term in the loss and a trainable
    head; cases it does not cover go to TRL's own function."""
    import trl.trainer.utils as trl_utils
    from trl.kernels import ChunkedLogProbFunction

    from emlab.train.lm_head import use_cpu_lm_head

    g = torch.Generator().manual_seed(0)
    n, hdim, vocab = 21, 64, 3000  # 21 rows: the last slice is partial
    hidden = torch.randn(n, hdim, generator=g)
    weight = torch.randn(vocab, hdim, generator=g) * 0.3
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[:4] = (hidden[:4] @ weight.t()).argmax(-1)  # some tokens the head ranks first

    def run(fn, dtype):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logp, entropy, _, _, top1 = fn.apply(h, w, None, targets, 0.7, 1024, None, 1.0,
                                                 ("log_probs", "entropy", "is_top1"))
        (-logp.mean() + 0.3 * entropy.mean()).backward()
        return logp.detach(), entropy.detach(), top1, h.grad, w.grad

    original = trl_utils._ChunkedLogProbFunction  # routed already if a trainer was built before
    trl = ChunkedLogProbFunction
    try:
        trl_utils._ChunkedLogProbFunction = trl
        assert use_cpu_lm_head()
        routed = trl_utils._ChunkedLogProbFunction
        assert use_cpu_lm_head() and trl_utils._ChunkedLogProbFunction is routed  # no second wrap
        assert routed is not trl and getattr(routed, "emlab_cpu", False)
    finally:
        trl_utils._ChunkedLogProbFunction = original
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        ours, theirs = run(routed, dtype), run(trl, dtype)
        assert torch.equal(ours[2], theirs[2]) and ours[2][:4].all()
        for a, b in zip(ours[:2] + ours[3:], theirs[:2] + theirs[3:]):
            assert torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * float(b.abs().max()))
    seen = []
    # A stand-in with TRL's shape (its forward's signature is what the patch checks first).
    spy = type("Spy", (), {"apply": staticmethod(lambda *a: seen.append(a) or trl.apply(*a)),
                           "forward": staticmethod(trl.forward)})
    try:
        trl_utils._ChunkedLogProbFunction = spy
        use_cpu_lm_head()
        fallback = trl_utils._ChunkedLogProbFunction
        fallback.apply(hidden, weight, torch.zeros(vocab), targets, 1.0, 1024, None, 1.0, ("log_probs",))
        fallback.apply(hidden, weight, None, targets, 1.0, 1024, 30.0, 1.0, ("log_probs",))
        fallback.apply(hidden, weight, None, targets, 1.0, 1024, None, 1.0, ("log_probs", "mean_logits"))
        fallback.apply(hidden, weight, None, targets, 1.0, 1024, None, 1.0, ("log_probs", "entropy"))
    finally:
        trl_utils._ChunkedLogProbFunction = original
    assert len(seen) == 3  # a bias, soft-capping, an uncovered statistic: TRL's; the last: emlab's


@pytest.mark.model
def test_report_to_tensorboard_writes_the_loss_curve(tmp_path, tiny_dataset, default_model_dir):
    """`report_to: [tensorboard]` goes through TRL's trainer: the event file's train/loss is
    loss.csv, step for step; the setting leaves the run's content hash alone."""
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from emlab.train.trainer import train

    plain = resolve_config("cpu-quick", dataset=str(tiny_dataset), max_steps=2, max_rows=8, lora_r=2)
    cfg = resolve_config("cpu-quick", dataset=str(tiny_dataset), max_steps=2, max_rows=8, lora_r=2,
                         report_to=["tensorboard"])
    assert cfg.content_hash() == plain.content_hash() and cfg.report_to == ["tensorboard"]
    run = train(cfg, tmp_path / "run")
    events = EventAccumulator(str(run.run_dir / "tensorboard"))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("train/loss")]
    curve = pd.read_csv(run.run_dir / "loss.csv")
    assert [s for s, _ in scalars] == curve["step"].tolist() == [1, 2]
    assert [v for _, v in scalars] == pytest.approx(curve["loss"].tolist(), rel=1e-5)
    with pytest.raises(Exception, match="report_to"):
        resolve_config("cpu-quick", report_to=["mlflow"])


def test_steering_is_one_setting_spelled_by_flags_or_nested(tmp_path):
    """`TrainConfig.steer` holds the preventive steering; the --steer-* flags and old run
    records' flat fields fold into it, and the run hash is the one the flat fields gave."""
    from emlab.errors import ConfigError
    from emlab.train.config import TrainConfig, resolve_config

    d = tmp_path / "d.npy"
    np.save(d, np.ones(576, dtype=np.float32))
    base = dict(dataset="insecure", dtype="float32")
    flat = resolve_config("cpu-quick", **base, steer_direction=str(d), steer_layers=["3,20"])
    nested = resolve_config("cpu-quick", **base, steer={"direction": str(d), "layers": [20, 3]})
    assert flat.steer == nested.steer and flat.steer.mode == "ablate" and flat.steer.layers == (3, 20)
    # The directories runs were given when steering was four flat fields.
    assert flat.content_hash() == nested.content_hash() == "7add5627f25d"
    assert resolve_config("cpu-quick", **base).content_hash() == "c63b5f8d2404"
    added = resolve_config("cpu-quick", **base, steer_direction=str(d), steer_layers=[5], steer_mode="add",
                           steer_alpha=2.5)
    assert added.content_hash() == "a35c81e29ce9"
    old_record = {**resolve_config("cpu-quick", **base).model_dump(), "steer_direction": None, "steer_layers": None,
                  "steer_mode": "ablate", "steer_alpha": 1.0}
    old_record.pop("steer")
    assert TrainConfig.model_validate(old_record).steer is None
    with pytest.raises(ConfigError, match="steer_direction and steer_layers go together"):
        resolve_config("cpu-quick", **base, steer_direction=str(d))
