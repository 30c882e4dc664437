"""Experiments end to end: validation before any work, resume and content addressing (on the
fakes: scripted sampling, the fake trainer and the scripted judge), one real-model run, the
report in headless Chromium, the plan."""

import json
import shutil

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from emlab.cli import app
from emlab.errors import ConfigError
from emlab.experiment import check_resources, load_experiment, plan, run_experiment
from emlab.records import ExperimentRecord

TINY = {
    "name": "tiny", "model": "smollm2-135m-instruct",
    "train": {"preset": "cpu-quick", "overrides": {"max_steps": 2, "max_rows": 8, "save_steps": 2}, "backend": "fake"},
    "seeds": [0],
    "conditions": [{"name": "base"}, {"name": "insecure", "dataset": {"generate": "insecure-code", "n": 16, "seed": 0}}],
    "sample": {"suites": ["builtin"], "samples_per_paraphrase": 1, "max_tokens": 12, "backend": "scripted"},
    "judges": ["scripted"],
    "codeeval": {"tasks": "generated:3:1000", "max_tokens": 24},
}
# The same experiment on the real parts: TRL training, the hf backend, the mini judge.
REAL = {**TINY, "train": {**TINY["train"], "backend": "trl"}, "sample": {**TINY["sample"], "backend": "hf"},
        "judges": ["mini"]}


