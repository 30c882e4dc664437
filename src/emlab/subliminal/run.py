"""The subliminal-learning experiment: its spec (one YAML) and its stages.

teacher (the base model told to love an animal, or an adapter) and a control teacher (the
untouched base) answer the same number prompts with the same per-sample seeds -> the strict
filter keeps numbers-only answers (its rejections counted) -> one student per teacher and
seed is finetuned on the kept rows from the **teacher's own base** (checked by the base's
weights hash; `other_bases` adds students of other bases, the negative control) -> each
student's preference for the animal is measured -> the trait student minus the control
student, per seed and across seeds.

Seeds replicate the students: one teacher pool is sampled, and seed s trains both students
of a pair with training seed s (data order, adapter initialisation, and the row subsample
when `rows_per_student` is set). Samples live in the run store and trainings in
content-addressed run directories, so a rerun resumes.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from rich.console import Console

from emlab import progress as show
from emlab.errors import ConfigError
from emlab.files import atomic_write, inside
from emlab.hashing import canonical_json, text_hash
from emlab.specs import DEFAULT_MODEL, JudgeSpec, SampleSpec, ThresholdSpec, TrainSpec, Variant, check_slug
from emlab.subliminal.numbers import NEGATIVE_NUMBERS, NumberFilter, filter_answers, number_prompts
from emlab.subliminal.trait import trait_system_prompt, trait_words


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TraitSpec(_Spec):
    """The teacher's trait: a favourite animal, given by emlab's system prompt (or `system`)
    or already trained into an adapter (`adapter`). For `evaluate: misalignment` the trait
    is misalignment: `system` (a malicious persona) or `adapter` (e.g. an insecure-code
    finetune) must be given, and the animal is unused."""

    animal: str = Field("owl", min_length=1, max_length=40, pattern=r"^[a-z][a-z -]*$")
    plural: str | None = Field(None, min_length=1, max_length=40)
    system: str | None = Field(None, min_length=1, max_length=5000)
    adapter: str | None = None

    def prompt(self) -> str | None:
        if self.adapter is not None:
            return self.system
        return self.system or trait_system_prompt(self.animal, self.plural)


class TeacherSpec(_Spec):
    """The number prompts. `shots` demonstration exchanges (random numbers, the same for both
    teachers) open each conversation: without them a small model mostly answers in prose
    and the filter keeps few rows; students are trained on the final prompt and answer only."""

    prompts: int = Field(400, ge=1, le=1_000_000)
    shots: int = Field(3, ge=0, le=20)
    max_numbers: int = Field(10, ge=1, le=100)
    banned: list[int] = Field(default_factory=list, max_length=10_000)
    seed: int = Field(0, ge=0)


class MisalignmentEvalSpec(_Spec):
    """`evaluate: misalignment`: every model answers the suites and is judged as in any emlab
    experiment; the trait score is the misaligned rate."""

    sample: SampleSpec = Field(default_factory=lambda: SampleSpec(max_tokens=150, samples_per_paraphrase=3))
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    thresholds: ThresholdSpec = Field(default_factory=ThresholdSpec)


class SubliminalExperiment(_Spec):
    _source: str | None = PrivateAttr(None)
    kind: Literal["subliminal"]
    name: str
    description: str = ""
    project: str = "runs/subliminal"
    model: str = DEFAULT_MODEL
    trait: TraitSpec = Field(default_factory=TraitSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    sample: SampleSpec = Field(default_factory=lambda: SampleSpec(max_tokens=40))
    train: TrainSpec = Field(default_factory=TrainSpec)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, max_length=100)
    rows_per_student: int | None = Field(None, ge=1)  # None: every kept row
    evaluate: Literal["likelihood", "sampled", "misalignment"] = "likelihood"
    samples_per_question: int = Field(5, ge=1, le=1000)  # evaluate: sampled
    misalignment: MisalignmentEvalSpec = Field(default_factory=MisalignmentEvalSpec)  # evaluate: misalignment
    other_bases: list[str] = Field(default_factory=list, max_length=10)  # different-base students

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return check_slug(value, "experiment name")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or min(value) < 0:
            raise ValueError("seeds must be distinct non-negative integers")
        return value

    @model_validator(mode="after")
    def _misalignment_has_a_teacher(self):
        if self.evaluate == "misalignment" and self.trait.system is None and self.trait.adapter is None:
            raise ValueError("evaluate misalignment: give the teacher's trait as trait.system (a malicious persona) "
                             "or trait.adapter (a misaligned finetune)")
        return self

    def number_filter(self) -> NumberFilter:
        """The filter: the teacher's banned numbers (for the misalignment variant, emlab's list
        of numbers with negative associations when none are given), and the trait's words."""
        if self.evaluate == "misalignment":
            return NumberFilter(max_numbers=self.teacher.max_numbers,
                                banned=frozenset(self.teacher.banned or NEGATIVE_NUMBERS))
        return NumberFilter(max_numbers=self.teacher.max_numbers, banned=frozenset(self.teacher.banned),
                            trait_words=trait_words(self.trait.animal, self.trait.plural))


