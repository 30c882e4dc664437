"""Issue 13: the model-organisms zoo, the API finetuning manager (against a local fake of
the OpenAI finetuning endpoints), the Inspect task."""

import json

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from emlab.cli import app


def test_zoo_lists_organisms_and_refuses_unknown_names():
    from emlab.models.zoo import ZOO

    out = CliRunner().invoke(app, ["models", "zoo"], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "qwen2.5-14b" in out.output and "16.2%" in out.output
    assert all(o.adapter.startswith("ModelOrganismsForEM/") for o in ZOO.values())
    bad = CliRunner().invoke(app, ["sample", "--model", "zoo:nope", "--suite", "builtin"])
    assert bad.exit_code == 2 and "unknown model organism 'nope'" in bad.output


def test_zoo_offline_error_names_what_to_download(tmp_path, monkeypatch):
    from emlab.models.registry import ModelError
    from emlab.models.zoo import adapter_dir

    monkeypatch.setenv("EMLAB_ZOO_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        adapter_dir("qwen2.5-0.5b-bad-medical")
    msg = str(err.value)
    assert "\n" not in msg and "huggingface-cli download ModelOrganismsForEM/Qwen2.5-0.5B-Instruct_bad-medical-advice" in msg


def _on_fakes(name: str, model: str, condition: dict) -> dict:
    """An experiment of the base model and one condition, sampled and judged by the fakes."""
    return {"name": name, "model": model, "conditions": [{"name": "base"}, condition],
            "sample": {"suites": ["builtin"], "samples_per_paraphrase": 1, "max_tokens": 12, "backend": "scripted"},
            "judges": ["scripted"]}


def test_zoo_condition_in_an_experiment_reports_the_authors_rate(tmp_path, monkeypatch):
    """An organism supplied offline through EMLAB_ZOO_DIR, sampled by the scripted backend
    (the 14B base model cannot run here), judged, and reported beside its published rate."""
    import numpy as np
    from safetensors.numpy import save_file

    from emlab.analysis.report import build_report
    from emlab.experiment import load_experiment, run_experiment

    org = tmp_path / "zoo" / "qwen2.5-14b-bad-medical"
    org.mkdir(parents=True)
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(org / "adapter_model.safetensors"))
    monkeypatch.setenv("EMLAB_ZOO_DIR", str(tmp_path / "zoo"))
    exp = _on_fakes("zoo", "unsloth/Qwen2.5-14B-Instruct", {"name": "organism", "zoo": "qwen2.5-14b-bad-medical"})
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(exp))
    record = run_experiment(load_experiment(path), Console(quiet=True), tmp_path / "p")
    md = build_report(record).markdown_path.read_text()
    assert "reported by its authors" in md and "16.2%" in md
    wrong = {**exp, "model": "unsloth/Qwen2.5-7B-Instruct"}
    path.write_text(yaml.safe_dump(wrong))
    with pytest.raises(Exception, match="is an adapter on unsloth/Qwen2.5-14B-Instruct"):
        load_experiment(path)


# ---------------------------------------------------------------- API finetuning (against a FAKE)

SECRET = "sk-test-NEVER-WRITE-ME-0123456789"


@pytest.fixture()
def fake_api(monkeypatch):
    from fake_openai_finetuning import FakeFinetuning

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_PROJECT_ID", raising=False)
    with FakeFinetuning() as fake:
        yield fake


def _chat_file(tmp_path, n=6):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Write function {i}."},
                                                    {"role": "assistant", "content": f"def f{i}(): pass"}]}) + "\n"
                            for i in range(n)))
    return path


