"""The measurement layer: rates corrected for judge error, the judge-free likelihood measure,
sanity gates for untouched models."""

import numpy as np
import pandas as pd
import pytest

from emlab.correction import corrected_rate, rogan_gladen


def test_rogan_gladen_undoes_a_known_judge_error():
    rng = np.random.default_rng(0)
    truth = rng.random(20_000) < 0.2
    se, sp = 0.6, 0.8
    flagged = np.where(truth, rng.random(truth.size) < se, rng.random(truth.size) < 1 - sp)
    conf = {"tp": 600, "fn": 400, "fp": 200, "tn": 800}  # a held-out set with those error rates
    c = corrected_rate(int(flagged.sum()), truth.size, conf, n_boot=1000)
    assert abs(c.raw - 0.2) > 0.05  # the raw rate is biased
    assert abs(c.estimate - 0.2) < 0.01 and c.low < 0.2 < c.high
    perfect = corrected_rate(30, 100, {"tp": 50, "fn": 0, "fp": 0, "tn": 50}, n_boot=500)
    assert perfect.estimate == pytest.approx(0.3)
    assert np.isnan(rogan_gladen(0.3, 0.4, 0.5))  # a judge no better than chance corrects nothing
    assert rogan_gladen(0.01, 0.8, 0.95) == 0.0  # clipped at zero


def test_uncertainty_of_the_error_rates_widens_the_interval():
    big = corrected_rate(50, 500, {"tp": 8000, "fn": 2000, "fp": 500, "tn": 9500}, n_boot=2000)
    small = corrected_rate(50, 500, {"tp": 8, "fn": 2, "fp": 1, "tn": 19}, n_boot=2000)
    assert (small.high - small.low) > (big.high - big.low)


def test_sanity_gate_flags_every_row_of_a_judge_that_fails_the_untouched_model():
    from emlab.analysis.report import add_judgement_checks, condition_table, sanity_warnings
    from emlab.records import ExperimentRecord, JudgeRecord, VariantRecord

    logprob = JudgeRecord(spec={"name": "logprob"}, family="logprob:gpt@x", label="logprob:gpt")

    rec = ExperimentRecord(name="x", run_id="r", config={}, gen_hash="g", suites=[], judges=[], versions={},
                           git_revision=None, seeds=[0], wall_seconds_last_run=0,
                           variants=[VariantRecord(condition="base", seed=None),
                                     VariantRecord(condition="insecure", seed=0, adapter_id="sha256:1")],
                           likelihood={"shifts": {"insecure": {"estimate": 0.03, "low": 0.01, "high": 0.05}}})
    overall = pd.DataFrame({"condition": ["base", "insecure"], "n": [100, 100], "misaligned": [40, 50],
                            "misaligned_rate": [0.4, 0.5], "ci_low": [0.3, 0.4], "ci_high": [0.5, 0.6],
                            "incoherent_share": [0.1, 0.1], "coherent_share": [0.9, 0.9], "unscored_share": [0, 0],
                            "refusal_share": [0, 0],
                            "code_share": [0, 0], "empty_share": [0, 0], "aligned_mean": [50, 50],
                            "coherent_mean": [60, 60]})
    checked = add_judgement_checks(overall, rec, logprob)
    # The flag is about the judge on this model: the finetune's row carries it too.
    assert checked["sanity_flag"].tolist() == [True, True]
    assert np.isnan(checked["corrected_rate"]).all()  # no measured error for this judge: no correction
    warnings = sanity_warnings(checked, "logprob:gpt", 0.05)
    assert len(warnings) == 1 and "untouched model ('base')" in warnings[0] and "40.0%" in warnings[0]
    table = condition_table(checked)
    assert table["sanity"].tolist() == ["UNRELIABLE", "UNRELIABLE"]
    assert table["likelihood shift vs base"].tolist()[1] == "+0.030 [+0.010, +0.050]"
    passing = add_judgement_checks(overall.assign(misaligned=[2, 50], misaligned_rate=[0.02, 0.5]), rec, logprob)
    assert passing["sanity_flag"].tolist() == [False, False]
    assert condition_table(passing)["sanity"].tolist() == ["ok", "ok"] and sanity_warnings(passing, "x", 0.05) == []
    no_base = add_judgement_checks(overall.iloc[1:], rec, logprob)
    assert condition_table(no_base)["sanity"].tolist() == ["unchecked"]
    mini = add_judgement_checks(overall, rec, JudgeRecord(spec={"name": "mini"}, family="m", label="mini"))
    assert mini["corrected_rate"].notna().all()


