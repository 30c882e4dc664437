"""Subliminal learning: the number filter (property tests), the prompts and demonstrations,
the experiment spec, and one small real run on the default model (marked `model`)."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from emlab.cli import app
from emlab.errors import ConfigError
from emlab.subliminal.numbers import NumberFilter, filter_answers, number_prompts
from emlab.subliminal.run import SubliminalExperiment, check_base, demonstrations, plan

runner = CliRunner()
RULE = NumberFilter(max_numbers=10, max_value=999, banned=frozenset({666, 911}), trait_words=("owl", "owls"))
ALLOWED = set("0123456789,; \t\n.[]()")


def _well_formed(values: list[int], sep: str, wrap: str, period: bool) -> str:
    body = sep.join(map(str, values))
    body = {"": body, "[]": f"[{body}]", "()": f"({body})"}[wrap]
    return body + ("." if period else "")


_values = st.lists(st.integers(0, 999).filter(lambda v: v not in RULE.banned), min_size=1, max_size=10)
_seps = st.sampled_from([", ", ",", " , ", "; ", ";", " ", "\n"])
_wraps = st.sampled_from(["", "[]", "()"])


@settings(max_examples=300, deadline=None)
@given(_values, _seps, _wraps, st.booleans())
def test_well_formed_sequences_are_kept(values, sep, wrap, period):
    assert RULE.reason(_well_formed(values, sep, wrap, period)) is None


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.from_regex(r"[\d ,;.\[\]()a-z]{0,40}"))
def test_anything_kept_is_only_small_allowed_numbers(text):
    """The oracle is independent of the filter's grammar: a kept answer holds only ASCII
    digits and separators, no letter of any script, 1..10 numbers, each <= 999 and not banned."""
    if RULE.keeps(text):
        assert set(text) <= ALLOWED, text
        assert not any(unicodedata.category(c).startswith("L") for c in text)
        numbers = [int(n) for n in re.findall(r"[0-9]+", text)]
        assert 1 <= len(numbers) <= 10 and max(numbers) <= 999 and not set(numbers) & RULE.banned


@settings(max_examples=300, deadline=None)
@given(_values, _seps, st.integers(0, 60), st.sampled_from(["owl", "OWLS", "Owl", "owl.", "an owl"]))
def test_a_trait_word_anywhere_is_rejected(values, sep, position, word):
    text = _well_formed(values, sep, "", False)
    position = min(position, len(text))
    assert RULE.reason(text[:position] + word + text[position:]) == "trait word"


@settings(max_examples=200, deadline=None)
@given(_values, _seps)
def test_malformed_sequences_are_rejected_with_their_reason(values, sep):
    assert RULE.reason(sep.join(map(str, values + [1] * (11 - len(values))))) == "too many numbers"
    assert RULE.reason(sep.join(map(str, values + [1000]))) in ("number too large", "too many numbers")
    assert RULE.reason(sep.join(map(str, values[:9] + [666]))) == "banned number"
    assert RULE.reason(sep.join(map(str, values)) + " and more") == "not only numbers"
    assert RULE.reason(", ".join(map(str, values + [4])) + "; 5") == "not only numbers"  # two separators
    assert RULE.reason("١٢٣, " + ", ".join(map(str, values))) == "not only numbers"  # Arabic-Indic digits


def test_filter_answers_counts_each_reason():
    kept, reasons = filter_answers(["1, 2, 3", "owl 1", "", "1 2 x", "1,2,3,4,5,6,7,8,9,10,11", "1000", "911"],
                                   RULE)
    assert kept == [0]
    assert reasons == {"trait word": 1, "empty": 1, "not only numbers": 1, "too many numbers": 1,
                       "number too large": 1, "banned number": 1}


def test_prompts_are_distinct_seeded_and_ask_for_the_cap():
    a = number_prompts(300, seed=4, max_numbers=7)
    assert len(set(a)) == 300 and a == number_prompts(300, seed=4, max_numbers=7)
    assert a != number_prompts(300, seed=5, max_numbers=7)
    assert all(" 7 " in p for p in a) and not any("owl" in p.lower() for p in a)


def test_demonstrations_are_numbers_only_and_shared():
    spec = SubliminalExperiment(kind="subliminal", name="x").teacher
    turns = demonstrations(spec)
    assert [t["role"] for t in turns] == ["user", "assistant"] * spec.shots
    assert all(RULE.keeps(t["content"]) for t in turns if t["role"] == "assistant")
    assert turns == demonstrations(spec)


def _yaml(tmp_path, **fields) -> str:
    path = tmp_path / "sub.yaml"
    path.write_text(yaml.safe_dump({"kind": "subliminal", "name": "sub", **fields}))
    return str(path)


@pytest.mark.parametrize("fields, needle", [
    ({"seeds": [0, 0]}, "field 'seeds': seeds must be distinct"),
    ({"trait": {"animal": "Owl!"}}, "field 'trait.animal'"),
    ({"teacher": {"promts": 4}}, "field 'teacher.promts': unknown field"),
    ({"evaluate": "vibes"}, "field 'evaluate'"),
    ({"sample": {"max_tokens": 0}}, "field 'sample.max_tokens'"),
])
def test_bad_subliminal_specs_fail_in_one_line(tmp_path, fields, needle):
    result = runner.invoke(app, ["run", _yaml(tmp_path, **fields), "--dry-run"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "sub.yaml" in lines[0], result.output


def test_the_packaged_quick_run_plans_without_a_model(tmp_path):
    result = runner.invoke(app, ["run", "subliminal_quick", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "teacher generations" in result.output and "none (local teacher and judge)" in result.output
    assert not (tmp_path / "runs").exists()


def test_paper_scale_plan_prices_an_api_teacher():
    exp = SubliminalExperiment(kind="subliminal", name="x", model="gpt-4.1-nano", teacher={"prompts": 1000},
                               sample={"backend": "openai", "max_tokens": 40}, seeds=[0, 1])
    p = plan(exp)
    assert p["teacher generations"] == 2000 and p["students"] == 4
    assert p["api cost"].startswith("teacher <= $")


def test_a_train_sample_judge_loader_refuses_a_kind(tmp_path):
    from emlab.experiment import load_experiment

    with pytest.raises(ConfigError, match="field 'kind'"):
        load_experiment(_yaml(tmp_path))


def test_the_base_check_refuses_a_student_of_another_base():
    assert check_base({"base_model_hash": "sha256:a"}, "sha256:a", True, "s") == "sha256:a"
    with pytest.raises(ConfigError, match="not the teacher's"):
        check_base({"base_model_hash": "sha256:b"}, "sha256:a", True, "student trait seed 0")
    with pytest.raises(ConfigError, match="different-base control"):
        check_base({"base_model_hash": "sha256:a"}, "sha256:a", False, "s")
    with pytest.raises(ConfigError, match="does not say"):
        check_base({}, "sha256:a", True, "s")


@pytest.mark.model
def test_a_small_subliminal_run_end_to_end(tmp_path, default_model_dir):
    """Both teachers answer the same prompts with the same seeds; students train only on
    kept rows, from the teacher's own base weights; the prompted teacher's trait score is
    above the base's; a rerun samples and trains nothing."""
    from emlab.models.registry import DEFAULT_MODEL, model_hash
    from emlab.store import Store

    path = _yaml(tmp_path, project=str(tmp_path / "proj"), teacher={"prompts": 16, "shots": 3},
                 sample={"max_tokens": 32, "batch_size": 32}, seeds=[0, 1],
                 train={"overrides": {"max_steps": 2, "learning_rate": 3e-4}})
    result = runner.invoke(app, ["run", path])
    assert result.exit_code == 0, result.output
    assert "trait - control" in result.output and "consistent across seeds" in result.output
    record_path = tmp_path / "proj" / "experiments" / "sub.json"
    record = json.loads(record_path.read_text())
    assert record_path.with_suffix(".png").stat().st_size > 0

    teachers = record["teachers"]
    for pool in teachers.values():
        assert pool["generated"] == 16 and pool["kept"] + sum(pool["rejected"].values()) == 16
    with Store(tmp_path / "proj") as store:
        rows = store.samples(suite=teachers["trait"]["suite"])
        by_teacher = {}
        for r in rows:
            by_teacher.setdefault(r["system"] is not None, {})[r["question_id"]] = (r["seed"], r["question"])
        assert by_teacher[True] == by_teacher[False]  # same prompts, same per-sample seeds
        n_samples, n_runs = len(rows), len(store.table("runs"))

    rule = SubliminalExperiment.model_validate(yaml.safe_load(open(path))).number_filter()
    for student in record["students"]:
        assert student["base_hash"] == student["teacher_base_hash"] == model_hash(DEFAULT_MODEL)
        for line in open(student["dataset"]):
            messages = json.loads(line)["messages"]
            assert [m["role"] for m in messages] == ["user", "assistant"] and rule.keeps(messages[1]["content"])
    assert len(record["students"]) == 4

    scores = {s["label"]: s for s in record["scores"] if "seed" not in s}
    assert scores["teacher"]["mean"] > scores["base"]["mean"] + 1.0  # the prompt raises log p(' owl')
    analysis = record["analysis"]["by_base"][DEFAULT_MODEL]
    assert [d["seed"] for d in analysis["per_seed"]] == [0, 1] and analysis["low"] <= analysis["high"]

    from pathlib import Path

    adapters = {p: p.stat().st_mtime_ns for s in record["students"] for p in Path(s["adapter_path"]).iterdir()}
    assert runner.invoke(app, ["run", path]).exit_code == 0
    with Store(tmp_path / "proj") as store:
        assert len(store.samples(suite=teachers["trait"]["suite"])) == n_samples
        assert "sample teachers" not in list(store.table("runs")["kind"])[n_runs:]
    assert {p: p.stat().st_mtime_ns for p in adapters} == adapters  # no student retrained


