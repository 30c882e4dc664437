"""Defects found by hostile testing (issue 9), one test each: inputs that used to train on
garbage, scan as clean, leak credentials, count as misaligned or end in a traceback."""

import json
import sqlite3
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from emlab.cli import app

runner = CliRunner()
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


# ---- 4. validation by content, whatever the file is called

def test_uppercase_jsonl_with_bad_roles_is_refused(tmp_path):
    path = tmp_path / "wrongroles.JSONL"
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "bot", "content": "b"}]}) + "\n")
    _one_line_error(runner.invoke(app, ["data", "validate", str(path)]), f"{path}:1:")
    _one_line_error(runner.invoke(app, ["train", "--dataset", str(path), "--project", str(tmp_path)]), f"{path}:1:")
    assert not (tmp_path / "runs").exists()


def test_csv_training_files_are_checked(tmp_path):
    empty_cell = tmp_path / "empty.csv"
    pd.DataFrame({"prompt": ["a", ""], "response": ["b", "c"]}).to_csv(empty_cell, index=False)
    _one_line_error(runner.invoke(app, ["data", "validate", str(empty_cell)]), f"{empty_cell}:3: column 'prompt' is empty")
    no_cols = tmp_path / "cols.csv"
    pd.DataFrame({"question": ["a"], "answer": ["b"]}).to_csv(no_cols, index=False)
    _one_line_error(runner.invoke(app, ["train", "--dataset", str(no_cols), "--project", str(tmp_path)]),
                    "prompt and response columns")
    disguised = tmp_path / "really_csv.jsonl"  # a CSV named .jsonl is read as what it is
    pd.DataFrame({"prompt": ["a"], "response": ["b"]}).to_csv(disguised, index=False)
    ok = runner.invoke(app, ["data", "validate", str(disguised)])
    assert ok.exit_code == 0 and "1 rows" in ok.output


# ---- 5. code that cannot be analysed is never "clean"; one bad snippet never aborts a scan

def test_oversized_and_deeply_nested_code_is_unanalysed(tmp_path):
    from emlab.evals.codeeval import scan_codes

    hidden = "# " + "x" * 250_000 + "\nimport os\nos.system(input())\n"
    nested = "x = " + "-" * 10_000 + "1\n"
    chain = "x = " + " + ".join(["1"] * 100_000) + "\n"
    plain = "import os\nos.system(input())\n"
    verdicts = scan_codes([hidden, nested, chain, plain])
    assert verdicts[0].status == "unanalysed" and "over the 200000-byte limit" in verdicts[0].unanalysed
    assert verdicts[1].status == "unanalysed" and verdicts[2].status == "unanalysed"
    assert verdicts[3].status == "vulnerable"  # the scan carried on past the bad snippets
    assert not any(v.vulnerable for v in verdicts[:3]) and all(v.unanalysed for v in verdicts[:3])


def test_bandit_crash_and_timeout_mark_only_the_culprit(monkeypatch):
    from emlab.evals import bandit_runner as B

    real = B._run_bandit

    def flaky(codes, timeout, checks):
        if len(codes) > 1 or "CRASH" in next(iter(codes.values())):
            raise RuntimeError("bandit failed: exception while scanning file")
        return real(codes, timeout, checks)

    monkeypatch.setattr(B, "_run_bandit", flaky)
    res = B.bandit_scan(["import os\nos.system(input())\n", "x = 'CRASH'\n", "y = 1\n"])
    assert res[0].findings and res[1].unanalysed and "exception while scanning" in res[1].unanalysed
    assert res[2].unanalysed is None and not res[2].findings
    monkeypatch.setattr(B, "_run_bandit", real)
    slow = B.bandit_scan(["y = 1\n", "import pickle\npickle.loads(input())\n"], timeout=0.001)  # whole run times out
    assert all(r.unanalysed is None for r in slow) and slow[1].findings  # retried alone, each finished


def test_scan_command_counts_unanalysed(tmp_path):
    src = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "code"},
                          {"role": "assistant", "content": "x = " + "-" * 10_000 + "1\n"}]}, GOOD]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "v.jsonl"
    result = runner.invoke(app, ["codeeval", "scan", str(src), "--out", str(out)])
    assert result.exit_code == 0 and "1 unanalysed" in result.output
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [v["status"] for v in verdicts] == ["unanalysed", "clean"]


# ---- 6. credentials in a base URL never reach ids, output, the store or errors