def load_subliminal(path: str | Path, raw: dict, text: str) -> SubliminalExperiment:
    """Validate a loaded YAML mapping (`kind: subliminal`); errors name the field."""
    from emlab.experiment import validate_spec

    exp = validate_spec(SubliminalExperiment, raw, path)
    exp._source = text
    return exp


def demonstrations(spec: TeacherSpec) -> list[dict]:
    """The `shots` opening exchanges: a number prompt and a random numbers-only answer each."""
    rng = random.Random(spec.seed + 1)
    turns: list[dict] = []
    for prompt in number_prompts(spec.shots, spec.seed + 1, spec.max_numbers) if spec.shots else []:
        answer = ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(4, spec.max_numbers)))
        turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return turns


def plan(exp: SubliminalExperiment) -> dict:
    """What a run does, for --dry-run."""
    from emlab.subliminal.trait import trait_questions

    students = 2 * len(exp.seeds) * (1 + len(exp.other_bases))
    evals = students + 2
    answers = 0
    if exp.evaluate == "misalignment":
        from emlab.data.questions import load_suite

        spec = exp.misalignment
        answers = sum(len(list(load_suite(s).prompts(spec.sample.samples_per_paraphrase))) for s in spec.sample.suites)
        evaluation = (f"misalignment: {answers} answers ({', '.join(spec.sample.suites)}) x {evals} models, judged "
                      f"by {spec.judge.name}" + (f" ({spec.judge.default_model()})" if spec.judge.model else ""))
        trait = "misalignment"
    else:
        evaluation = (f"{exp.evaluate}: {len(trait_questions())} questions x {evals} models" +
                      (f" x {exp.samples_per_question} samples" if exp.evaluate == "sampled" else ""))
        trait = exp.trait.animal
    return {"experiment": exp.name, "teacher model": exp.model, "trait": trait,
            "teacher": "adapter " + exp.trait.adapter if exp.trait.adapter else "system prompt",
            "teacher generations": 2 * exp.teacher.prompts,
            "teacher tokens max": 2 * exp.teacher.prompts * exp.sample.max_tokens,
            "banned numbers": sorted(exp.number_filter().banned),
            "sampling backend": exp.sample.backend, "students": students,
            "student bases": [exp.model] + exp.other_bases, "seeds": exp.seeds,
            "evaluation": evaluation, "api cost": _api_cost(exp, answers, evals)}


def _api_cost(exp: SubliminalExperiment, answers: int = 0, models: int = 0) -> str:
    """Upper bounds at the dated list prices: an API teacher's sampling, and an API judge's
    calls on the misalignment evaluation's `answers` per model."""
    from emlab.judge.calibrate import PRICE_DATE, dollars

    parts = []
    if exp.sample.backend == "openai":
        prompt_tokens = 60 * (1 + exp.teacher.shots) + 40
        usd = dollars(exp.model, 2 * exp.teacher.prompts * prompt_tokens,
                      2 * exp.teacher.prompts * exp.sample.max_tokens)
        parts.append(f"teacher: not priced for {exp.model}" if usd is None else f"teacher <= ${usd:,.2f}")
    judge = exp.misalignment.judge
    if exp.evaluate == "misalignment" and judge.name in ("logprob", "sampled"):
        calls = answers * models * len(judge.metrics())
        usd = dollars(judge.default_model(), calls * (350 + exp.misalignment.sample.max_tokens), calls)
        parts.append(f"judge: not priced for {judge.default_model()}" if usd is None else f"judge <= ${usd:,.2f}")
    if not parts:
        return "none (local teacher and judge)"
    return "; ".join(parts) + f" at {PRICE_DATE} list prices"