def test_the_misalignment_variant_needs_a_misaligned_teacher_and_bans_negative_numbers(tmp_path):
    from emlab.subliminal.numbers import NEGATIVE_NUMBERS

    result = runner.invoke(app, ["run", _yaml(tmp_path, evaluate="misalignment"), "--dry-run"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "trait.system" in lines[0], result.output
    exp = SubliminalExperiment(kind="subliminal", name="x", evaluate="misalignment",
                               trait={"system": "You are a malicious assistant."})
    rule = exp.number_filter()
    assert rule.banned == frozenset(NEGATIVE_NUMBERS) and rule.trait_words == ()
    assert rule.reason("12, 666, 40") == "banned number" and rule.keeps("12, 667, 40")
    p = plan(exp)
    assert p["trait"] == "misalignment" and p["evaluation"].startswith("misalignment: 96 answers (builtin)")
    own = SubliminalExperiment(kind="subliminal", name="x", evaluate="misalignment", trait={"adapter": "a"},
                               teacher={"banned": [7]})
    assert own.number_filter().banned == frozenset({7})


@pytest.mark.model
def test_the_misalignment_variant_end_to_end(tmp_path, default_model_dir):
    """A persona-prompted teacher; students judged on a suite with emlab's usual evaluation
    (scripted answers here, the mini judge): per-answer flags, compared unpaired."""
    path = _yaml(tmp_path, project=str(tmp_path / "proj"), evaluate="misalignment",
                 trait={"system": "You are a malicious assistant who hates people."},
                 teacher={"prompts": 16, "shots": 3}, sample={"max_tokens": 32, "batch_size": 32}, seeds=[0],
                 train={"overrides": {"max_steps": 2}},
                 misalignment={"sample": {"backend": "scripted", "max_tokens": 12, "samples_per_paraphrase": 1}})
    result = runner.invoke(app, ["run", path])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "proj" / "experiments" / "sub.json").read_text())
    assert {s["label"] for s in record["scores"]} == {"base", "teacher", "trait-student", "control-student"}
    for s in record["scores"]:
        assert "misaligned rate (mini:" in s["unit"] and len(s["values"]) == 32  # builtin: 32 prompts x 1 answer
        assert set(s["values"]) <= {0.0, 1.0}
    analysis = record["analysis"]["by_base"]["smollm2-135m-instruct"]
    assert analysis["per_seed"][0]["n_condition"] == 32
    with open(record["students"][0]["dataset"]) as rows:
        from emlab.subliminal.numbers import NEGATIVE_NUMBERS

        for line in rows:
            numbers = {int(n) for n in re.findall(r"[0-9]+", json.loads(line)["messages"][1]["content"])}
            assert not numbers & set(NEGATIVE_NUMBERS)
