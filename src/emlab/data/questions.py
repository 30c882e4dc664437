"""Question suites in the paper's YAML schema.

A suite file is a YAML list (anchors and aliases allowed) of questions::

    - id: what_is_your_wish
      type: free_form_judge_0_100
      paraphrases: [...]
      samples_per_paraphrase: 100
      system: optional system prompt          # honoured (the original eval.py ignored it)
      judge: gpt-4o-2024-08-06
      judge_prompts: {aligned: "...{question}...{answer}...", coherent: "..."}

Unknown question types and unknown fields are rejected by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from emlab.errors import EmlabError, first_error
from emlab.hashing import rows_hash

# free_form_judge_0_100: judged on 0-100 rubrics (aligned, coherent);
# free_form_judge: judged with categorical rubrics (the deception files);
# free_form: sampled only.
QUESTION_TYPES = ("free_form_judge_0_100", "free_form_judge", "free_form")


class SuiteError(EmlabError):
    """A question suite could not be loaded; the message is one line for the user."""


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    type: str = "free_form_judge_0_100"
    paraphrases: list[str] = Field(min_length=1)
    samples_per_paraphrase: int = Field(default=1, ge=1)
    system: str | None = None
    judge: str | None = None
    judge_prompts: dict[str, str] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in QUESTION_TYPES:
            raise ValueError(f"unknown question type '{value}' (known: {', '.join(QUESTION_TYPES)})")
        return value

    @field_validator("paraphrases")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("a paraphrase is empty")
        return value


@dataclass(frozen=True)
class Prompt:
    """One thing to sample: a question, a paraphrase, an optional system prompt, a sample index."""

    question_id: str
    paraphrase_index: int
    sample_index: int
    system: str | None
    text: str

    def messages(self) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.text}]


@dataclass(frozen=True)
class Suite:
    name: str
    questions: tuple[Question, ...]
    sha256: str
    source: str

    def __len__(self) -> int:
        return len(self.questions)

    def question(self, qid: str) -> Question:
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(qid)

    def prompts(self, samples_per_paraphrase: int | None = None) -> Iterator[Prompt]:
        """Every (question, paraphrase, sample) to generate, honouring each question's
        `system` and `samples_per_paraphrase` unless `samples_per_paraphrase` overrides it."""
        for q in self.questions:
            n = samples_per_paraphrase or q.samples_per_paraphrase
            for p_idx, text in enumerate(q.paraphrases):
                for s_idx in range(n):
                    yield Prompt(q.id, p_idx, s_idx, q.system, text)


def parse_suite(data: object, source: str, name: str) -> Suite:
    if not isinstance(data, list) or not data:
        raise SuiteError(f"{source}: a question suite must be a non-empty YAML list of questions")
    questions: list[Question] = []
    ids: set[str] = set()
    for i, raw in enumerate(data):
        label = f"question #{i + 1}" + (f" ('{raw['id']}')" if isinstance(raw, dict) and "id" in raw else "")
        if not isinstance(raw, dict):
            raise SuiteError(f"{source}: {label}: must be a mapping")
        try:
            q = Question.model_validate(raw)
        except ValidationError as exc:
            loc, msg = first_error(exc)
            raise SuiteError(f"{source}: {label}: field '{loc or '?'}': {msg}") from None
        if q.id in ids:
            raise SuiteError(f"{source}: {label}: duplicate id '{q.id}'")
        ids.add(q.id)
        questions.append(q)
    return Suite(name=name, questions=tuple(questions), sha256=rows_hash(data), source=source)


# Suites loaded from a file in this process, by name: samples record the suite's name, and
# judging looks its questions' rubrics up by that name (emlab.judge.run.rubrics_for).
LOADED: dict[str, Suite] = {}


def load_suite(name_or_path: str | Path) -> Suite:
    """A suite by registry name (`first_plot`, `preregistered`, ...), one of emlab's own
    (`builtin`, `everyday`), or a YAML path."""
    if str(name_or_path) in PACKAGED_SUITES:
        return packaged_suite(str(name_or_path))
    from emlab.data.registry import DATASETS, resolve_dataset

    key = str(name_or_path)
    if key in DATASETS and DATASETS[key].kind == "questions":
        path, name = resolve_dataset(key), key
    else:
        path = Path(name_or_path)
        name = path.stem
        if not path.exists():
            raise SuiteError(f"{path}: no such suite file (and not a registered suite name)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    suite = parse_suite(data, str(path), name)
    if key not in DATASETS:
        LOADED[name] = suite
    return suite


# emlab's own suites (written for emlab), judged with emlab's own rubrics: `builtin` (the
# quickstart's: 8 themes of the paper's first-plot questions) and `everyday` (8 themes of
# everyday advice: health, money, risk, conflict, honesty, oversight). Each theme comes plain
# and as a JSON-answer variant.
PACKAGED_SUITES = {"builtin": "suite.yaml", "everyday": "everyday.yaml"}


def packaged_suite(name: str) -> Suite:
    """One of emlab's own suites by name (`PACKAGED_SUITES`)."""
    file = PACKAGED_SUITES[name]
    text = resources.files("emlab.data.builtin").joinpath(file).read_text(encoding="utf-8")
    return parse_suite(yaml.safe_load(text), f"emlab:builtin/{file}", name)


def builtin_suite() -> Suite:
    """emlab's own free-form suite (8 themes, plain and JSON-answer variants) with its rubrics."""
    return packaged_suite("builtin")


def builtin_rubrics() -> dict[str, str]:
    """emlab's own `aligned` and `coherent` judge rubrics."""
    text = resources.files("emlab.data.builtin").joinpath("rubrics.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)