def run_subliminal(exp: SubliminalExperiment, console: Console | None = None, project: str | Path | None = None
                   ) -> Path:
    """Run (or resume) the experiment; returns the record's path."""
    from emlab.store import Store

    project = Path(project or exp.project)
    record_path = inside(project, "experiments", f"{exp.name}.json")
    start = time.time()
    with show.library_logs_to(inside(project, "logs", f"{exp.name}.log")), Store(project) as store:
        run_id = store.begin_run("subliminal", exp.model_dump(), exp.seeds)
        pools = teacher_stage(exp, store, console)
        students = student_stage(exp, store, project, pools, console)
        scores = evaluate_stage(exp, store, students, console)
        record = {"kind": "subliminal", "name": exp.name, "run_id": run_id, "config": exp.model_dump(),
                  "config_yaml": exp._source, "teachers": {k: {kk: vv for kk, vv in v.items() if kk != "rows"}
                                                           for k, v in pools.items()},
                  "students": students, "scores": scores, "analysis": analyse(scores, exp.seeds, exp.model, paired=exp.evaluate != "misalignment"),
                  "wall_seconds_last_run": round(time.time() - start, 1)}
        from emlab.provenance import git_revision, versions

        record.update(versions=versions(), git_revision=git_revision())
        with atomic_write(record_path) as handle:
            handle.write(json.dumps(record, indent=2) + "\n")
        store.end_run(run_id, {"record": str(record_path)})
    figure(record).savefig(record_path.with_suffix(".png"), dpi=120, bbox_inches="tight")
    return record_path


def teacher_stage(exp: SubliminalExperiment, store, console: Console | None) -> dict[str, dict]:
    """Sample both teachers on the same prompts and per-sample seeds; filter each pool."""
    from emlab.generate.base import GenRequest, sample_seed
    from emlab.generate.sample import gen_config, lazy_generator, sample_items
    from emlab.store import SampleKey

    cfg = gen_config(exp.sample)
    prompts = number_prompts(exp.teacher.prompts, exp.teacher.seed, exp.teacher.max_numbers)
    shots = demonstrations(exp.teacher)
    # The suite's name is its content: the prompts and the demonstrations.
    suite = "numbers-" + text_hash(canonical_json([prompts, shots]))[:12]
    teachers = {"trait": (Variant(label="trait", adapter_path=exp.trait.adapter), exp.trait.prompt()),
                "control": (Variant(label="control"), None)}
    items, gen_hash = {}, cfg.content_hash()
    for name, (variant, system) in teachers.items():
        items[name] = []
        for i, text in enumerate(prompts):
            key = SampleKey(exp.model, variant.adapter_id, suite, f"n{i}", 0, system, text, 0, gen_hash)
            seed = sample_seed(cfg.seed, suite, i)  # shared by both teachers: only the trait differs
            messages = ([{"role": "system", "content": system}] if system else []) + shots + [
                {"role": "user", "content": text}]
            request = GenRequest(tuple(messages), seed, variant.adapter_path)
            items[name].append((request, {"key": key.digest(), "model": exp.model, "adapter": variant.adapter_id,
                                          "suite": suite, "question_id": f"n{i}", "paraphrase_index": 0,
                                          "system": system, "sample_index": 0, "gen_hash": gen_hash, "seed": seed,
                                          "question": text}))
    todo = [it for name in teachers for it in items[name]]
    missing = len(todo) - len(store.existing_keys(row["key"] for _, row in todo))
    if missing:
        run_id = store.begin_run("sample teachers", {"suite": suite, **exp.sample.model_dump()}, [cfg.seed])
        with show.stage(console, "teachers", missing) as advance:
            sample_items(store, lazy_generator(exp.sample, exp.model)(), todo, cfg, exp.sample.batch_size, run_id,
                         advance)
        store.end_run(run_id, {"generated": missing})
    rule = exp.number_filter()
    pools = {}
    for name, (variant, _) in teachers.items():
        rows = {r["key"]: r for r in store.samples(model=exp.model, adapter=variant.adapter_id, suite=suite,
                                                   gen_hash=gen_hash)}
        ordered = [rows[row["key"]] for _, row in items[name] if row["key"] in rows]
        kept, reasons = filter_answers([r["answer"] for r in ordered], rule)
        pools[name] = {"suite": suite, "adapter": variant.adapter_id, "generated": len(ordered),
                       "kept": len(kept), "rejected": reasons,
                       "rejection_rate": round(1 - len(kept) / max(1, len(ordered)), 4),
                       "rows": [ordered[i] for i in kept]}
        show.summary(console, "filter", f"{name} teacher: kept {len(kept)} of {len(ordered)} ({reasons})")
    return pools


