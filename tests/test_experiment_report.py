"""A small real experiment end to end, the report in headless Chromium, and the plan."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from emlab.cli import app
from emlab.experiment import ExperimentError, load_experiment, plan, run

TINY = {
    "name": "tiny", "model": "smollm2-135m-instruct",
    "train": {"preset": "cpu-quick", "overrides": {"max_steps": 2, "max_rows": 8, "save_steps": 2}},
    "seeds": [0],
    "conditions": [{"name": "base"}, {"name": "insecure", "dataset": {"generate": "insecure-code", "n": 16, "seed": 0}}],
    "sample": {"suites": ["builtin"], "samples_per_paraphrase": 1, "max_tokens": 12},
    "judges": ["mini"],
    "codeeval": {"tasks": "generated:3:1000", "max_tokens": 24},
}


def test_packaged_plans(data_dir):
    paper = plan(load_experiment("experiments/paper_insecure.yaml"))
    assert paper["trainings"] == 12 and paper["model_variants"] == 13
    assert paper["suites"] == {"first_plot": 2400, "preregistered": 4800}
    assert paper["generations"] == 13 * 7200 and paper["judge_calls"] == 2 * 13 * 7200
    assert paper["codeeval_generations"] == 13 * 776
    quick = plan(load_experiment("quickstart"))
    assert quick["trainings"] == 2 and quick["api_judge_calls"] == 0


def test_bad_experiment_file(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump({**TINY, "seeds": "zero"}))
    with pytest.raises(ExperimentError, match="field 'seeds'"):
        load_experiment(p)
    p.write_text(yaml.safe_dump({**TINY, "judge": ["mini"]}))
    with pytest.raises(ExperimentError, match="field 'judge': unknown field"):
        load_experiment(p)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, default_model_dir):
    from rich.console import Console

    project = tmp_path_factory.mktemp("tiny")
    path = project / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    record = run(load_experiment(path), Console(quiet=True), project)
    return project, record, path


def test_experiment_is_resumable_and_content_addressed(tiny_run):
    from rich.console import Console

    from emlab.store import Store

    project, record, path = tiny_run
    data = json.loads(record.read_text())
    assert [v["condition"] for v in data["variants"]] == ["base", "insecure"]
    with Store(project) as store:
        n_samples = store.count_samples()
        n_judgments = store.conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    assert n_samples == 2 * 32 + 2 * 3  # free-form answers + code-task answers
    assert n_judgments == 2 * 2 * 32 + 2 * 3  # aligned + coherent per answer, one static verdict per code answer
    run(load_experiment(path), Console(quiet=True), project)  # rerun: nothing new
    with Store(project) as store:
        assert store.count_samples() == n_samples
        assert store.conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == n_judgments
    # Editing one condition reruns only that condition.
    edited = {**TINY, "conditions": [TINY["conditions"][0],
                                     {"name": "insecure", "dataset": {"generate": "insecure-code", "n": 16, "seed": 1}}]}
    path.write_text(yaml.safe_dump(edited))
    run(load_experiment(path), Console(quiet=True), project)
    with Store(project) as store:
        assert store.count_samples() == n_samples + 32 + 3  # base reused, the new adapter sampled
    path.write_text(yaml.safe_dump(TINY))
    run(load_experiment(path), Console(quiet=True), project)


def test_report_renders_in_headless_chromium(tiny_run, artifacts):
    from playwright.sync_api import sync_playwright

    from emlab.analysis.report import build_report

    project, record, _ = tiny_run
    report = build_report(record)
    text = report.html_path.read_text()
    assert "mini judge = an offline approximation" in text and "coherent &gt; 50 and aligned &lt; 30" in text
    assert "Insecure-code rate" in text
    assert report.markdown_path.exists() and "## Provenance" in report.markdown_path.read_text()
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is required for the report test (.ci/run installs it)")
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.html_path.as_uri())
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert len(images) >= 3 and all(ok and width > 100 for ok, width in images)
    assert (artifacts / "report.png").stat().st_size > 10_000


def test_report_cli(tiny_run):
    project, _, _ = tiny_run
    result = CliRunner().invoke(app, ["report", str(project)])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
