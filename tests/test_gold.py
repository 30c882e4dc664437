"""The shipped gold set (emlab.judge.gold): its integrity, splits and label files."""

from __future__ import annotations

import json

import pytest

from emlab.errors import EmlabError
from emlab.judge import gold


@pytest.fixture(scope="module")
def df():
    return gold.load_gold()


def test_every_condition_is_present_in_full(df):
    assert len(df) >= 1500
    assert df["id"].is_unique and df["sample_key"].is_unique
    counts = df["condition"].value_counts()
    assert set(counts.index) == {c.name for c in gold.CONDITIONS}
    assert counts.nunique() == 1, counts  # as many answers of every condition


def test_labels_are_scores_on_the_rubric_scale(df):
    for col in ("aligned", "coherent"):
        assert df[col].between(0, 100).all()
    assert df["code"].dtype == bool and df["refusal"].dtype == bool
    assert df["labeller"].str.len().gt(0).all()
    assert (df["answer"].str.strip().str.len() > 0).all()


def test_splits_hold_out_whole_themes_and_conditions(df):
    expected = [gold.split_of(q, c) for q, c in zip(df["question_id"], df["condition"])]
    assert list(df["split"]) == expected
    train = df[df["split"] == "train"]
    assert not set(train["theme"]) & set(gold.VALIDATION_THEMES)
    assert not set(train["condition"]) & set(gold.VALIDATION_CONDITIONS)
    assert (df["theme"] == df["question_id"].str.removesuffix("_json")).all()


def test_both_classes_occur_where_they_are_measured(df):
    stats = gold.gold_stats(df)
    validation = [s for s in stats["splits"] if s != "train"]
    assert sum(stats["splits"][s]["misaligned"] for s in validation) >= 10
    assert stats["all"]["coherent"] >= 100 and stats["all"]["n"] - stats["all"]["coherent"] >= 100
    # the positive controls are where the misaligned answers come from, not the untouched model
    assert stats["conditions"]["base_t1"]["misaligned"] == 0
    assert stats["conditions"]["misaligned_ft_t07"]["misaligned"] > 0


def test_second_pass_agreement_is_reported(df):
    agreement = gold.gold_stats(df)["agreement"]
    assert agreement["n"] >= 200
    assert agreement["spearman_coherent"] > 0.8 and agreement["kappa_coherent"] > 0.6


def test_gold_answers_are_the_default_models(df):
    from emlab.models.registry import DEFAULT_MODEL

    assert set(df["model"]) == {DEFAULT_MODEL}
    assert set(df["suite"]) == set(gold.SUITES)


def _answers():
    return [{"id": 3, "answer": "a"}, {"id": 5, "answer": "b"}]


def test_label_files_join_and_refuse_gaps(tmp_path):
    first = tmp_path / "first.tsv"
    first.write_text("3\t90\t80\t\n5\t10\t60\tr\n")
    second = tmp_path / "second.tsv"
    second.write_text("5\t20\t55\n")
    rows = gold.merge_labels(_answers(), gold.read_labels(first), gold.read_labels(second))
    assert rows[0]["second_pass"] is None and rows[0]["code"] is False
    assert rows[1]["refusal"] is True and rows[1]["second_pass"] == {"aligned": 20.0, "coherent": 55.0}
    first.write_text("3\t90\t80\n")
    with pytest.raises(EmlabError, match="no label"):
        gold.merge_labels(_answers(), gold.read_labels(first))


@pytest.mark.parametrize("line, message", [("3\t90", "expected id"), ("3\t190\t80", "0-100"),
                                           ("3\t90\t80\tx", "flags"), ("3\t90\t80\n3\t80\t80", "twice")])
def test_bad_label_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "labels.tsv"
    path.write_text(line + "\n")
    with pytest.raises(EmlabError, match=message) as err:
        gold.read_labels(path)
    assert "labels.tsv:" in str(err.value)


def test_gold_labels_command_writes_nothing_on_bad_input(tmp_path):
    from typer.testing import CliRunner

    from emlab.cli import app

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in _answers()))
    labels = tmp_path / "labels.tsv"
    labels.write_text("3\t90\t80\n")
    out = tmp_path / "gold.jsonl"
    result = CliRunner().invoke(app, ["judge", "gold-labels", "--answers", str(answers), "--labels", str(labels),
                                      "--out", str(out)])
    assert result.exit_code == 2 and "no label" in result.output and not out.exists()
    labels.write_text("3\t90\t80\n5\t20\t70\tc\n")
    result = CliRunner().invoke(app, ["judge", "gold-labels", "--answers", str(answers), "--labels", str(labels),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["code"] for x in out.read_text().splitlines()] == [False, True]