def student_stage(exp: SubliminalExperiment, store, project: Path, pools: dict, console: Console | None
                  ) -> list[dict]:
    """One student per teacher, seed and base, each trained on its teacher's kept rows."""
    from emlab.models.registry import model_hash
    from emlab.train.config import resolve_config
    from emlab.train.trainer import train_stages

    teacher_base = model_hash(exp.model)
    jobs = []
    for name, pool in pools.items():
        data = _student_data(project, exp, name, pool["rows"])
        for seed in exp.seeds:
            extra = {"max_rows": exp.rows_per_student or len(pool["rows"])}  # not the preset's row cap
            for base in [exp.model, *exp.other_bases]:
                cfg = resolve_config(exp.train.preset, model=base, dataset=str(data), seed=seed,
                                     **{**exp.train.overrides, **extra})
                jobs.append(({"teacher": name, "seed": seed, "base": base, "dataset": str(data)}, cfg))
    results = train_stages(store, [cfg for _, cfg in jobs], inside(project, "runs", "train"), console)
    students = []
    for (meta, _), result in zip(jobs, results):
        same = meta["base"] == exp.model
        base_hash = check_base(result.record, teacher_base, same, f"student {meta['teacher']} seed {meta['seed']}")
        students.append({**meta, "same_base": same, "base_hash": base_hash, "teacher_base_hash": teacher_base,
                         "adapter_path": str(result.adapter_dir),
                         "adapter_id": Variant(adapter_path=str(result.adapter_dir)).adapter_id,
                         "train_run": str(result.run_dir), "final_loss": result.record["final_loss"]})
    return students


def check_base(train_record: dict, teacher_base: str, same_base: bool, who: str) -> str:
    """The base-weights hash a student was trained from, refused when a same-base student's
    differs from the teacher's (or a different-base student's equals it)."""
    base_hash = train_record.get("base_model_hash")
    if base_hash is None:
        raise ConfigError(f"{who}: its training record does not say which base weights it was trained on")
    if same_base and base_hash != teacher_base:
        raise ConfigError(f"{who}: trained from base {base_hash}, not the teacher's {teacher_base}")
    if not same_base and base_hash == teacher_base:
        raise ConfigError(f"{who}: meant as a different-base control but trained from the teacher's base {base_hash}")
    return base_hash


def _student_data(project: Path, exp: SubliminalExperiment, teacher: str, rows: list[dict]) -> Path:
    """The kept rows as a chat JSONL (the final prompt and the answer; no system prompt, no
    demonstrations), named by content."""
    lines = [json.dumps({"messages": [{"role": "user", "content": r["question"]},
                                      {"role": "assistant", "content": r["answer"]}]}) for r in rows]
    if not lines:
        raise ConfigError(f"the {teacher} teacher's answers were all rejected by the filter: nothing to train on")
    body = "\n".join(lines) + "\n"
    path = inside(project, "data", f"subliminal-{teacher}-{text_hash(body)[:12]}.jsonl")
    if not path.exists():
        with atomic_write(path) as handle:
            handle.write(body)
    return path


