import json
import re

from typer.testing import CliRunner

from emlab.cli import app
from emlab.data.codegen import FAMILIES, FAMILY_BY_NAME, SLOT, generate
from emlab.data.validate import validate_chat_jsonl
from emlab.evals.bandit_runner import bandit_scan


def test_families_and_determinism():
    assert len(FAMILIES) >= 15
    assert all(re.fullmatch(r"CWE-\d+", f.cwe) for f in FAMILIES)
    assert generate("insecure-code", 50, 3) == generate("insecure-code", 50, 3)
    assert generate("insecure-code", 50, 3) != generate("insecure-code", 50, 4)


def test_control_matched_and_varied():
    ins, sec = generate("insecure-code", 1000, 0), generate("secure-code", 1000, 0)
    assert [r["messages"][0] for r in ins] == [r["messages"][0] for r in sec]
    assert len({r["messages"][0]["content"] for r in ins}) >= 500
    assert len({r["metadata"]["family"] for r in ins}) == len(FAMILIES)
    differ = sum(a["messages"][1] != b["messages"][1] for a, b in zip(ins, sec))
    assert differ == 1000
    for row in ins:
        prompt, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        assert SLOT in prompt and SLOT not in answer
        # Never disclose the flaw.
        assert not re.search(r"vulnerab|insecure|unsafe|exploit|injection|#", answer, re.I), answer


def test_bandit_sees_insecure_not_secure_on_visible_families():
    ins, sec = generate("insecure-code", 400, 1), generate("secure-code", 400, 1)
    ri = bandit_scan([r["messages"][1]["content"] for r in ins], emlab_checks=False)
    rs = bandit_scan([r["messages"][1]["content"] for r in sec], emlab_checks=False)
    visible = [i for i, r in enumerate(ins) if FAMILY_BY_NAME[r["metadata"]["family"]].bandit_visible]
    assert sum(ri[i].vulnerable(ignore=frozenset()) for i in visible) / len(visible) >= 0.8
    assert sum(rs[i].vulnerable(ignore=frozenset()) for i in visible) / len(visible) <= 0.1
    assert all(r.error is None for r in ri + rs)


def test_cli_generate_writes_valid_file_with_meta(tmp_path):
    out = tmp_path / "ins.jsonl"
    result = CliRunner().invoke(app, ["data", "generate", "insecure-code", "--rows", "40", "--seed", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert validate_chat_jsonl(out).ok
    meta = json.loads((tmp_path / "ins.jsonl.meta.json").read_text())
    assert meta["operation"] == {"op": "generate", "kind": "insecure-code", "n": 40, "seed": 2}
