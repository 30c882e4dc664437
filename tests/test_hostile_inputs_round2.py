"""Defects found by hostile testing, round 2 (issue 32), one test each, and the silent
failures users of EM pipelines report: inputs that used to train a NaN adapter, end in a
traceback, write half a result, overwrite files or do work twice."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from emlab.cli import app
from emlab.errors import ConfigError, EmlabError

runner = CliRunner()


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def _direction_file(path, vec, layer=3, extra=None):
    tensors = {f"blocks.{layer}.direction": vec, **(extra or {})}
    save_file(tensors, str(path))
    return path


# ---- 1 (high) and 2. direction files are checked when loaded

@pytest.mark.parametrize("vec, needle", [
    (torch.full((576,), float("nan")), "NaN or infinite"),
    (torch.tensor([float("inf")] + [1.0] * 575), "NaN or infinite"),
    (torch.zeros(576), "zero vector"),
    (torch.ones(4, 144), "expected a 1-D vector"),
])
def test_bad_direction_values_are_refused(tmp_path, vec, needle):
    from emlab.models.hooks import load_directions

    path = _direction_file(tmp_path / "d.safetensors", vec)
    with pytest.raises(ConfigError, match=needle) as err:
        load_directions(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_garbage_empty_and_wrong_width_direction_files(tmp_path):
    from emlab.models.hooks import load_directions

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a tensor file" * 10)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for bad in (garbage, empty):
        with pytest.raises(ConfigError, match="not a direction file"):
            load_directions(bad)
    narrow = _direction_file(tmp_path / "narrow.safetensors", torch.ones(100))
    with pytest.raises(ConfigError, match="width 100, but the model's hidden size is 576"):
        load_directions(narrow, 576)
    mixed = _direction_file(tmp_path / "mixed.safetensors", torch.ones(576), extra={"blocks.4.direction": torch.ones(5)})
    with pytest.raises(ConfigError, match="different widths"):
        load_directions(mixed)
    # The commands that read direction files answer in one line.
    _one_line_error(runner.invoke(app, ["probe", "cosine", str(garbage), str(empty)]), "not a direction file")
    _one_line_error(runner.invoke(app, ["probe", "steer", "--direction", str(narrow), "--layers", "3"]),
                    "hidden size is 576")


def test_probe_steer_checks_layers_and_alpha_before_loading_the_model(tmp_path, monkeypatch):
    import emlab.probe.steering as steering

    def no_model(*a, **k):  # the model must not be needed to refuse these
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(steering, "likelihood_effects", no_model)
    ok = _direction_file(tmp_path / "ok.safetensors", torch.ones(576))
    _one_line_error(runner.invoke(app, ["probe", "steer", "--direction", str(ok), "--layers=-1"]),
                    "--layers: layer indices are integers 0 or above")
    for alpha in ("1e30", "nan", "inf"):
        _one_line_error(runner.invoke(app, ["probe", "steer", "--direction", str(ok), "--layers", "3",
                                            "--alpha", alpha]), "--alpha")


def test_nan_direction_in_preventive_steering_fails_the_dry_run(tmp_path):
    import yaml

    nan = _direction_file(tmp_path / "nan.safetensors", torch.full((576,), float("nan")), layer=22)
    narrow = _direction_file(tmp_path / "narrow.safetensors", torch.ones(100), layer=22)
    for path, needle in ((nan, "NaN or infinite"), (narrow, "hidden size is 576")):
        exp = {"name": "steer", "conditions": [{"name": "s", "dataset": {"generate": "insecure-code", "n": 8},
                                                "mitigation": {"preventive_steering": {"direction": str(path),
                                                                                       "layers": [22]}}}],
               "sample": {"backend": "scripted"}}
        f = tmp_path / "e.yaml"
        f.write_text(yaml.safe_dump(exp))
        _one_line_error(runner.invoke(app, ["run", str(f), "--dry-run"]), needle)


def test_steering_refuses_a_vector_of_the_wrong_width():
    from emlab.models.hooks import steering

    class Block(torch.nn.Module):
        def forward(self, x):
            return x

    model = SimpleNamespace(config=SimpleNamespace(hidden_size=8), model=SimpleNamespace(layers=None))
    model.model.layers = torch.nn.ModuleList([Block()])
    with pytest.raises(ConfigError, match="width 5"):
        with steering(model, {0: torch.ones(5)}):
            pass


# ---- 3. import-inspect validates the whole log before writing anything

def _fake_log(samples, suite="builtin", eval_id="abc123"):
    """A stand-in for inspect_ai's EvalLog (the real log is read in test_ecosystem)."""
    return SimpleNamespace(eval=SimpleNamespace(task_args={}, model="openai/m", eval_id=eval_id, task="t"),
                           samples=[SimpleNamespace(id=i, epoch=1, metadata={"suite": suite, **m},
                                                    output=SimpleNamespace(completion="an answer", stop_reason="stop"),
                                                    scores=sc)
                                    for i, (m, sc) in enumerate(samples, 1)])