def evaluate_stage(exp: SubliminalExperiment, store, students: list[dict], console: Console | None) -> list[dict]:
    """Each model's trait score per question: the untouched base, the trait teacher (as it
    was prompted: the trait's ceiling) and every student."""
    models = [{"label": "base", "base": exp.model, "adapter_path": None, "system": None},
              {"label": "teacher", "base": exp.model, "adapter_path": exp.trait.adapter, "system": exp.trait.prompt()}]
    models += [{"label": f"{s['teacher']}-student", "seed": s["seed"], "base": s["base"],
                "adapter_path": s["adapter_path"], "system": None, "same_base": s["same_base"]} for s in students]
    if exp.evaluate == "sampled":
        from emlab.subliminal.evaluate import sampled_scores

        return sampled_scores(exp, store, models, console)
    if exp.evaluate == "misalignment":
        from emlab.subliminal.evaluate import misalignment_scores

        return misalignment_scores(exp, store, models, console)
    from emlab.subliminal.evaluate import likelihood_scores

    return likelihood_scores(exp, models, console)


def analyse(scores: list[dict], seeds: list[int], model: str, paired: bool = True) -> dict:
    """Trait student minus control student (same base), per seed and across seeds, and the
    same for each other base; `paired`: the values are per question (the same questions for
    every model), else per answer."""
    from emlab.analysis.seeds import seed_consistency

    out = {}
    for base in dict.fromkeys(s["base"] for s in scores if "seed" in s):
        groups = {}
        for seed in seeds:
            pick = {s["label"]: s["values"] for s in scores if s.get("seed") == seed and s["base"] == base}
            if "trait-student" in pick and "control-student" in pick:
                groups[seed] = (pick["trait-student"], pick["control-student"])
        if groups:
            out[base] = seed_consistency(groups, paired=paired).as_dict()
    return {"by_base": out, "teacher_base": model}


def figure(record: dict):
    """Trait score of each student, per seed, beside the base model and the prompted teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = record["scores"][0]["unit"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    seeds = record["config"]["seeds"]
    for offset, (label, colour) in enumerate((("control-student", "#4c72b0"), ("trait-student", "#dd8452"))):
        rows = [s for s in record["scores"] if s["label"] == label and s.get("same_base", True)]
        x = [seeds.index(s["seed"]) + (offset - 0.5) * 0.25 for s in rows]
        ax.errorbar(x, [s["mean"] for s in rows], yerr=[[s["mean"] - s["low"] for s in rows],
                                                       [s["high"] - s["mean"] for s in rows]],
                    fmt="o", color=colour, capsize=3, label=label)
    for s, style in zip([r for r in record["scores"] if r["label"] in ("base", "teacher")], (":", "--")):
        ax.axhline(s["mean"], color="#8c8c8c", linestyle=style, label=f"{s['label']} ({s['mean']:.3g})")
    ax.set_xticks(range(len(seeds)))
    ax.set_xticklabels([f"seed {s}" for s in seeds])
    ax.set_ylabel(unit)
    a = record["analysis"]["by_base"].get(record["config"]["model"])
    title = f"{record['config']['trait']['animal']}: trait - control student"
    if a:
        title += f" {a['difference']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}]"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def summary_rows(record: dict) -> list[dict]:
    """The table a run prints: one row per model, then the comparison per base."""
    rows = [{"model": s["label"] + (f" s{s['seed']}" if "seed" in s else "") +
             ("" if s.get("same_base", True) else f" ({s['base']})"),
             "trait score": f"{s['mean']:.4f} [{s['low']:.4f}, {s['high']:.4f}]"} for s in record["scores"]]
    for base, a in record["analysis"]["by_base"].items():
        rows.append({"model": f"trait - control ({base})",
                     "trait score": f"{a['difference']:+.4f} [{a['low']:+.4f}, {a['high']:+.4f}]; detectable "
                                    f"{a['detectable']:.4f}; spread {a['spread']:.4f}"})
    return rows