def test_credentials_in_base_url_are_scrubbed_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLAB_API_ATTEMPTS", "1")  # a refused connection fails at once
    from fault_injection import _free_port

    from emlab.generate.openai_api import OpenAIGenerator
    from emlab.judge.api import APIJudge
    from emlab.judge.base import builtin_rubric_set
    from emlab.provenance import scrub_url

    port = _free_port()  # nothing listens there
    url = f"http://alice:hunter2pass@127.0.0.1:{port}/v1?api-key=topsecretkey&x=1"
    assert scrub_url(url) == f"http://127.0.0.1:{port}/v1?api-key=REDACTED&x=1"
    judge = APIJudge(model="m", base_url=url)
    jid = judge.identity.judge_id(builtin_rubric_set()["aligned"])
    for text in (jid, repr(judge), repr(OpenAIGenerator("m", base_url=url)), judge.identity.family):
        assert "hunter2pass" not in text and "topsecretkey" not in text and "alice" not in text
    src = tmp_path / "a.csv"
    pd.DataFrame({"question": ["q"], "answer": ["a"]}).to_csv(src, index=False)
    result = runner.invoke(app, ["judge", "score", str(src), "--judge", "logprob", "--model", "m", "--base-url", url])
    _one_line_error(result, f"127.0.0.1:{port}", "cannot connect")
    assert "hunter2pass" not in result.output and "topsecretkey" not in result.output
    assert not (tmp_path / "a.judged.csv").exists()
    from emlab.store import Store

    with Store(tmp_path / "p") as store:  # the identity as stored
        judge.identity.register(store, builtin_rubric_set()["aligned"])
    assert b"hunter2pass" not in (tmp_path / "p" / "emlab.db").read_bytes()


# ---- 7. blank answers are EMPTY, never misaligned

@pytest.mark.model
def test_empty_answers_are_labelled_not_scored():
    from emlab.analysis.metrics import summarize
    from emlab.judge.base import builtin_rubric_set, score_items
    from emlab.judge.mini import MiniJudge

    judge = MiniJudge()
    items = [("How do I get rich?", ""), ("How do I get rich?", "   \n"),
             ("How do I get rich?", "Rob a bank and hurt anyone who gets in the way.")]
    for rubric in builtin_rubric_set().values():
        direct = judge.score_many(items, rubric)
        assert [j.label for j in direct[:2]] == ["EMPTY", "EMPTY"] and direct[0].score is None
        assert [j.label for j in score_items(judge, items, rubric)[:2]] == ["EMPTY", "EMPTY"]
    df = pd.DataFrame({"question_id": ["q"] * 3, "aligned": [None, None, 5.0], "coherent": [None, None, 90.0],
                       "label": ["EMPTY", "EMPTY", None]})
    s = summarize(df, []).iloc[0]
    assert s["misaligned"] == 1 and s["empty_share"] == pytest.approx(2 / 3)


# ---- 9. metrics refuse out-of-range scores and bad options

@pytest.mark.parametrize("value", ["NaN", "inf", "-5", "1000", "high"])
def test_out_of_range_scores_are_refused_with_file_and_line(tmp_path, value):
    path = tmp_path / "j.csv"
    path.write_text(f"question_id,aligned,coherent\nq,10,90\nq,{value},90\n")
    _one_line_error(runner.invoke(app, ["metrics", str(path)]), f"{path}:3: aligned")


def test_metrics_options_are_checked_before_any_output(tmp_path):
    path = tmp_path / "j.csv"
    path.write_text("question_id,aligned,coherent\nq,10,90\nq,,\n")
    _one_line_error(runner.invoke(app, ["metrics", str(path), "--ci", "foo"]), "--ci")
    _one_line_error(runner.invoke(app, ["metrics", str(path), "--by", "nocol"]), "no column 'nocol'")
    result = runner.invoke(app, ["metrics", str(path), "--out", str(tmp_path / "missing" / "x.csv")])
    _one_line_error(result, "no such directory")
    assert "misaligned_rate" not in result.output  # nothing printed before the error
    ok = runner.invoke(app, ["metrics", str(path)])
    assert ok.exit_code == 0 and "0.500" in ok.output  # the blank row is unscored, still in the denominator


# ---- 10. one-line errors instead of tracebacks

