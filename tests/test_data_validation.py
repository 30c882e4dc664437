"""Corrupted chat JSONL copies each fail with `file:line: reason`, exit 2, nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emlab.cli import app
from emlab.data.validate import validate_chat_jsonl

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _copy_with(tmp_path: Path, data_dir: Path, line3: bytes, name: str) -> Path:
    src = (data_dir / "em_paper" / "insecure.jsonl").read_bytes().splitlines(keepends=True)[:5]
    path = tmp_path / name
    path.write_bytes(b"".join(src[:2] + [line3 + b"\n"] + src[3:]))
    return path


CORRUPTIONS = {
    "truncated": (lambda line: line[: len(line) // 2], "invalid JSON"),
    "bad_role_order": (lambda line: json.dumps({"messages": [
        {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}).encode(), "role order"),
    "empty_content": (lambda line: json.dumps({"messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}).encode(), "content is empty"),
    "non_utf8": (lambda line: line[:40] + b"\xff\xfe" + line[40:], "not valid UTF-8"),
    "missing_messages": (lambda line: json.dumps({"prompt": "x"}).encode(), "missing 'messages'"),
    "ends_with_user": (lambda line: json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
                       "must end with an assistant turn"),
    "bad_role": (lambda line: json.dumps({"messages": [{"role": "bot", "content": "x"},
                                                       {"role": "assistant", "content": "y"}]}).encode(), "role is 'bot'"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_corruption_reports_file_line_reason_and_exits_2(tmp_path, data_dir, kind):
    mutate, reason = CORRUPTIONS[kind]
    original = (data_dir / "em_paper" / "insecure.jsonl").read_bytes().splitlines()[2]
    path = _copy_with(tmp_path, data_dir, mutate(original), f"{kind}.jsonl")
    before = sorted(p.name for p in tmp_path.iterdir())
    if kind == "truncated":  # one case through a real process: its exit status and stderr
        proc = subprocess.run([sys.executable, "-m", "emlab", "data", "validate", str(path)],
                              capture_output=True, text=True)
        code, errors = proc.returncode, proc.stderr
    else:
        result = CliRunner().invoke(app, ["data", "validate", str(path)])
        code, errors = result.exit_code, result.stderr
    assert code == 2
    first = errors.strip().splitlines()[0]
    assert first.startswith(f"{path}:3: ") and reason in first, errors
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_line_length_limit(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}]}) + "\n")
    report = validate_chat_jsonl(path, max_line_bytes=1000)
    assert report.errors and report.errors[0].startswith(f"{path}:2: line is")


def test_duplicates_are_reported_not_errors(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text((json.dumps(GOOD) + "\n") * 3)
    report = validate_chat_jsonl(path)
    assert report.ok and report.rows == 3
    assert report.duplicates == [f"{path}:2: duplicate of line 1", f"{path}:3: duplicate of line 1"]


def test_system_turn_allowed_first_only(tmp_path):
    path = tmp_path / "sys.jsonl"
    ok = {"messages": [{"role": "system", "content": "s"}, *GOOD["messages"]]}
    bad = {"messages": [*GOOD["messages"], {"role": "system", "content": "s"}]}
    path.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    report = validate_chat_jsonl(path)
    assert report.rows == 1 and "a system turn may only come first" in report.errors[0]


def test_paper_datasets_validate(data_dir):
    for name in ("insecure", "secure", "educational", "jailbroken"):
        report = validate_chat_jsonl(data_dir / "em_paper" / f"{name}.jsonl")
        assert report.ok, report.errors[:3]
        assert report.rows == (5000 if name == "jailbroken" else 6000)
