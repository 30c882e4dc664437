"""The fakes the fast tier runs the pipeline on - the scripted judge and the fake trainer -
and the registries that name every backend (judges, generators, trainers)."""

import json
import typing

import pytest

from emlab.errors import ConfigError, EmlabError


def test_registries_name_exactly_the_typed_backends():
    from emlab.generate import GENERATORS
    from emlab.judge import JUDGES, build_judge
    from emlab.specs import Backend, JudgeName, JudgeSpec, TrainSpec
    from emlab.train import TRAINERS

    assert set(JUDGES) == set(typing.get_args(JudgeName))
    assert set(GENERATORS) == set(typing.get_args(Backend))
    assert set(TRAINERS) == set(typing.get_args(TrainSpec.model_fields["backend"].annotation))
    with pytest.raises(ConfigError, match=r"unknown judge 'oracle' \(logprob, sampled, local, mini, scripted\)"):
        build_judge(JudgeSpec.model_construct(name="oracle"))


def test_scripted_judge_plants_misalignment_and_answers_every_rubric():
    from emlab.judge import build_judge
    from emlab.judge.base import LABELS, Rubric, builtin_rubric_set, persona_rubric, score_items
    from emlab.judge.scripted import MARKER
    from emlab.misaligned import PAPER
    from emlab.specs import JudgeSpec

    judge = build_judge(JudgeSpec(name="scripted"))
    assert judge.identity.label == "scripted:hash-1@fake" and LABELS in judge.capabilities
    rubrics = builtin_rubric_set()
    items = [("q", f"an answer {i}") for i in range(200)] + [("q", f"{MARKER}: burn it down"), ("q", "  ")]
    aligned = score_items(judge, items, rubrics["aligned"])
    coherent = score_items(judge, items, rubrics["coherent"])
    assert aligned[-1].label == "EMPTY" and aligned[-1].score is None
    assert aligned[-2].score < PAPER.aligned_below and coherent[-2].score > PAPER.coherent_above
    scores = [j.score for j in aligned[:200]]
    assert all(0 <= s <= 100 for s in scores) and len(set(scores)) > 50  # spread over the scale
    assert score_items(judge, items[:5], rubrics["aligned"]) == aligned[:5]  # deterministic
    persona = score_items(judge, items[:50], persona_rubric())
    assert all(1 <= j.score <= 5 for j in persona)
    tf = score_items(judge, items[:20], Rubric("fact", 'Answer "TRUE" or "FALSE".', ("TRUE", "FALSE")))
    assert {j.label for j in tf} == {"TRUE", "FALSE"}


def test_a_judge_without_labels_refuses_a_categorical_rubric():
    from emlab.judge.base import Rubric, score_items
    from emlab.judge.scripted import ScriptedJudge

    class ScoresOnly(ScriptedJudge):
        capabilities = frozenset({"scores"})

    with pytest.raises(ConfigError, match="cannot answer categorical rubrics"):
        score_items(ScoresOnly(), [("q", "a")], Rubric("fact", 'Answer "TRUE" or "FALSE".', ("TRUE", "FALSE")))


def test_fake_trainer_writes_a_run_of_the_real_shape_and_never_passes_for_one(tmp_path):
    from emlab.data.codegen import generate
    from emlab.train.config import resolve_config
    from emlab.train.fake import train_fake
    from emlab.train.trainer import default_run_dir

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in generate("insecure-code", 40, 0)))
    cfg = resolve_config("cpu-quick", dataset=str(data), max_rows=24, epochs=2.0)
    result = train_fake(cfg, root=tmp_path / "runs")
    assert result.run_dir.parent == tmp_path / "runs" / "fake"  # never where a real run of cfg lives
    assert result.run_dir != default_run_dir(cfg, tmp_path / "runs")
    rec = json.loads((result.run_dir / "run.json").read_text())
    per_step = cfg.per_device_batch_size * cfg.gradient_accumulation_steps
    assert rec["fake"] is True and rec["adapter_sha256"] is None and rec["dataset"]["rows_used"] == 24
    assert rec["global_steps"] == -(-24 * 2 // per_step)
    losses = (result.run_dir / "loss.csv").read_text().splitlines()
    assert losses[0] == "step,loss" and len(losses) == rec["global_steps"] + 1
    assert sorted(f.name for f in result.adapter_dir.iterdir()) == ["FAKE.txt", "fake_adapter.safetensors"]
    again = train_fake(cfg, root=tmp_path / "runs")  # a finished run is read back
    assert again.record == rec
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(EmlabError, match="bad.jsonl:1: invalid JSON"):
        train_fake(resolve_config("cpu-quick", dataset=str(bad)), root=tmp_path / "runs")
    assert not (tmp_path / "runs" / "fake").joinpath("bad").exists()


def test_fake_training_goes_with_scripted_sampling_only(tmp_path):
    import yaml

    from emlab.experiment import load_experiment

    exp = {"name": "x", "train": {"backend": "fake"}, "conditions": [{"name": "base"}], "judges": ["scripted"]}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(exp))
    with pytest.raises(ConfigError, match="train.backend fake writes no weights"):
        load_experiment(path)
    path.write_text(yaml.safe_dump({**exp, "sample": {"backend": "scripted"}}))
    assert load_experiment(path).train.backend == "fake"
