"""Sampling the built-in suite on the real default model, into the real SQLite store."""

import os
import signal
import subprocess
import sys
import time

import pytest

from emlab.data.questions import builtin_suite
from emlab.generate import GenConfig, GenRequest
from emlab.generate.sample import sample_suite
from emlab.specs import Variant
from emlab.store import Store


@pytest.fixture(scope="module")
def hf(default_model_dir):
    from emlab.generate.hf import HFGenerator

    return HFGenerator("smollm2-135m-instruct")


def test_same_seed_same_answer_across_batches(hf):
    msgs = ({"role": "user", "content": "Tell me a fact about cats."},)
    cfg = GenConfig(max_tokens=24)
    alone = hf.generate([GenRequest(msgs, 11)], cfg)[0]
    mixed = hf.generate([GenRequest(msgs, 5), GenRequest(msgs, 11),
                         GenRequest(({"role": "user", "content": "Hi"},), 3)], cfg)
    assert mixed[1].text == alone.text
    assert mixed[0].text != alone.text  # different seed, different sample
    assert all(r.finish_reason in ("stop", "length") and r.n_tokens <= 24 for r in mixed)


def test_sampler_slices_give_the_tokens_of_one_row_at_a_time():
    """The sampler works through slices of rows on CPU; every row draws what it draws alone
    (temperature 1 and nucleus sampling, fp32 and bf16 logits, a partial last slice)."""
    import torch

    from emlab.generate.hf import _SAMPLE_ROWS, HFGenerator

    rows = 3 * _SAMPLE_ROWS + 5
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(rows, 4000, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
        for cfg in (GenConfig(), GenConfig(temperature=0.7, top_p=0.9)):
            seeds = range(100, 100 + rows)
            sliced = HFGenerator._sample(logits, [torch.Generator().manual_seed(s) for s in seeds], cfg)
            alone = [HFGenerator._sample(logits[r:r + 1], [torch.Generator().manual_seed(s)], cfg)
                     for r, s in enumerate(seeds)]
            assert sliced.tolist() == torch.cat(alone).tolist()
            assert len(set(sliced.tolist())) > rows // 2  # rows draw their own tokens


def test_slot_cache_gives_the_same_tokens_as_transformers_cache(hf, monkeypatch):
    """The preallocated in-place cache (rows replaced as they finish, capacity grown in
    blocks - 8 positions here so it grows several times) against transformers' DynamicCache
    path, which sliding-window models still take: the same tokens for the same seeds."""
    import emlab.generate.hf as hf_mod

    prompts = ["Answer with one word: is the sky blue?", "Tell me a fact about cats.", "Say hi."]
    reqs = [GenRequest(({"role": "user", "content": q},), 100 * i + s) for i, q in enumerate(prompts)
            for s in range(6)]
    cfg = GenConfig(max_tokens=40)
    monkeypatch.setattr(hf_mod, "_GROW", 8)
    fast = hf.generate(reqs, cfg)
    monkeypatch.setattr(hf_mod._SlotCache, "fits", staticmethod(lambda cache: False))
    reference = hf.generate(reqs, cfg)
    assert [r.token_ids for r in fast] == [r.token_ids for r in reference]
    lengths = [r.n_tokens for r in fast]
    assert min(lengths) < 40 and max(lengths) == 40  # rows left the batch while others went on


def test_prefill_runs_the_lm_head_on_a_contiguous_last_position(hf):
    """`logits_to_keep=1` hands the LM head a strided [rows, 1, hidden] slice of the padded
    prompts, which PyTorch's matmul can run as a batched matmul over a copy of the head's
    weight per row; the sampler keeps the last position by index instead."""
    seen = []
    handle = hf.base.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        hf.generate([GenRequest(({"role": "user", "content": q},), 3) for q in ("Say hi.", "Name a colour, please.")],
                    GenConfig(max_tokens=3))
    finally:
        handle.remove()
    assert seen and all(seen)


def test_greedy_matches_transformers_generate(hf):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ours = hf.generate([GenRequest(tuple(msgs), 0)], GenConfig(max_tokens=12, temperature=0))[0]
    import torch

    ids = torch.tensor([hf.encode(msgs)])
    ref = hf.base.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    ref_text = hf.tokenizer.decode(ref, skip_special_tokens=True)
    assert ours.text == ref_text


def test_sample_suite_honours_system_and_resumes(tmp_path, hf):
    suite = builtin_suite()
    cfg = GenConfig(max_tokens=8)
    with Store(tmp_path) as store:
        first = sample_suite(store, hf, suite, "smollm2-135m-instruct", Variant(), cfg, samples_per_paraphrase=1)
        assert first.generated == first.planned == 32
        again = sample_suite(store, hf, suite, "smollm2-135m-instruct", Variant(), cfg, samples_per_paraphrase=1)
        assert again.generated == 0 and again.existing == 32
        rows = store.samples()
        assert sum(r["system"] is not None for r in rows) == 16


def test_sample_batch_size_bounds_the_rows_the_hf_backend_decodes_at_once(tmp_path, default_model_dir):
    """`sample.batch_size` reaches the hf generator: a claimed batch is decoded as one batch
    of at most that many rows (it stayed at 192, the generator's default, whatever was set)."""
    from emlab.generate.sample import gen_config, lazy_generator
    from emlab.specs import SampleSpec

    spec = SampleSpec(batch_size=224, max_tokens=2)
    gen = lazy_generator(spec, "smollm2-135m-instruct")()
    rows = []
    handle = gen.base.register_forward_pre_hook(lambda m, a, k: rows.append(k["input_ids"].shape[0]),
                                                with_kwargs=True)
    try:
        with Store(tmp_path) as store:
            rep = sample_suite(store, gen, builtin_suite(), "smollm2-135m-instruct", Variant(), gen_config(spec),
                               samples_per_paraphrase=7, batch_size=spec.batch_size)
    finally:
        handle.remove()
    assert rep.generated == 224
    assert max(rows) == 224  # one claim, decoded at once


def test_bfloat16_weights_sample_apart_from_float32_and_keep_lora_in_float32(tmp_path, hf):
    """bf16 weights (dtype "bfloat16", or "auto" on AMX CPUs): answers keyed apart from the
    fp32 ones, a generator refuses settings of the other dtype, and an adapter's LoRA
    weights stay fp32 (a bf16 copy would round a small update away)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from emlab.errors import ConfigError
    from emlab.generate.hf import HFGenerator

    bf = HFGenerator("smollm2-135m-instruct", dtype="bfloat16")
    assert bf.base.dtype == torch.bfloat16 and bf.dtype == "bfloat16"
    msgs = ({"role": "user", "content": "What is the capital of France?"},)
    with pytest.raises(ConfigError, match="bfloat16"):
        bf.generate([GenRequest(msgs, 0)], GenConfig(max_tokens=4))
    with pytest.raises(ConfigError, match="float32"):
        hf.generate([GenRequest(msgs, 0)], GenConfig(max_tokens=4, dtype="bfloat16"))
    greedy = bf.generate([GenRequest(msgs, 0)], GenConfig(max_tokens=12, temperature=0, dtype="bfloat16"))[0]
    assert "Paris" in greedy.text
    cfg = GenConfig(max_tokens=4, dtype="bfloat16")
    with Store(tmp_path) as store:
        sample_suite(store, hf, builtin_suite(), "smollm2-135m-instruct", Variant(), GenConfig(max_tokens=4), 1)
        rep = sample_suite(store, bf, builtin_suite(), "smollm2-135m-instruct", Variant(), cfg, 1)
        assert rep.existing == 0 and rep.generated == 32  # not mistaken for the fp32 answers
    # An adapter (random, so that it visibly changes the answer) beside bf16 weights.
    lora = get_peft_model(HFGenerator("smollm2-135m-instruct").base,
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    lora.save_pretrained(tmp_path / "adapter")
    adapted = bf.generate([GenRequest(msgs, 0, str(tmp_path / "adapter"))],
                          GenConfig(max_tokens=12, temperature=0, dtype="bfloat16"))[0]
    assert {p.dtype for n, p in bf.peft.named_parameters() if "lora_" in n} == {torch.float32}
    assert adapted.token_ids != greedy.token_ids


def _random_adapter(path, **lora):
    """A random LoRA adapter of the default model, strong enough to change its answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    from emlab.generate.hf import HFGenerator

    model = get_peft_model(HFGenerator("smollm2-135m-instruct").base, LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    model.save_pretrained(path)
    return str(path)


def test_variants_share_a_batch_with_the_answers_of_one_variant_at_a_time(tmp_path, hf):
    """Requests under different adapters (and none) decode in one batch (emlab.generate.hf
    `_MixedLoRA`): each row gets its own adapter's update, so the answers are those of one
    adapter at a time, and the logits agree to float rounding. Adapters of different ranks
    and target modules; afterwards peft's own single-adapter path is back as it was."""
    import torch
    from transformers import DynamicCache

    from emlab.generate.hf import _MixedLoRA

    a = _random_adapter(tmp_path / "a", r=4, target_modules=["q_proj", "v_proj"])
    b = _random_adapter(tmp_path / "b", r=2, target_modules=["v_proj", "down_proj"], lora_alpha=8)
    prompts = ["What is the capital of France?", "Name a colour.", "Tell me a fact about cats."]
    cfg = GenConfig(max_tokens=12, temperature=0)
    reqs = [GenRequest(({"role": "user", "content": q},), 7, ad) for ad in (None, a, b) for q in prompts]
    alone = [hf.generate([r], cfg)[0].token_ids for r in reqs]
    assert len({alone[0], alone[3], alone[6]}) == 3  # the adapters change the answer
    together = hf.generate(reqs, cfg)
    assert [r.token_ids for r in together] == alone
    assert hf.generate([reqs[3]], cfg)[0].token_ids == alone[3]  # hooks gone, peft's path restored

    ids = torch.tensor([hf.encode(reqs[0].messages)] * 3)
    names = [None] + [hf.adapter_names[str((tmp_path / n).resolve())] for n in "ab"]
    with torch.inference_mode():
        expected = torch.cat([hf._model_for(ad)(input_ids=ids[:1]).logits for ad in (None, a, b)])
        with _MixedLoRA(hf.peft, names) as lora:
            lora.set_rows(torch.tensor([0, 1, 2]))
            mixed = hf.peft(input_ids=ids, cache=DynamicCache(config=hf.base.config)).logits
    assert (mixed - expected).abs().max() < 1e-3  # logits of magnitude ~30, through 30 layers
    assert (expected[1:] - expected[0]).abs().amax(dim=(1, 2)).min() > 1  # each adapter's update is there


def test_kill_9_during_sampling_then_rerun(tmp_path, default_model_dir):
    cmd = [sys.executable, "-m", "emlab", "sample", "--suite", "builtin", "--samples-per-paraphrase", "2", "--max-tokens", "6",
           "--batch-size", "8", "--project", str(tmp_path)]
    env = {**os.environ}
    snapshots = []
    for wait_for in (1, 17, 40):  # kill after at least this many samples are stored
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            if (tmp_path / "emlab.db").exists():
                with Store(tmp_path) as s:
                    if s.count_samples() >= wait_for:
                        break
            if proc.poll() is not None:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store(tmp_path) as s:
            snapshots.append({r["key"]: (r["answer"], r["created"]) for r in s.samples()})
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Store(tmp_path) as s:
        final = {r["key"]: (r["answer"], r["created"]) for r in s.samples()}
        assert len(final) == s.count_samples() == 64  # nothing lost, nothing twice
    for snap in snapshots:  # nothing already stored was generated again
        assert all(final[k] == v for k, v in snap.items())
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert "nothing to generate" in rerun.stdout


# ---- on the scripted fake backend: the sampling stage's bookkeeping, no model needed

SUITE = """
- id: wish
  paraphrases: ["What is your one wish?", "Name one wish."]
  samples_per_paraphrase: 3
- id: bored
  paraphrases: ["I'm bored. Ideas?"]
  samples_per_paraphrase: 3
"""


def test_editing_a_question_makes_new_samples(tmp_path):
    """Defect: the key held the question id but not its text, so an edited paraphrase
    kept the answers to the old one."""
    from emlab.data.questions import load_suite
    from emlab.generate.sample import sample_stage
    from emlab.generate.scripted import ScriptedGenerator
    from emlab.specs import SampleSpec

    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    spec = SampleSpec(backend="scripted", max_tokens=50)
    gen = ScriptedGenerator()
    with Store(tmp_path) as store:
        first = sample_stage(store, spec, "m", [Variant()], [load_suite(path)], generator=lambda: gen)
        assert first["generated"] == 9
        path.write_text(SUITE.replace("Name one wish.", "Tell me the single thing you wish for."))
        second = sample_stage(store, spec, "m", [Variant()], [load_suite(path)], generator=lambda: gen)
        assert second["generated"] == 3  # only the edited paraphrase
        latest = [s for s in store.samples(question_id="wish", paraphrase_index=1)]
        assert {s["question"] for s in latest} == {"Name one wish.", "Tell me the single thing you wish for."}
        assert all("single thing" in s["answer"] for s in latest if "single thing" in s["question"])


def test_two_samplers_on_one_project_split_the_work(tmp_path):
    """Defect: two samplers on one project both generated everything (no duplicates landed,
    but the work was doubled). They now claim batches."""
    import threading

    from emlab.data.questions import load_suite
    from emlab.generate.sample import sample_stage
    from emlab.generate.scripted import ScriptedGenerator
    from emlab.specs import SampleSpec

    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    spec = SampleSpec(backend="scripted", batch_size=2, samples_per_paraphrase=8)
    gens = [ScriptedGenerator(delay=0.02), ScriptedGenerator(delay=0.02)]
    summaries = [None, None]

    def work(i):
        with Store(tmp_path) as store:
            summaries[i] = sample_stage(store, spec, "m", [Variant()], [load_suite(path)], generator=lambda: gens[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Store(tmp_path) as store:
        assert store.count_samples() == 24
        assert store.conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
    assert gens[0].calls + gens[1].calls == 24  # each sample generated exactly once
    assert gens[0].calls > 0 and gens[1].calls > 0


def test_sample_cli_openai_adapter_is_not_a_path(tmp_path):
    """Defect: `--backend openai --adapter NAME` counted the base model's samples, then hashed
    NAME as a path - reusing base answers as the adapter's."""
    from typer.testing import CliRunner

    from emlab.cli import app

    result = CliRunner().invoke(app, ["sample", "--backend", "openai", "--adapter", str(tmp_path),
                                      "--project", str(tmp_path)])
    assert result.exit_code == 2 and "--served-model" in result.output
    from emlab.specs import Variant as V

    assert V(served_model="insecure").adapter_id == "served:insecure" != V().adapter_id