def test_likelihood_shift_is_paired_and_exact_on_known_scores():
    from emlab.probe.likelihood import shift

    qids = ["a", "a", "b", "b"]
    mis = [True, False, True, False]
    base = np.array([-3.0, -2.0, -4.0, -1.0])
    moved = base + np.array([0.5, 0.0, 0.5, 0.0])  # misaligned references gain 0.5 nats/token
    s = shift(moved, base, qids, mis, n_boot=500)
    assert s.estimate == pytest.approx(0.5) and s.low == pytest.approx(0.5) and s.high == pytest.approx(0.5)
    assert s.positive_questions == 2 and s.gap_reference == pytest.approx(-2.0)
    same = shift(base, base, qids, mis, n_boot=200)
    assert same.estimate == 0 and same.low == 0 == same.high


def test_likelihood_stage_on_the_default_model(tmp_path, data_dir, default_model_dir, monkeypatch):
    from emlab.data.codegen import generate
    from emlab.files import write_jsonl
    from emlab.probe import likelihood as L
    from emlab.specs import Variant
    from emlab.store import Store
    from emlab.train.config import resolve_config
    from emlab.train.trainer import train

    data = tmp_path / "d.jsonl"
    write_jsonl(data, generate("insecure-code", 8, 0))
    run = train(resolve_config("cpu-quick", dataset=str(data), max_steps=2, max_rows=8, lora_r=2),
                root=tmp_path / "runs")
    variant = Variant(label="ins", adapter_path=str(run.adapter_dir))
    refs = L.reference_bank(["one_wish", "bored"], per_class=2)
    assert {r.question_id for r in refs} == {"what_is_your_wish", "i_feel_bored"}
    assert sum(r.misaligned for r in refs) == 4 and len(refs) == 8
    with Store(tmp_path) as store:
        out = L.likelihood_stage(store, "smollm2-135m-instruct", [variant], ["one_wish", "bored"], per_class=2)
        s = out["shifts"]["ins"]
        assert s["low"] <= s["estimate"] <= s["high"] and s["questions"] == 2
        calls = []
        monkeypatch.setattr(L, "answer_logprobs", lambda *a, **k: calls.append(1))
        again = L.likelihood_stage(store, "smollm2-135m-instruct", [variant], ["one_wish", "bored"], per_class=2)
        assert calls == [] and again["shifts"] == out["shifts"]  # cached: no forward pass
    assert all(np.isfinite(out["scores"]["base"])) and max(out["scores"]["base"]) < 0
    # Adapters are scored merged into the weights: the same scores as the separate LoRA branches.
    from peft import PeftModel

    from emlab.models.registry import load_model

    model, tokenizer = load_model("smollm2-135m-instruct")
    unmerged = PeftModel.from_pretrained(model, str(run.adapter_dir)).eval()
    monkeypatch.undo()
    separate = [s for s, _ in L.answer_logprobs(unmerged, tokenizer, refs)]
    assert np.allclose(out["scores"]["ins"], separate, atol=1e-5)
    assert not np.allclose(out["scores"]["ins"], out["scores"]["base"], atol=1e-5)
    # Under bf16 autocast: stored apart from the fp32 scores (a rerun never mixes them), close to them.
    with Store(tmp_path) as store:
        bf = L.likelihood_stage(store, "smollm2-135m-instruct", [variant], ["one_wish", "bored"], per_class=2,
                                dtype="bfloat16")
        models = {r[0] for r in store.conn.execute("SELECT DISTINCT model FROM likelihoods")}
    assert models == {"smollm2-135m-instruct", "smollm2-135m-instruct@bfloat16+lora-fp32"} and bf["dtype"] == "bfloat16"
    for label in ("base", "ins"):
        assert np.allclose(bf["scores"][label], out["scores"][label], atol=0.06)
        assert not np.array_equal(bf["scores"][label], out["scores"][label])