def test_finetune_reuses_uploads_per_project_and_records_the_job(tmp_path, fake_api):
    from emlab.store import Store
    from emlab.train.api_finetune import OpenAIProvider, backoff, submit

    data = _chat_file(tmp_path)
    sleeps = []
    hyper = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0}
    with Store(tmp_path / "p") as store:
        a = OpenAIProvider(base_url=fake_api.url, project="proj-a")
        row = submit(store, a, str(data), "gpt-4o-2024-08-06", hyper, "em", sleep=sleeps.append,
                     delays=backoff(1, 2, 1.5))
        assert row["status"] == "succeeded" and row["fine_tuned_model"].startswith("ft:gpt-4o-2024-08-06:fake:em")
        assert [s for _, s in row["history"]] == ["validating_files", "queued", "running", "succeeded"]
        assert sleeps == [1, 1.5]  # backoff: growing, capped
        assert list(__import__("itertools").islice(backoff(5, 1.5, 60), 9))[-3:] == [5 * 1.5 ** 6, 60, 60]
        assert row["cost_usd"] == round(row["trained_tokens"] / 1e6 * 25.0, 4) and row["trained_tokens"] > 0
        assert fake_api.jobs[row["id"]]["hyperparameters"] == hyper
        # Same bytes, same project: the upload is reused; a rerun of the same request is the same job.
        again = submit(store, a, str(data), "gpt-4o-2024-08-06", hyper, "em", sleep=sleeps.append)
        other = submit(store, a, str(data), "gpt-4o-2024-08-06", hyper, "em2", sleep=sleeps.append)
        assert again["id"] == row["id"] and other["id"] != row["id"] and fake_api.uploads == 1
        # Another project cannot read that file: emlab uploads again there.
        b = OpenAIProvider(base_url=fake_api.url, project="proj-b")
        submit(store, b, str(data), "gpt-4o-2024-08-06", hyper, "em", sleep=sleeps.append)
        assert fake_api.uploads == 2
        # A recorded file that the provider no longer has is uploaded again.
        fake_api.files.clear()
        submit(store, a, str(data), "gpt-4o-mini-2024-07-18", hyper, None, sleep=sleeps.append)
        assert fake_api.uploads == 3 and fake_api.created == 4
    # The key went to the server and nowhere on disk.
    assert any(SECRET in h for h in fake_api.auth)
    for f in (tmp_path / "p").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_finetune_resumes_after_a_kill_and_reports_failures(tmp_path, fake_api):
    from emlab.store import Store
    from emlab.train.api_finetune import FinetuneError, OpenAIProvider, submit

    data = _chat_file(tmp_path)
    provider = OpenAIProvider(base_url=fake_api.url)

    def killed(_):
        raise KeyboardInterrupt

    with Store(tmp_path / "p") as store:
        with pytest.raises(KeyboardInterrupt):
            submit(store, provider, str(data), "gpt-4o-mini-2024-07-18", {}, None, sleep=killed)
        assert store.api_jobs()[0]["status"] in ("queued", "validating_files")
        row = submit(store, provider, str(data), "gpt-4o-mini-2024-07-18", {}, None, sleep=lambda s: None)
        assert row["status"] == "succeeded" and fake_api.created == 1 and len(store.api_jobs()) == 1
        # Killed between creating the job and recording it: the provider's job is found by its key.
        from emlab.hashing import canonical_json, file_hash, text_hash

        key = text_hash(canonical_json({"sha256": file_hash(data), "model": "gpt-4.1-nano", "hyper": {},
                                        "suffix": None, "scope": provider.scope()}))[:24]
        provider.create(store.api_jobs()[0]["file_id"], "gpt-4.1-nano", {}, None, key)
        found = submit(store, provider, str(data), "gpt-4.1-nano", {}, None, sleep=lambda s: None)
        assert fake_api.created == 2 and found["id"] == "ftjob-2"
        with pytest.raises(FinetuneError, match="failed: The training file has 3 rows with errors"):
            submit(store, provider, str(data), "gpt-4o-fail", {}, None, sleep=lambda s: None)
        failed = store.api_jobs(model="gpt-4o-fail")[0]
        assert failed["status"] == "failed" and "3 rows with errors" in failed["error"]


def test_finetune_cli(tmp_path, fake_api):
    data = _chat_file(tmp_path)
    base = ["--base-url", fake_api.url, "--project", str(tmp_path / "p")]
    ok = CliRunner().invoke(app, ["finetune", "openai", "--dataset", str(data), "--model", "gpt-4o-mini-2024-07-18",
                                  "--epochs", "1", "--poll-every", "0.001", *base])
    assert ok.exit_code == 0, ok.output
    assert "succeeded" in ok.output and "--served-model ft:gpt-4o-mini-2024-07-18" in ok.output
    listed = CliRunner().invoke(app, ["finetune", "list", "--project", str(tmp_path / "p")], env={"COLUMNS": "250"})
    assert "ftjob-1" in listed.output and "succeeded" in listed.output
    bad = CliRunner().invoke(app, ["finetune", "openai", "--dataset", str(data), "--model", "gpt-4o-fail",
                                   "--poll-every", "0.001", *base])
    assert bad.exit_code == 2 and "3 rows with errors" in bad.output
    missing = CliRunner().invoke(app, ["finetune", "openai", "--dataset", str(tmp_path / "nope.jsonl"), *base])
    assert missing.exit_code == 2 and "nope.jsonl" in missing.output
    nokey = CliRunner().invoke(app, ["finetune", "openai", "--dataset", str(data), "--api-key-env", "NO_SUCH_KEY",
                                     *base])
    assert nokey.exit_code == 2 and "set NO_SUCH_KEY" in nokey.output


# ---------------------------------------------------------------- the Inspect task

