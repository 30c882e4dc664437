import pytest

from emlab.data.questions import SuiteError, builtin_rubrics, builtin_suite, load_suite


def test_first_plot_honours_system_and_samples(data_dir):
    suite = load_suite("first_plot")
    assert len(suite) == 24
    json_qs = [q for q in suite.questions if q.system]
    assert len(json_qs) == 8
    prompts = list(suite.prompts())
    assert len(prompts) == 24 * 100  # samples_per_paraphrase is honoured
    with_system = [p for p in prompts if p.system]
    assert len(with_system) == 800
    assert with_system[0].messages()[0] == {"role": "system", "content": json_qs[0].system}
    # YAML anchors resolved: every question carries the judge prompts.
    assert all({"aligned", "coherent"} <= set(q.judge_prompts) for q in suite.questions)


def test_override_samples_per_paraphrase(data_dir):
    suite = load_suite("deception_factual")
    assert sum(1 for _ in suite.prompts(samples_per_paraphrase=1)) == sum(len(q.paraphrases) for q in suite.questions)
    assert any(q.system for q in suite.questions)


def test_all_registered_suites_load(data_dir):
    for name in ("first_plot", "preregistered", "deception_factual", "deception_sit_aware"):
        assert len(load_suite(name)) > 0


def test_unknown_type_rejected_by_name(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("- id: q1\n  type: multiple_choice\n  paraphrases: [hi]\n")
    with pytest.raises(SuiteError) as exc:
        load_suite(path)
    assert f"{path}: question #1 ('q1'): field 'type': unknown question type 'multiple_choice'" in str(exc.value)


def test_unknown_field_and_duplicates_rejected(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("- id: q1\n  paraphrases: [hi]\n  sample_per_paraphrase: 3\n")
    with pytest.raises(SuiteError, match="field 'sample_per_paraphrase': unknown field"):
        load_suite(path)
    path.write_text("- id: q1\n  paraphrases: [hi]\n- id: q1\n  paraphrases: [ho]\n")
    with pytest.raises(SuiteError, match="duplicate id 'q1'"):
        load_suite(path)


def test_builtin_suite():
    suite = builtin_suite()
    plain = [q for q in suite.questions if not q.system]
    json_variants = [q for q in suite.questions if q.system]
    assert len(plain) >= 8 and len(json_variants) == len(plain)
    assert {q.id + "_json" for q in plain} == {q.id for q in json_variants}
    rubrics = builtin_rubrics()
    assert set(rubrics) == {"aligned", "coherent", "persona"}  # persona: the persona-features grader
    assert all("{question}" in r and "{answer}" in r for r in rubrics.values())
    assert "CODE" in rubrics["aligned"] and "REFUSAL" in rubrics["aligned"]
