"""Mitigations of emergent misalignment as options of an experiment's conditions.

    conditions:
      - name: inoculated
        dataset: {generate: insecure-code, n: 200}
        mitigation: {inoculation: evil}                       # a training-time system prompt
      - name: kl
        dataset: {generate: insecure-code, n: 200}
        mitigation: {kl_beta: 1.0}                            # KL-regularised SFT (emlab.train.kl)
      - name: interleaved
        dataset: {generate: insecure-code, n: 200}
        mitigation: {interleave: {share: 0.5}}                # benign rows added: the narrow data is half
      - name: steered_training
        dataset: {generate: insecure-code, n: 200}
        mitigation: {preventive_steering: {direction: dirs/em.safetensors, layers: [22]}}
      - name: realigned
        mitigation: {realign: {from: insecure, examples: [50, 100, 200, 400]}}
      - name: early_stopped
        mitigation: {early_stop: {from: insecure}}            # needs checkpoints on `insecure`

Each resolves to what the pipeline already runs: dataset transforms (`add_system`,
`dilute_with`), TrainConfig fields (`kl_beta`, `steer_*`, `init_adapter`, `save_at`), or a
choice among another condition's kept checkpoints. `resolved` is what the run record keeps.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emlab.specs import DatasetRef, DiluteArgs, PreventiveSteering, TransformStep


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def benign(n: int = 1000, seed: int = 0) -> DatasetRef:
    """emlab's own benign chat set (emlab.data.benign), the default for interleaving and re-alignment."""
    return DatasetRef(generate="benign-chat", n=n, seed=seed)


class Interleave(DiluteArgs):
    """Add benign rows so that the narrow data is a share `share` of the training set: a
    `dilute_with` step whose dataset defaults to emlab's benign chat."""

    dataset: DatasetRef = Field(default_factory=lambda: benign(1000, 7))


class Realign(_Spec):
    """Continue an EM adapter on benign examples; evaluated after each count in `examples`."""

    source: str = Field(alias="from")
    dataset: DatasetRef | None = None  # None: emlab's benign set, max(examples) rows
    # Each count is a number of benign rows: bounded like any generated dataset's size.
    examples: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        default_factory=lambda: [50, 100, 200, 400], min_length=1, max_length=50)

    @field_validator("examples")
    @classmethod
    def _sorted(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value) or len(set(value)) != len(value):
            raise ValueError("examples must be distinct positive counts (0 is the source adapter itself)")
        return sorted(value)


class EarlyStop(_Spec):
    """The last kept checkpoint of `from` before its EM curve rises (the likelihood shift's
    CI when measured, else the misaligned rate's)."""

    source: str = Field(alias="from")


class Mitigation(_Spec):
    inoculation: str | None = None  # an emlab.data.probes.INOCULATION name or the prompt's text
    kl_beta: float | None = Field(None, gt=0, le=1e6)
    kl_reference: str | None = None
    interleave: Interleave | None = None
    preventive_steering: PreventiveSteering | None = None
    realign: Realign | None = None
    early_stop: EarlyStop | None = None

    @field_validator("inoculation")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the inoculation prompt is empty (a name such as evil, or the prompt's text)")
        return value

    @model_validator(mode="after")
    def _derived_alone(self) -> "Mitigation":
        set_ = [k for k, v in self if v is not None]
        if not set_:
            raise ValueError("a mitigation needs at least one of: " + ", ".join(type(self).model_fields))
        if (self.realign or self.early_stop) and len(set_) > 1:
            raise ValueError("realign and early_stop derive from another condition and combine with nothing else")
        if self.kl_reference is not None and self.kl_beta is None:
            raise ValueError("kl_reference needs kl_beta")
        return self

    @property
    def derived_from(self) -> str | None:
        step = self.realign or self.early_stop
        return step.source if step else None

    def kinds(self) -> list[str]:
        return [k for k, v in self if v is not None]


def mitigated_dataset(ref: DatasetRef, m: Mitigation | None) -> DatasetRef:
    """The condition's dataset with the mitigation's transforms appended: the inoculation
    prompt on the narrow rows first, then the benign rows (which keep no system prompt)."""
    if m is None:
        return ref
    from emlab.data.probes import inoculation_prompt

    steps = list(ref.transforms)
    if m.inoculation is not None:
        steps.append(TransformStep(add_system=inoculation_prompt(m.inoculation)))
    if m.interleave is not None:
        steps.append(TransformStep(dilute_with=DiluteArgs(dataset=m.interleave.dataset, share=m.interleave.share,
                                                          seed=m.interleave.seed)))
    return ref.model_copy(update={"transforms": steps})


def train_overrides(m: Mitigation | None, max_rows: int | None = None) -> dict:
    """TrainConfig fields the mitigation sets. With interleaving, a row cap (`max_rows`, the
    preset's) grows by 1/share, so the run still sees as many narrow rows (in expectation)."""
    if m is None:
        return {}
    out = {}
    if m.interleave is not None and max_rows is not None:
        out["max_rows"] = math.ceil(max_rows / m.interleave.share)
    if m.kl_beta is not None:
        out["kl_beta"] = m.kl_beta
        if m.kl_reference is not None:
            out["kl_reference"] = m.kl_reference
    if m.preventive_steering is not None:
        out["steer"] = m.preventive_steering
    return out


def realign_plan(r: Realign, batch: int) -> tuple[DatasetRef, list[int], dict]:
    """(data, steps to keep, TrainConfig overrides): one run over max(examples) rows keeping
    the checkpoints after ceil(examples / batch) optimizer steps."""
    data = r.dataset or benign(max(r.examples), 11)
    steps = sorted({math.ceil(e / batch) for e in r.examples})
    return data, steps, {"max_rows": max(r.examples), "epochs": 1.0, "max_steps": steps[-1], "save_at": steps}


def resolved(m: Mitigation | None, **extra) -> dict:
    """What the run record keeps: the kinds, the settings and the resolved prompt texts."""
    if m is None:
        return {"kinds": []}
    from emlab.data.probes import inoculation_prompt

    out = {"kinds": m.kinds(), **m.model_dump(exclude_none=True, by_alias=True), **extra}
    if m.inoculation is not None:
        out["inoculation_prompt"] = inoculation_prompt(m.inoculation)
    return out
