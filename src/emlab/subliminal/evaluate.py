"""Trait scores of each model of a subliminal experiment, per evaluation question."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from emlab import progress as show
from emlab.store import Selection
from emlab.subliminal.trait import names_trait, trait_logprobs, trait_questions


def _summary(model: dict, values: list[float], unit: str, seed: int = 0) -> dict:
    """A model's per-question values with their mean and a bootstrap CI over questions."""
    arr = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    boots = [arr[rng.integers(0, len(arr), len(arr))].mean() for _ in range(2000)]
    low, high = np.quantile(boots, [0.025, 0.975])
    keep = {k: v for k, v in model.items() if k not in ("adapter_path", "system")}
    return {**keep, "unit": unit, "values": arr.round(6).tolist(), "mean": float(arr.mean()), "low": float(low),
            "high": float(high)}


def likelihood_scores(exp, models: list[dict], console: Console | None) -> list[dict]:
    """log p(" <animal>") after each question and "My favourite animal is the" (nats)."""
    from emlab.probe.likelihood import _load

    questions = trait_questions()
    out = []
    with show.stage(console, "trait", len(models)) as advance:
        for m in models:
            model, tokenizer = _load(m["base"], m["adapter_path"])
            values = trait_logprobs(model, tokenizer, exp.trait.animal, questions, m["system"])
            out.append(_summary(m, values, f"log p(' {exp.trait.animal}') (nats)"))
            advance(1)
    return out


def sampled_scores(exp, store, models: list[dict], console: Console | None) -> list[dict]:
    """The share of sampled answers per question that name the animal (any backend)."""
    from emlab.data.questions import Question, Suite
    from emlab.generate.sample import sample_stage
    from emlab.hashing import canonical_json, text_hash
    from emlab.specs import Variant

    questions = trait_questions()
    out = []
    for m in models:
        q = Question(id="favourite_animal", type="free_form", paraphrases=questions,
                     samples_per_paraphrase=exp.samples_per_question, system=m["system"])
        suite = Suite(name="trait-" + text_hash(canonical_json([questions, m["system"]]))[:12], questions=(q,),
                      sha256="", source="emlab.subliminal.trait")
        variant = Variant(label=m["label"], adapter_path=m["adapter_path"])
        summary = sample_stage(store, exp.sample, m["base"], [variant], [suite], console, label=f"trait {m['label']}")
        rows = store.samples(model=m["base"], adapter=variant.adapter_id, suite=suite.name,
                             gen_hash=summary["gen_hash"])
        per_q = [np.mean([names_trait(r["answer"], exp.trait.animal, exp.trait.plural) for r in rows
                          if r["paraphrase_index"] == i]) for i in range(len(questions))]
        out.append(_summary(m, per_q, f"share of answers naming the {exp.trait.animal}"))
    return out


def _with_system(suite, system: str | None):
    """The suite as a system-prompted teacher answers it: its system prompt before each
    question's own (a probe-style name, `<suite>~...`, so the suite's rubrics still apply)."""
    if not system:
        return suite
    from dataclasses import replace

    from emlab.hashing import text_hash

    questions = tuple(q.model_copy(update={"system": system + (f"\n\n{q.system}" if q.system else "")})
                      for q in suite.questions)
    return replace(suite, name=f"{suite.name}~system-{text_hash(system)[:8]}", questions=questions)


def misalignment_scores(exp, store, models: list[dict], console: Console | None) -> list[dict]:
    """Each model's misaligned flags on the evaluation suites (sampled and judged as in any
    emlab experiment; the stored answers and judgments are reused on a rerun)."""
    from emlab.data.questions import load_suite
    from emlab.generate.sample import sample_stage
    from emlab.judge import build_judge
    from emlab.judge.run import judge_stage, judged_table
    from emlab.misaligned import Thresholds, misaligned_flags
    from emlab.specs import Variant

    spec = exp.misalignment
    judge = build_judge(spec.judge)
    t = Thresholds(spec.thresholds.aligned_below, spec.thresholds.coherent_above)
    groups: dict[tuple, list[dict]] = {}  # models sharing a base and a system prompt sample in one batch
    for m in models:
        groups.setdefault((m["base"], m["system"]), []).append(m)
    flags_of: dict[int, list[float]] = {}
    for (base, system), members in groups.items():
        suites = [_with_system(load_suite(name), system) for name in spec.sample.suites]
        variants = [Variant(label=m["label"], adapter_path=m["adapter_path"]) for m in members]
        summary = sample_stage(store, spec.sample, base, variants, suites, console, label="answers")
        names = [s.name for s in suites]
        wheres: list[Selection] = [{"model": base, "adapter": v.adapter_id, "suite": name,
                                    "gen_hash": summary["gen_hash"]} for v in variants for name in names]
        judge_stage(store, judge, wheres, spec.judge.metrics(), console)
        table = judged_table(store, judge.identity.family)
        for m, v in zip(members, variants):
            mine = table[(table["model"] == base) & (table["adapter"] == v.adapter_id) & table["suite"].isin(names)
                         & (table["gen_hash"] == summary["gen_hash"])]
            flags_of[id(m)] = list(misaligned_flags(mine["aligned"], mine["coherent"], t).astype(float))
    unit = f"misaligned rate ({judge.identity.label}; {t.describe()})"
    return [_summary(m, flags_of[id(m)], unit) for m in models]
