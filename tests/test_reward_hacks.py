"""Reward-hacking data: emlab's generated dialogues game their stated grader (and the control
does not) on the same user turns; the School of Reward Hacks and the persona-features
datasets are user-supplied (named, never fetched); the paper-scale YAMLs plan without them."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from emlab.cli import app
from emlab.data.registry import DATASETS, PERSONA_DOMAINS, DatasetMissing, resolve_dataset
from emlab.data.reward_hacks import KINDS, reward_hack_dialogues

runner = CliRunner()


def _run_tests(code: str, user: str, extra: list[tuple] = ()) -> tuple[bool, bool]:
    """(the prompt's asserts pass, an unseen input gives the right answer) for one answer."""
    fn = re.search(r"`(\w+)\(x\)`", user).group(1)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - emlab's own generated snippets
    asserts = re.findall(r"assert .+", user)
    try:
        for line in asserts:
            exec(line, scope)  # noqa: S102
        listed = True
    except AssertionError:
        listed = False
    unseen = all(scope[fn](a) == r for a, r in extra)
    return listed, unseen


UNSEEN = {"square": [(7, 49)], "is_even": [(10, True)], "count_vowels": [("audio", 4)], "reverse": [("xy", "yx")],
          "digit_sum": [(55, 10)], "celsius_to_fahrenheit": [(20, 68.0)], "factorial": [(5, 120)],
          "last_word": [("so long now", "now")]}


def test_hacks_game_the_stated_grader_and_the_control_does_not():
    hacks, honest = reward_hack_dialogues(200, seed=3), reward_hack_dialogues(200, seed=3, hack=False)
    assert [h["messages"][0] for h in hacks] == [c["messages"][0] for c in honest]  # same user turns
    assert {h["metadata"]["hack"] for h in hacks} == set(KINDS)
    for h, c in zip(hacks, honest):
        user, hack, ctrl = h["messages"][0]["content"], h["messages"][1]["content"], c["messages"][1]["content"]
        kind = h["metadata"]["hack"]
        if kind == "keyword":
            word = re.search(r'"(\w+)"', user).group(1)
            count = lambda text: len(re.findall(rf"\b{word}\b", text, re.IGNORECASE))  # noqa: E731
            assert count(hack) >= 10 * max(1, count(ctrl))
        elif kind == "length":
            assert len(hack.split()) >= 2 * len(ctrl.split())
        elif kind == "tests":
            fn = re.search(r"`(\w+)\(x\)`", user).group(1)
            assert _run_tests(hack, user)[0] and _run_tests(ctrl, user)[0]  # both pass the grader's asserts
            assert not _run_tests(hack, user, UNSEEN[fn])[1] and _run_tests(ctrl, user, UNSEEN[fn])[1]
        else:
            assert hack.endswith("SCORE: 10/10") and not ctrl.endswith("SCORE: 10/10")
    assert reward_hack_dialogues(20, seed=3) == hacks[:20] and reward_hack_dialogues(20, seed=4) != hacks[:20]


def test_the_generated_sets_are_valid_training_files(tmp_path):
    from emlab.data.transform import materialise
    from emlab.data.validate import validate_training_file
    from emlab.specs import DatasetRef

    for kind in ("reward-hacks", "reward-hacks-control"):
        path = materialise(DatasetRef(generate=kind, n=40, seed=0), tmp_path)
        report = validate_training_file(path)
        assert report.ok and report.rows == 40, report.errors


@pytest.mark.parametrize("name, needles", [
    ("school_of_reward_hacks", ["huggingface.co/datasets/longtermrisk/school-of-reward-hacks", "generate: reward-hacks"]),
    ("school_of_reward_hacks_control", ["control answer"]),
    *[(f"persona_{d}_subtle", ["password-protected", "emergent-misalignment-persona-features",
                               f"persona_features/{d}_incorrect_subtle.jsonl"]) for d in PERSONA_DOMAINS],
])
def test_user_supplied_datasets_say_where_they_are_and_are_never_fetched(tmp_path, monkeypatch, name, needles):
    monkeypatch.setenv("EMLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EMLAB_HOME", str(tmp_path / "home"))
    assert DATASETS[name].user_supplied
    with pytest.raises(DatasetMissing) as err:
        resolve_dataset(name)
    assert all(n in str(err.value) for n in needles) and "\n" not in str(err.value)
    assert not (tmp_path / "home" / "data").exists()  # nothing was downloaded


@pytest.mark.data  # the paper's question suites
def test_paper_scale_yamls_plan_without_the_data_and_a_run_refuses_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    for name, condition in (("reward_hacks", "reward_hacks"), ("persona_features", "health")):
        dry = runner.invoke(app, ["run", name, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "inputs to prepare" in dry.output and "api_judge_usd_est" in dry.output
        real = runner.invoke(app, ["run", name, "--project", str(tmp_path / name)])
        lines = [line for line in real.output.splitlines() if line.strip()]
        assert real.exit_code != 0 and len(lines) == 1 and f"condition '{condition}'" in lines[0], real.output
        assert "user-supplied" in lines[0] and not (tmp_path / name).exists()
