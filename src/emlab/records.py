"""The self-describing record every experiment run writes (`<project>/experiments/NAME.json`).

Later stages (`emlab report`, re-judging, the notebook user) read this record rather than
the live configuration: which adapters were trained from what, which suites and judges ran
and with which versions. It is versioned and written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from emlab.files import atomic_write

RECORD_VERSION = 2


class VariantRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: str
    seed: int | None
    adapter_path: str | None = None
    adapter_id: str = "base"
    served_model: str | None = None  # a model addressed by name on the endpoint (an API finetune)
    train_run: str | None = None
    dataset: dict | None = None
    step: int | None = None  # a kept checkpoint's optimizer step; None: the final adapter (or untouched)
    in_context: dict | None = None  # in-context EM: the rows placed before each question (generate.in_context)
    context: list[tuple[str, str]] | None = None  # those rows' turns, as sampled

    @property
    def label(self) -> str:
        return self.condition + (f"@{self.step}" if self.step is not None else "")


class JudgeRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: dict
    family: str  # the judge's identity without the rubric (see emlab.judge.base.JudgeIdentity)
    label: str  # readable: backend:model@version


class CodeEvalRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    suite: str
    gen_hash: str
    tasks: int
    judge_family: str
    judge_label: str


class ExperimentRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    record_version: Literal[2] = RECORD_VERSION
    kind: Literal["experiment"] = "experiment"
    name: str
    run_id: str
    config: dict
    config_yaml: str | None = None  # the experiment file as written (URLs scrubbed)
    variants: list[VariantRecord]
    gen_hash: str
    suites: list[dict]
    judges: list[JudgeRecord]
    versions: dict
    git_revision: str | None
    seeds: list[int]
    wall_seconds_last_run: float
    codeeval: CodeEvalRecord | None = None
    likelihood: dict | None = None  # emlab.probe.likelihood.likelihood_stage's result
    dynamics: dict | None = None  # per-checkpoint rotation, loss and projection (emlab.probe.dynamics)
    # Resolved mitigations per condition, conditional-probe suites, capability scores (emlab.mitigate).
    mitigations: dict | None = None
    sanity_gate: float = 0.05
    stages: dict = Field(default_factory=dict)
    stage_seconds: dict[str, float] = Field(default_factory=dict)  # wall time of each stage in the last run

    @property
    def final_variants(self) -> list[VariantRecord]:
        """One variant per condition and seed: the final adapters and untouched models."""
        return [v for v in self.variants if v.step is None]

    def write(self, path: Path) -> Path:
        with atomic_write(path) as handle:
            handle.write(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "ExperimentRecord":
        from emlab.errors import EmlabError

        import json

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            version = json.loads(text).get("record_version") if text.lstrip().startswith("{") else None
        except (OSError, ValueError) as exc:
            raise EmlabError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else exc})") from None
        if isinstance(version, int) and version > RECORD_VERSION:
            raise EmlabError(f"{path}: record version {version} was written by a newer emlab (this one reads "
                             f"version {RECORD_VERSION}): upgrade emergent-lab to read it")
        try:
            return cls.model_validate_json(text)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EmlabError(f"{path}: not an emlab experiment record (version {RECORD_VERSION}): {first}") from None