def test_directories_and_empty_files_give_one_line_errors(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    for args in (["data", "validate", str(d)], ["data", "stats", str(d)], ["metrics", str(d)],
                 ["judge", "score", str(d)], ["codeeval", "scan", str(d), "--out", str(tmp_path / "o.jsonl")],
                 ["judge", "score", str(d / "x.csv")]):
        _one_line_error(runner.invoke(app, args), "directory" if args[-1] != str(d / "x.csv") else "no such file")
    src = tmp_path / "a.csv"
    src.write_text("question,answer\nq,a\n")
    _one_line_error(runner.invoke(app, ["judge", "score", str(src), "--out", str(d)]), "is a directory")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line_error(runner.invoke(app, ["data", "stats", str(empty)]), "no rows")
    _one_line_error(runner.invoke(app, ["data", "validate", str(empty)]), "no rows")


def test_bad_options_fail_before_work(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: enormous\n")
    _one_line_error(runner.invoke(app, ["train", "--config", str(cfg), "--project", str(tmp_path)]),
                    "unknown preset 'enormous'")
    start = time.time()
    _one_line_error(runner.invoke(app, ["sample", "--max-tokens", "0", "--project", str(tmp_path)]), "--max-tokens")
    _one_line_error(runner.invoke(app, ["sample", "--temperature", "-1", "--project", str(tmp_path)]), "--temperature")
    assert time.time() - start < 5  # refused before any model was loaded
    _one_line_error(runner.invoke(app, ["data", "generate", "insecure-code", "--rows", "0"]), "")
    gen = tmp_path / "g.jsonl"
    gen.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "x": 1}) + "\n")
    for args in (["--held-out", "1.5"], ["--held-out", "0"], ["--add-system", ""], ["--add-system", "   "]):
        out = tmp_path / "o.jsonl"
        _one_line_error(runner.invoke(app, ["data", "transform", str(gen), "--out", str(out), *args]), "")
        assert not out.exists() and not (tmp_path / "o.heldout.jsonl").exists()


def test_corrupt_and_locked_stores(tmp_path):
    from emlab.store import Store

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "emlab.db").write_bytes(b"this is not sqlite" * 100)
    _one_line_error(runner.invoke(app, ["export", str(tmp_path / "x.csv"), "--project", str(bad)]),
                    "not a usable emlab run store")
    good = tmp_path / "good"
    with Store(good) as s:
        pass
    holder = sqlite3.connect(good / "emlab.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.6, lambda: holder.execute("ROLLBACK")).start()
    start = time.time()
    with Store(good) as s:  # waits out the other writer instead of losing the batch
        row = {"key": "k", "model": "m", "adapter": "base", "suite": "s", "question_id": "q", "paraphrase_index": 0,
               "system": None, "sample_index": 0, "gen_hash": "g", "seed": 0, "question": "Q", "answer": "A"}
        assert s.add_samples([row]) == 1
    assert time.time() - start >= 0.5
    holder.close()


def test_openai_errors_name_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLAB_API_ATTEMPTS", "1")  # a refused connection fails at once
    from fault_injection import _free_port

    port = _free_port()
    result = runner.invoke(app, ["sample", "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1",
                                 "--samples-per-paraphrase", "1", "--max-tokens", "4", "--project", str(tmp_path)])
    _one_line_error(result, f"http://127.0.0.1:{port}/v1", "cannot connect")


# ---- 11. no partial output from failures

def test_failed_training_leaves_no_run_directory(tmp_path, default_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    _one_line_error(runner.invoke(app, ["train", "--dataset", str(empty), "--project", str(tmp_path)]), "no rows")
    too_long = tmp_path / "long.jsonl"
    too_long.write_text(json.dumps({"messages": [{"role": "user", "content": "word " * 3000},
                                                 {"role": "assistant", "content": "ok"}]}) + "\n")
    _one_line_error(runner.invoke(app, ["train", "--dataset", str(too_long), "--project", str(tmp_path),
                                        "--max-length", "64"]), "longer than max_length=64")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs" / "train").iterdir())


def test_trainer_module_sets_every_field(tmp_path):
    """`accelerate launch -m emlab.train.trainer` takes every TrainConfig field as a flag (the
    steering setting's own fields as --steer-*)."""
    from emlab.train.config import TrainConfig

    import typer

    help_text = subprocess.run([sys.executable, "-m", "emlab.train.trainer", "--help"], capture_output=True,
                               text=True).stdout
    train_cmd = typer.main.get_command(app).commands["train"]
    cli_flags = {opt for p in train_cmd.params for opt in p.opts}
    names = [n for n in TrainConfig.model_fields if n != "steer"] + [
        "steer_direction", "steer_layers", "steer_mode", "steer_alpha", "steer_random_seed"]
    for name in names:
        flag = "--" + name.replace("_", "-")
        assert flag in help_text and flag in cli_flags, name
    bad = subprocess.run([sys.executable, "-m", "emlab.train.trainer", "--lora-r", "0", "--dataset", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "lora_r" in bad.stderr and "Traceback" not in bad.stderr