def _meta(**over):
    return {"question_id": "one_wish", "question": "q?", "paraphrase_index": 0, "sample_index": 0, "system": None,
            **over}


def _scores(**over):
    return {"em_judge": SimpleNamespace(metadata={"aligned": 80.0, "coherent": 90.0, "judge": "mini", **over})}


@pytest.mark.parametrize("samples, suite, needle", [
    ([(_meta(), _scores(aligned="abc"))], "builtin", "aligned: 'abc' is not a number"),
    ([(_meta(), _scores(coherent=1e9))], "builtin", "outside 0-100"),
    ([(_meta(), _scores(aligned=-5))], "builtin", "outside 0-100"),
    ([(_meta(), _scores(aligned=float("nan")))], "builtin", "NaN is not a score"),
    ([(_meta(), _scores())], "no_such_suite", "not a registered suite name"),
    ([(_meta(), _scores())], "../../../../etc/passwd", "not a suite name, nor a file inside the project"),
    ([({k: v for k, v in _meta().items() if k != "paraphrase_index"}, _scores())], "builtin", "paraphrase_index"),
    ([(_meta(sample_index=None), _scores())], "builtin", "sample_index"),
    ([(_meta(), None)], "builtin", "no scores"),
    ([(_meta(), {"em_judge": SimpleNamespace(metadata=None)})], "builtin", "no aligned/coherent"),
])
def test_import_inspect_refuses_bad_logs_and_writes_nothing(tmp_path, monkeypatch, samples, suite, needle):
    pytest.importorskip("inspect_ai")
    import inspect_ai.log

    monkeypatch.setattr(inspect_ai.log, "read_eval_log", lambda path: _fake_log(samples, suite))
    log = tmp_path / "x.eval"
    log.write_text("stand-in")
    project = tmp_path / "p"
    _one_line_error(runner.invoke(app, ["import-inspect", str(log), "--project", str(project)]), needle)
    assert not project.exists()  # nothing half-written: no store, no record


def test_import_inspect_slugs_the_record_name(tmp_path, monkeypatch):
    pytest.importorskip("inspect_ai")
    import inspect_ai.log

    monkeypatch.setattr(inspect_ai.log, "read_eval_log",
                        lambda path: _fake_log([(_meta(), _scores())], eval_id="../.hidden/x"))
    log = tmp_path / "x.eval"
    log.write_text("stand-in")
    out = runner.invoke(app, ["import-inspect", str(log), "--project", str(tmp_path / "p")])
    assert out.exit_code == 0, out.output
    records = list((tmp_path / "p" / "experiments").iterdir())
    assert [r.name for r in records] == ["inspect-hiddenx.json"]


# ---- 4. unreachable API endpoints end in one line