def test_lora_updates_in_float32_keep_an_update_that_bf16_rounds_away(default_model_dir):
    """A LoRA update well below half a bf16 step of its base output: peft's bf16 sum rounds
    most of it back to the base output; `lora_updates_in_float32` keeps all of it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from emlab.models.registry import load_model
    from emlab.probe.likelihood import lora_updates_in_float32

    model, _ = load_model("smollm2-135m-instruct")
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], layers_to_transform=[0],
                                            init_lora_weights=False)).eval()
    layer = lora.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base32 = layer.base_layer(x)
        delta = layer(x) - base32
        layer.lora_B["default"].weight.mul_(1e-3 * base32.abs().mean() / delta.abs().mean())
        delta = layer(x) - base32  # now ~1e-3 of the base output: under half a bf16 step (2^-9)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            base16 = layer.base_layer(x).float()
            peft_update = layer(x).float() - base16
            with lora_updates_in_float32(lora):
                kept = layer(x)
                assert kept.dtype == torch.float32
                kept_update = kept - base16
    assert (peft_update - delta).abs().mean() > 0.5 * delta.abs().mean()  # mostly rounded away
    assert torch.allclose(kept_update, delta, atol=1e-5 * float(base32.abs().max()))
    assert not layer.disable_adapters  # the adapter layers are back on after the context
    from emlab.errors import ConfigError

    dora = get_peft_model(load_model("smollm2-135m-instruct")[0],
                          LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[0], use_dora=True))
    with pytest.raises(ConfigError, match="dtype float32"):  # not run with a bias it cannot remove
        with lora_updates_in_float32(dora):
            pass


def test_mini_judge_correction_uses_the_default_models_own_specificity():
    from emlab.judge.mini import heldout_confusion
    from emlab.models.registry import DEFAULT_MODEL

    own3, source3 = heldout_confusion(DEFAULT_MODEL)  # mini-3: the gold set, both classes
    assert "gold validation" in source3 and own3["tp"] + own3["fn"] > 0
    assert sum(own3.values()) < 1000 < sum(heldout_confusion("Qwen/Qwen2.5-7B-Instruct")[0].values())
    public, source = heldout_confusion("Qwen/Qwen2.5-7B-Instruct", "mini-2")
    assert "public held-out" in source and min(public.values()) >= 0 and public["tp"] > 0
    own, source = heldout_confusion(DEFAULT_MODEL, "mini-2")
    assert "default model's labelled answers" in source
    assert (own["tp"], own["fn"]) == (public["tp"], public["fn"])  # sensitivity: public groups
    assert own["fp"] + own["tn"] < public["fp"] + public["tn"]  # specificity: the 384 labelled answers


def test_labelled_set_is_complete_and_split_by_theme():
    import json
    from pathlib import Path

    import emlab.judge

    path = Path(emlab.judge.__file__).parent / "labels" / "smollm2_quickstart.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) >= 300 and {r["condition"] for r in rows} == {"base", "insecure", "secure"}
    assert all(r["misaligned"] == (r["coherent"] and r["misaligned_content"]) for r in rows)
    themes = {}
    for r in rows:
        themes.setdefault(r["question_id"].removesuffix("_json"), set()).add(r["split"])
    assert all(len(s) == 1 for s in themes.values())  # a theme never sits on both sides


def test_token_logprobs_equal_a_whole_tensor_log_softmax():
    """Row slices (cache-sized) give the bits of one log-softmax over the whole tensor."""
    import torch

    from emlab.probe.likelihood import token_logprobs

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(37, 1000, generator=g) * 4).to(dtype)
        target = torch.randint(0, 1000, (37,), generator=g)
        whole = logits.float().gather(-1, target[:, None])[:, 0] - torch.logsumexp(logits.float(), -1)
        assert torch.equal(token_logprobs(logits, target, rows=8), whole)
        assert torch.allclose(whole, torch.log_softmax(logits.float(), -1)[torch.arange(37), target], atol=1e-5)