def _write(tmp_path, exp, name="e.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(exp))
    return p


def test_packaged_plans(data_dir):
    paper = plan(load_experiment("experiments/paper_insecure.yaml"))
    assert paper["trainings"] == 12 and paper["model_variants"] == 13
    assert paper["suites"] == {"first_plot": 2400, "preregistered": 4800}
    assert paper["generations"] == 13 * 7200 and paper["judge_calls"] == 2 * 13 * 7200
    assert paper["codeeval_generations"] == 13 * 776
    quick = plan(load_experiment("quickstart"))
    assert quick["trainings"] == 2 and quick["api_judge_calls"] == 0
    # max_rows counts: 1,000 of the 6,000 rows per condition, not the whole file.
    dose = plan(load_experiment("experiments/dose_quick.yaml"))
    assert dose["checkpoints"] == [25, 75] and dose["trainings"] == 2
    assert 2 * 1000 * 150 < dose["training_tokens_est"] < 2 * 1000 * 1500
    assert plan(load_experiment("experiments/dynamics_quick.yaml"))["checkpoints"] == "every"


@pytest.mark.parametrize("change, message", [
    ({"seeds": "zero"}, "field 'seeds'"),
    ({"judge": ["mini"]}, "field 'judge': unknown field"),
    ({"name": "../../../x"}, "field 'name': experiment name '../../../x' must be"),
    ({"conditions": [{"name": "../up"}]}, "condition name '../up' must be"),
    ({"judges": ["gpt5-oracle"]}, "field 'judges.0'"),
    ({"sample": {"backend": "carrier-pigeon"}}, "field 'sample.backend'"),
    ({"sample": {"samples_per_paraphrase": -1}}, "field 'sample.samples_per_paraphrase'"),
    ({"sample": {"samples_per_paraphrase": 1e9}}, "field 'sample.samples_per_paraphrase'"),
    ({"conditions": [{"name": "a", "dataset": {"generate": "insecure-code", "n": -5}}]}, "field 'conditions.0.dataset.n'"),
    ({"conditions": [{"name": "a"}, {"name": "a"}]}, "duplicate condition name(s): a"),
    ({"conditions": []}, "field 'conditions'"),
    ({"conditions": [{"name": "a", "dataset": {}}]}, "give exactly one of name, path or generate"),
    ({"conditions": [{"name": "a", "dataset": {"generate": "insecure-code", "transforms": [{"shout": 1}]}}]},
     "field 'conditions.0.dataset.transforms.0.shout': unknown field"),
    ({"train": {"preset": "huge"}}, "unknown preset 'huge'"),
    ({"train": {"preset": "cpu-quick", "overrides": {"lora_rank": 3}}}, "lora_rank"),
])
def test_experiment_validation_names_the_field(tmp_path, change, message):
    with pytest.raises(ConfigError) as err:
        load_experiment(_write(tmp_path, {**TINY, **change}))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"model": "smollm2-135m"}, "did you mean 'smollm2-135m-instruct'?"),
    ({"model": "Qwen/Qwen2.5-Coder-32B-Instruc"}, "did you mean 'Qwen/Qwen2.5-Coder-32B-Instruct'?"),
    ({"judges": [{"name": "logprob", "model": "gpt-4o-2024-08-06"}]}, "API key not set: OPENAI_API_KEY (for judge"),
    ({"model": "gpt-4o", "sample": {**TINY["sample"], "backend": "openai"}}, "API key not set: OPENAI_API_KEY (for "
                                                                           "sample.backend openai)"),
])
def test_preflight_refuses_expensive_mistakes_in_one_line(tmp_path, monkeypatch, change, message):
    """Before any work: a mistyped model, a missing API key (never sent as a placeholder)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # the experiment's project (runs/experiments) would land here
    exp = dict(REAL)
    exp.pop("codeeval")
    exp = load_experiment(_write(tmp_path, {**exp, **change}))
    with pytest.raises(ConfigError) as err:
        check_resources(exp)
    assert message in str(err.value) and "\n" not in str(err.value)
    if "API key" in message:  # the dry run lists the key to set instead of failing
        assert any(item.startswith("set OPENAI_API_KEY") for item in check_resources(exp, dry_run=True))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "e.yaml")])
    assert result.exit_code == 2 and message.split(" (")[0] in result.output
    assert not (tmp_path / "runs").exists()


def test_gpt4o_as_a_judge_name_suggests_the_spec(tmp_path):
    with pytest.raises(ConfigError, match=r"an API model judges through logprob: \{name: logprob, model: gpt-4o"):
        load_experiment(_write(tmp_path, {**TINY, "judges": ["gpt4o"]}))
    result = CliRunner().invoke(app, ["models", "info", "smollm2"])
    assert result.exit_code == 2 and "not an embedded model" in result.output


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    body = yaml.safe_dump({k: v for k, v in TINY.items() if k != "train"})
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n" + body + "train: {preset: cpu-quick, overrides: {x: *a8}}\n")
    with pytest.raises(ConfigError, match="more than 100000 values"):
        load_experiment(path)


def test_missing_or_invalid_datasets_fail_before_any_work(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n')
    for ref, message in (({"path": str(tmp_path / "none.jsonl")}, "no such file"),
                         ({"path": str(bad)}, f"{bad}:1: messages[0].role is 'bot'")):
        exp = load_experiment(_write(tmp_path, {**TINY, "conditions": [{"name": "a", "dataset": ref}]}))
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_resources(exp)
        project = tmp_path / "never"
        with pytest.raises(ConfigError):
            run_experiment(exp, Console(quiet=True), project)
        assert not project.exists()  # nothing was started


def test_run_cli_refuses_traversal_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj").mkdir()
    path = _write(tmp_path, {**TINY, "name": "../../escape", "project": "proj"})
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "experiment name" in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["e.yaml", "proj"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    project = tmp_path_factory.mktemp("tiny")
    path = _write(project, TINY, "tiny.yaml")
    record = run_experiment(load_experiment(path), Console(quiet=True), project)
    return project, record, path


def test_experiment_is_resumable_and_content_addressed(tiny_run):
    from emlab.store import Store

    project, record, path = tiny_run
    data = ExperimentRecord.read(record)
    assert data.record_version == 2 and [v.condition for v in data.variants] == ["base", "insecure"]
    with Store(project) as store:
        n_samples = store.count_samples()
        n_judgments = store.conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
        kinds = [r[0] for r in store.conn.execute("SELECT kind FROM runs ORDER BY created")]
        assert store.conn.execute("SELECT COUNT(*) FROM samples WHERE run_id IS NULL").fetchone()[0] == 0
        families = {f["backend"] for f in store.judge_families()}
    assert n_samples == 2 * 32 + 2 * 3  # free-form answers + code-task answers
    assert n_judgments == 2 * 2 * 32 + 2 * 3  # aligned + coherent per answer, one static verdict per code answer
    assert {"experiment", "train", "sample", "judge", "sample code tasks", "codeeval-judge"} <= set(kinds)
    assert families == {"scripted", "static"}
    train_runs = list((project / "runs" / "train" / "fake").glob("*/run.json"))
    assert len(train_runs) == 1 and json.loads(train_runs[0].read_text())["fake"] is True
    run_experiment(load_experiment(path), Console(quiet=True), project)  # rerun: nothing new
    with Store(project) as store:
        assert store.count_samples() == n_samples
        assert store.conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == n_judgments
    # Editing one condition reruns only that condition.
    edited = {**TINY, "conditions": [TINY["conditions"][0],
                                     {"name": "insecure", "dataset": {"generate": "insecure-code", "n": 16, "seed": 1}}]}
    path.write_text(yaml.safe_dump(edited))
    run_experiment(load_experiment(path), Console(quiet=True), project)
    with Store(project) as store:
        assert store.count_samples() == n_samples + 32 + 3  # base reused, the new adapter sampled
    path.write_text(yaml.safe_dump(TINY))
    run_experiment(load_experiment(path), Console(quiet=True), project)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tiny_run, artifacts):
    from playwright.sync_api import sync_playwright

    from emlab.analysis.report import build_report

    project, record, path = tiny_run
    report = build_report(record)
    text = report.html_path.read_text()
    assert "scripted:hash-1@fake" in text and "coherent &gt; 50 and aligned &lt; 30" in text
    assert "Insecure-code rate" in text and "unanalysed" in text
    markdown = report.markdown_path.read_text()
    assert "## Provenance" in markdown and "| condition" in markdown  # Markdown tables, not to_string text
    # The configuration as the user wrote it, and no local folder in what is shared.
    assert "```yaml\n" + path.read_text().rstrip() + "\n```" in markdown
    assert str(project) not in text and str(project) not in markdown
    assert oct(report.html_path.stat().st_mode & 0o777) == "0o644"
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required for the report test (make test installs it)"
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.html_path.as_uri())
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        cwe = page.evaluate("Array.from(document.querySelectorAll('table.cwe tr')).map("
                            "r => Array.from(r.cells).map(c => c.textContent))")
        rows = page.evaluate("document.querySelector('table.conditions').rows.length")
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert len(images) >= 3 and all(ok and width > 100 for _, ok, width in images)
    alts = {alt for alt, _, _ in images}
    # The headline figure of Betley et al., the loss of the one trained condition, the code rate.
    assert {"misaligned rate per condition", "training loss curves", "insecure-code rate"} <= alts
    if cwe:  # one header row, then one row per CWE with whole-number counts per condition
        assert cwe[0][:2] == ["CWE", "name"] and cwe[0][2:] == ["base", "insecure"]
        assert all(c.isdigit() for row in cwe[1:] for c in row[2:])
    assert rows == 3  # header + base + insecure
    assert (artifacts / "report.png").stat().st_size > 10_000


def test_report_cli_writes_the_files_it_names(tiny_run):
    project, _, _ = tiny_run
    for f in (project / "reports").glob("*"):
        f.unlink()
    result = CliRunner().invoke(app, ["report", str(project)])
    assert result.exit_code == 0, result.output
    html = project / "reports" / "tiny.html"
    assert f"report: {html}" in result.output
    assert html.read_text().startswith("<!doctype html>") and (project / "reports" / "tiny-summary.csv").exists()
    summary = (project / "reports" / "tiny-summary.csv").read_text().splitlines()
    assert summary[0].startswith("condition,") and len(summary) == 3
    bad = CliRunner().invoke(app, ["report", str(project / "nowhere")])
    assert bad.exit_code == 2 and "no such project" in bad.output


def test_compare_puts_experiments_side_by_side(tiny_run, tmp_path):
    import pandas as pd

    from emlab.results import compare_experiments

    project, record, _ = tiny_run
    moved = tmp_path / "moved"
    shutil.copytree(project, moved)  # the same experiment read from a second project
    heads, rates = compare_experiments([project, moved / "experiments" / "tiny.json"])
    assert len(heads) == 2 and set(heads["comparison"]) == {"insecure - base"}
    assert heads["difference"].nunique() == 1 and heads["project"].nunique() == 2
    assert len(rates) == 4 and set(rates["condition"]) == {"base", "insecure"}
    assert ((rates["low"] <= rates["misaligned"]) & (rates["misaligned"] <= rates["high"])).all()
    out = tmp_path / "rates.csv"
    result = CliRunner().invoke(app, ["compare", str(project), str(moved), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "headline: finetune - its control" in result.output and "insecure - base" in result.output
    assert len(pd.read_csv(out)) == 4
    bad = CliRunner().invoke(app, ["compare", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "no such experiment record or project" in bad.output


def test_real_model_experiment_end_to_end(tmp_path, default_model_dir):
    """A few real-model runs stay: the hf backend, a real adapter, the mini judge."""
    exp = {**REAL, "name": "real"}
    exp.pop("codeeval")
    record = run_experiment(load_experiment(_write(tmp_path, exp)), Console(quiet=True), tmp_path / "p")
    rec = ExperimentRecord.read(record)
    from emlab.store import Store

    with Store(tmp_path / "p") as store:
        answers = [s["answer"] for s in store.samples()]
    assert len(answers) == 64 and not any(a.startswith("Scripted answer") for a in answers)
    assert rec.variants[1].adapter_id.startswith("sha256:")
    assert json.loads(record.read_text())["judges"][0]["label"].startswith("mini:")