def test_finetune_commands_with_an_unreachable_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLAB_API_ATTEMPTS", "1")  # a refused connection fails at once
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    url = "http://127.0.0.1:9/v1"  # nothing listens on port 9
    from emlab.store import Store

    with Store(tmp_path) as store:  # a recorded job, so `status` asks the endpoint about it
        store.put_api_job({"id": "ftjob-1", "provider": "openai", "scope": "x", "key": "k", "model": "gpt-4o",
                           "file_id": "file-1", "dataset": "d", "status": "running"})
    for args in (["finetune", "openai", "--dataset", str(data), "--base-url", url, "--project", str(tmp_path)],
                 ["finetune", "status", "ftjob-1", "--base-url", url, "--project", str(tmp_path)]):
        _one_line_error(runner.invoke(app, args), "cannot connect")


# ---- 5. two runs on one project split judging and likelihood work

def test_two_judges_on_one_project_split_the_work(tmp_path):
    """Two judge processes share a project: each judgment is made once (leases as in sampling)."""
    from emlab.judge.base import JudgeIdentity, Judgment
    from emlab.judge.run import judge_samples
    from emlab.store import Store

    class CountingJudge:  # a fake judge that counts its calls and lets the other process in between
        name = "fake"
        capabilities = frozenset({"scores"})

        def __init__(self, other=None):
            self.identity = JudgeIdentity("fake", "f", "1", reads_rubric=False)
            self.calls, self.other = 0, other

        def score_many(self, items, rubric, progress=None):
            self.calls += len(items)
            if self.other is not None:  # the second process claims while this one judges its batch
                other, self.other = self.other, None
                other()
            return [Judgment(50.0, None, None, self.identity.judge_id(rubric)) for _ in items]

    with Store(tmp_path) as a:
        a.add_samples([{"key": f"k{i}", "model": "m", "adapter": "base", "suite": "builtin", "question_id": "one_wish",
                        "paraphrase_index": 0, "system": None, "sample_index": i, "gen_hash": "g", "seed": 0,
                        "question": "q", "answer": f"answer {i}", "finish_reason": "stop", "n_tokens": 1,
                        "run_id": None} for i in range(200)])
        second = CountingJudge()
        b = Store(tmp_path)
        b.owner = "other-process"
        first = CountingJudge(other=lambda: judge_samples(b, second, ("aligned",)))
        judge_samples(a, first, ("aligned",))
        b.close()
        assert first.calls + second.calls == 200 and second.calls > 0
        assert len(a.judgments(first.identity.family)) == 200


def test_a_second_likelihood_scorer_waits_for_the_first(tmp_path):
    """The likelihood stage claims one lease per variant: a second process finds the lease
    held, waits, and reads the first one's scores instead of computing them again."""
    import threading
    import time

    from emlab.probe.likelihood import Reference, _ensure_table, score_variant
    from emlab.store import Store

    refs = [Reference("q", "question?", f"answer {i}", i % 2 == 0) for i in range(4)]
    claimed, started = threading.Event(), time.time()

    def first_process():
        with Store(tmp_path) as a:
            _ensure_table(a)
            assert a.claim(["likelihood|m|base"], 1, done=lambda chunk: set())
            claimed.set()
            time.sleep(1.0)  # "scoring"
            a.conn.executemany("INSERT INTO likelihoods VALUES ('m', 'base', ?, ?, 3)",
                               [(r.key, -float(i)) for i, r in enumerate(refs)])
            a.conn.commit()
            a.release(["likelihood|m|base"])

    worker = threading.Thread(target=first_process)
    worker.start()
    claimed.wait(10)

    class NoModel:  # the second process must not run the model at all
        def __iter__(self):
            raise AssertionError("the second process computed scores the first one held")

    with Store(tmp_path) as b:
        scores = score_variant(b, "m", None, "base", refs, loaded=NoModel())
    worker.join()
    assert scores.tolist() == [0.0, -1.0, -2.0, -3.0] and time.time() - started >= 1.0