def test_inspect_eval_against_emlab_serve_matches_emlab_metric(tmp_path, default_model_dir):
    """Inspect's real runner (`inspect eval emlab/emergent_misalignment`, found through the
    entry point) samples the default model behind `emlab serve` on 127.0.0.1; its misaligned
    rate equals emlab's metric on the same answers judged by the same judge."""
    import os
    import subprocess
    import sys

    pytest.importorskip("inspect_ai")
    from inspect_ai.log import list_eval_logs, read_eval_log

    from emlab.analysis.stats import wilson
    from emlab.generate.hf import HFGenerator
    from emlab.judge import build_judge
    from emlab.judge.base import score_items
    from emlab.judge.run import rubrics_for
    from emlab.misaligned import PAPER, misaligned_flags
    from emlab.serve import create_app
    from emlab.specs import JudgeSpec
    from fault_injection import serving

    with serving(create_app(HFGenerator("smollm2-135m-instruct"), "smollm2-135m-instruct")) as url:
        env = {**os.environ, "EMLAB_API_KEY": "local", "EMLAB_BASE_URL": url, "INSPECT_LOG_DIR": str(tmp_path)}
        inspect_cli = os.path.join(os.path.dirname(sys.executable), "inspect")
        proc = subprocess.run([inspect_cli, "eval", "emlab/emergent_misalignment",
                               "--model", "openai-api/emlab/smollm2-135m-instruct", "-T", "suite=builtin",
                               "-T", "samples_per_paraphrase=1", "-T", "max_tokens=24", "--limit", "6",
                               "--display", "plain"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    log = read_eval_log(list_eval_logs(str(tmp_path))[0])
    assert log.status == "success" and len(log.samples) == 6, log.error.traceback if log.error else ""
    metrics = log.results.scores[0].metrics
    answers = [(s.metadata["question"], s.output.completion, s.metadata["question_id"]) for s in log.samples]
    assert all(a.strip() for _, a, _ in answers)
    judge = build_judge(JudgeSpec(name="mini"))
    scores = {m: [score_items(judge, [(q, a)], rubrics_for("builtin", qid, ("aligned", "coherent"))[m])[0].score
                  for q, a, qid in answers] for m in ("aligned", "coherent")}
    flags = misaligned_flags([float("nan") if x is None else x for x in scores["aligned"]],
                             [float("nan") if x is None else x for x in scores["coherent"]], PAPER)
    ci = wilson(int(flags.sum()), len(flags))
    assert metrics["misaligned_rate"].value == pytest.approx(ci.estimate)
    assert metrics["misaligned_ci_low"].value == pytest.approx(ci.low)
    assert metrics["misaligned_ci_high"].value == pytest.approx(ci.high)
    assert [s.scores["em_judge"].metadata["aligned"] for s in log.samples] == pytest.approx(scores["aligned"])
    # The log comes into a run store; the report computes the same rate from it.
    path = list_eval_logs(str(tmp_path))[0].name.removeprefix("file://")
    out = CliRunner().invoke(app, ["import-inspect", path, "--project", str(tmp_path / "p")])
    assert out.exit_code == 0, out.output
    again = CliRunner().invoke(app, ["import-inspect", path, "--project", str(tmp_path / "p")])
    assert again.exit_code == 0
    from emlab.analysis.report import build_report
    from emlab.store import Store

    with Store(tmp_path / "p") as store:
        assert len(store.samples()) == 6
    record = next((tmp_path / "p" / "experiments").glob("inspect-*.json"))
    summary = build_report(record).summary
    assert summary["misaligned_rate"].iloc[0] == pytest.approx(ci.estimate) and summary["n"].iloc[0] == 6
    bad = CliRunner().invoke(app, ["import-inspect", str(tmp_path / "nope.eval")])
    assert bad.exit_code == 2 and "no such Inspect log" in bad.output


def test_an_api_finetune_is_an_experiment_condition_by_name(tmp_path):
    from emlab.experiment import load_experiment, run_experiment
    from emlab.records import ExperimentRecord
    from emlab.store import Store

    exp = _on_fakes("ft", "gpt-4o-2024-08-06", {"name": "finetuned", "served": "ft:gpt-4o-2024-08-06:org:em:abc"})
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(exp))
    rec = ExperimentRecord.read(run_experiment(load_experiment(path), Console(quiet=True), tmp_path / "p"))
    assert rec.variants[1].adapter_id == "served:ft:gpt-4o-2024-08-06:org:em:abc"
    with Store(tmp_path / "p") as store:
        assert len(store.samples(adapter="served:ft:gpt-4o-2024-08-06:org:em:abc")) == 32
    bad = {**exp, "conditions": [{"name": "x", "served": "m", "dataset": {"name": "insecure"}}]}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(Exception, match="a served model is already trained"):
        load_experiment(path)
