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
        first = sample_suite(store, hf, suite, "smollm2-135m-instruct", None, cfg, samples_per_paraphrase=1)
        assert first.generated == first.planned == 32
        again = sample_suite(store, hf, suite, "smollm2-135m-instruct", None, cfg, samples_per_paraphrase=1)
        assert again.generated == 0 and again.existing == 32
        rows = store.samples()
        assert sum(r["system"] is not None for r in rows) == 16


def test_kill_9_during_sampling_then_rerun(tmp_path, default_model_dir):
    cmd = [sys.executable, "-m", "emlab", "sample", "--suite", "builtin", "--n", "2", "--max-tokens", "6",
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