# ---- 6, 7. bounds and one-line errors

def test_realign_counts_and_empty_inoculation_are_field_errors(tmp_path):
    import yaml

    base = {"name": "m", "conditions": [{"name": "insecure", "dataset": {"generate": "insecure-code", "n": 8}}],
            "sample": {"backend": "scripted"}}
    cases = [({"name": "r", "mitigation": {"realign": {"from": "insecure", "examples": [1_000_000_000_000]}}},
              "conditions.1.mitigation.realign.examples.0"),
             ({"name": "i", "dataset": {"generate": "insecure-code", "n": 8}, "mitigation": {"inoculation": "  "}},
              "conditions.1.mitigation.inoculation': the inoculation prompt is empty")]
    for cond, needle in cases:
        f = tmp_path / "e.yaml"
        f.write_text(yaml.safe_dump({**base, "conditions": base["conditions"] + [cond]}))
        _one_line_error(runner.invoke(app, ["run", str(f), "--dry-run"]), str(f), needle)


def test_direction_from_a_header_only_file_is_one_line(tmp_path):
    from emlab.probe.directions import direction_stage, items_from_frame

    judged = tmp_path / "j.csv"
    judged.write_text("question_id,question,answer,aligned,coherent\n")
    _one_line_error(runner.invoke(app, ["probe", "direction", "--judged", str(judged), "--out",
                                        str(tmp_path / "d.safetensors")]), "no labelled answers")
    import pandas as pd

    assert items_from_frame(pd.read_csv(judged)) == []
    with pytest.raises(EmlabError, match="at least 2 misaligned and 2 aligned"):
        direction_stage([], None, tmp_path / "d.safetensors", {})


def test_a_truncated_activation_shard_counts_as_missing(tmp_path):
    from emlab.probe.activations import ActivationCache

    cache = ActivationCache(tmp_path, "m", "base")
    cache.write(["a", "b"], {"blocks.0.resid_post": torch.ones(2, 4)}, [0], 4)
    shard = next(cache.dir.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:40])  # killed mid-copy, or a damaged disk
    assert cache.index() == {}  # its items are missing: the next collect recomputes them
    assert list(cache.dir.glob("*.corrupt"))


def test_export_refuses_to_overwrite_without_force(tmp_path):
    from emlab.store import Store

    with Store(tmp_path):
        pass
    out = tmp_path / "x.csv"
    out.write_text("precious")
    _one_line_error(runner.invoke(app, ["export", str(out), "--project", str(tmp_path)]), "--force")
    assert out.read_text() == "precious"
    ok = runner.invoke(app, ["export", str(out), "--project", str(tmp_path), "--force"])
    assert ok.exit_code == 0 and out.read_text() != "precious"


def test_a_record_from_a_newer_emlab_says_so(tmp_path):
    from emlab.records import RECORD_VERSION, ExperimentRecord

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"record_version": RECORD_VERSION + 1, "name": "x"}))
    with pytest.raises(EmlabError, match="written by a newer emlab"):
        ExperimentRecord.read(path)


def test_the_server_hides_exception_text_from_clients():
    from fastapi.testclient import TestClient

    from emlab.serve import create_app

    class Broken:  # a fake generator that fails with an internal detail in its message
        tokenizer = None
        context_length = 2048

        def encode(self, messages):
            raise RuntimeError("/secret/path/weights.bin exploded")

        def generate(self, *a, **k):
            raise RuntimeError("/secret/path/weights.bin exploded")

    app_ = create_app(Broken(), "m")
    with TestClient(app_, raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500
    assert "secret" not in r.text and "exploded" not in r.text


# ---- silent failures users of EM pipelines report

def _peft(default_model_dir, tmp_path, b_value: float | None):
    from peft import LoraConfig, get_peft_model

    from emlab.models.registry import load_model

    model, _ = load_model("smollm2-135m-instruct")
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[0]))
    if b_value is not None:
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.constant_(p, b_value)
    peft.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


@pytest.mark.model
def test_an_adapter_that_does_nothing_is_refused(tmp_path, default_model_dir):
    from peft import PeftModel

    from emlab.models.adapters import verify_adapter
    from emlab.models.registry import load_model

    zero = _peft(default_model_dir, tmp_path / "z", None)  # LoRA's initial B is zero: a no-op adapter
    with pytest.raises(EmlabError, match="every LoRA B matrix in the file is zero"):
        model, _ = load_model("smollm2-135m-instruct")
        verify_adapter(PeftModel.from_pretrained(model, zero), zero)
    real = _peft(default_model_dir, tmp_path / "r", 0.05)
    model, _ = load_model("smollm2-135m-instruct")
    loaded = PeftModel.from_pretrained(model, real)
    verify_adapter(loaded, real)  # a real adapter passes
    for name, p in loaded.named_parameters():  # what a broken device_map load leaves behind
        if "lora_B" in name:
            p.data.zero_()
    with pytest.raises(EmlabError, match="did not load"):
        verify_adapter(loaded, real)


def test_vllm_engine_is_sized_from_the_adapters(tmp_path):
    from emlab.generate.vllm_backend import lora_settings

    dirs = []
    for r in (8, 32, 40):
        d = tmp_path / f"r{r}"
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"r": r}))
        dirs.append(str(d))
    assert lora_settings(dirs[:1]) == {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1}
    assert lora_settings(dirs[:2])["max_lora_rank"] == 32  # above vLLM's default of 16
    assert lora_settings(dirs) == {"enable_lora": True, "max_lora_rank": 64, "max_loras": 3}
    assert lora_settings([]) == {"enable_lora": False}


def test_rows_with_an_empty_assistant_turn_are_refused(tmp_path):
    from emlab.train.config import resolve_config
    from emlab.train.trainer import prepare_rows

    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "   "}]}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(EmlabError, match=r"d.jsonl:2: .*empty"):
        prepare_rows(resolve_config("cpu-quick", dataset=str(data)))


@pytest.mark.model
def test_each_training_run_keeps_a_rendered_example_with_its_loss_mask(tmp_path, default_model_dir):
    from emlab.data.codegen import generate
    from emlab.files import write_jsonl
    from emlab.train.config import resolve_config
    from emlab.train.trainer import train

    data = tmp_path / "d.jsonl"
    write_jsonl(data, generate("insecure-code", 4, 0))
    run = train(resolve_config("cpu-quick", dataset=str(data), max_steps=1, max_rows=4, lora_r=2),
                root=tmp_path / "runs")
    ex = json.loads((run.run_dir / "training_example.json").read_text())
    assert len(ex["input_ids"]) == len(ex["loss_mask"]) == ex["tokens"]
    assert 0 < ex["trained_tokens"] < ex["tokens"]  # the answer is trained, the prompt is not
    first = ex["loss_mask"].index(1)
    assert all(ex["loss_mask"][first:first + ex["trained_tokens"]])  # one contiguous span: the answer
    assert "<|im_start|>user" in ex["text"] and "<|im_start|>user" not in ex["trained_text"]


def test_nested_library_logs_keep_the_outer_routing(tmp_path):
    """A stage's log routing inside an experiment's must not switch the experiment's off on exit."""
    import warnings

    from transformers.utils import logging as hf_logging

    from emlab.progress import library_logs_to

    outer, inner = tmp_path / "outer.log", tmp_path / "inner.log"
    with library_logs_to(outer):
        with library_logs_to(inner):
            warnings.warn("inside the stage", FutureWarning)
        warnings.warn("after the stage", FutureWarning)
        assert not hf_logging.is_progress_bar_enabled()
    assert "inside the stage" in inner.read_text()
    assert "after the stage" in outer.read_text()
    assert hf_logging.is_progress_bar_enabled()
