"""The judging stage: stored samples -> judgments, and answers from any file.

    emlab judge run --judge mini --project P

Judging reads samples from the run store and never regenerates them. Each judgment is
keyed by (sample, judge id, metric); the judge id comes from the judge's typed identity
and the rubric's hash, so a rerun with the same judge issues zero calls. Blank answers are
labelled EMPTY without a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from rich.console import Console

from emlab import progress as show
from emlab.judge.base import (Judge, Judgment, Rubric, answers, builtin_rubric_set, categories_of, persona_rubric,
                              score_items)
from emlab.misaligned import RUBRIC_FAMILIES
from emlab.store import Selection, Store

BATCH = 64
METRICS = ("aligned", "coherent")


@dataclass
class JudgeReport:
    judged: int
    cached: int
    calls: int
    left_to_others: int = 0  # claimed by another process judging the same project


def rubrics_for(suite_name: str, question_id: str, metrics: tuple[str, ...]) -> dict[str, Rubric]:
    """See `_rubrics`; a suite loaded from a file in this process is found by its name (and
    its content hash keys the cache, so two files with one name never share rubrics)."""
    from emlab.data.questions import LOADED

    loaded = LOADED.get(suite_name.split("~")[0])
    return _rubrics(suite_name, loaded.sha256 if loaded else None, question_id, metrics)


@lru_cache(maxsize=4096)
def _rubrics(suite_name: str, suite_sha: str | None, question_id: str, metrics: tuple[str, ...]) -> dict[str, Rubric]:
    """The rubrics a sample is judged with: for 0-100 questions the question's own judge
    prompts when its suite has them (the paper's YAMLs), else emlab's built-in rubrics; for
    categorical questions (`free_form_judge`: the deception files) every judge prompt of the
    question, with its allowed answers; none for sampled-only questions. For the persona
    family's metrics, the persona rubric alone on every 0-100 question. A probe suite
    (`<suite>~<form>`) is judged with its suite's rubrics."""
    from emlab.data.questions import LOADED, SuiteError, load_suite
    from emlab.data.registry import DatasetError

    builtin = builtin_rubric_set()
    base = suite_name.split("~")[0]
    try:
        question = (LOADED.get(base) or load_suite(base)).question(question_id)
    except (SuiteError, DatasetError, KeyError):
        question = None
    if question is not None and question.type == "free_form":
        return {}
    if question is not None and question.type == "free_form_judge":
        return {m: Rubric(m, text, categories_of(text)) for m, text in question.judge_prompts.items()}
    if metrics == RUBRIC_FAMILIES["persona-1to5"]:
        return {"persona": persona_rubric()}  # the persona grader replaces the suite's 0-100 rubrics
    own = {m: Rubric(m, text) for m, text in (question.judge_prompts.items() if question else ())}
    # Every 0-100 rubric the question carries is judged (the paper's YAMLs add `medical`,
    # `bad_stuff`, ...), beside aligned and coherent.
    return {**{m: own.get(m, builtin[m]) for m in metrics}, **{m: r for m, r in own.items() if m not in metrics}}


def pending(store: Store, judge: Judge, metrics: tuple[str, ...], samples: list[dict], register: bool = False):
    """({(judge id, metric): [(sample, rubric)]} still to judge, judgments already stored)."""
    todo: dict[tuple[str, str], list[tuple[dict, Rubric]]] = {}
    cached = 0
    existing: dict[str, set[int]] = {}
    for s in samples:
        for metric, rubric in rubrics_for(s["suite"], s["question_id"], metrics).items():
            if not answers(judge, rubric):
                continue  # a 0-100-only judge (mini) leaves categorical rubrics to judges that answer them
            if not judge.identity.reads_rubric and metric not in METRICS:
                continue  # a judge that reads no rubric text (mini) scores aligned and coherent only
            jid = judge.identity.judge_id(rubric)
            if jid not in existing:
                if register:
                    judge.identity.register(store, rubric)
                existing[jid] = store.existing_judgments(jid, metric)
            if s["id"] in existing[jid]:
                cached += 1
            else:
                todo.setdefault((jid, metric), []).append((s, rubric))
    return todo, cached


def _judged(judge: Judge, metric: str, chunk: list[tuple[dict, Rubric]], run_id: str | None,
            progress=None) -> list[dict]:
    """Store rows: one chunk of (sample, rubric) pairs judged on `metric`."""
    results = score_items(judge, [(s["question"], s["answer"]) for s, _ in chunk], chunk[0][1], progress=progress)
    return [{"sample_id": s["id"], "judge_id": r.judge_id, "metric": metric, "score": r.score, "label": r.label,
             "raw": r.raw, "run_id": run_id} for (s, _), r in zip(chunk, results)]


def _work_key(jid: str, metric: str, sample_id: int) -> str:
    return f"judge|{jid}|{metric}|{sample_id}"


def judge_samples(store: Store, judge: Judge, metrics: tuple[str, ...] = METRICS, where: dict | None = None,
                  progress=None, run_id: str | None = None, samples: list[dict] | None = None) -> JudgeReport:
    """Judge every stored sample matching `where` (or the given `samples`) that this judge has
    not judged yet. Work is claimed a batch at a time (a lease per judgment, as sampling
    does), so two processes on one project split the judging instead of both paying for
    every call."""
    chosen = samples if samples is not None else store.samples(**(where or {}))
    todo, cached = pending(store, judge, metrics, chosen, register=True)
    judged = calls = left = 0
    for (jid, metric), pairs in todo.items():
        by_key = {_work_key(jid, metric, s["id"]): (s, r) for s, r in pairs}

        def done(chunk: list[str], jid=jid, metric=metric) -> set[str]:
            stored = store.existing_judgments(jid, metric)
            return {k for k in chunk if int(k.rsplit("|", 1)[1]) in stored}

        open_keys = list(by_key)
        while open_keys:
            mine = store.claim(open_keys, BATCH, done=done)
            if not mine:
                left += len(open_keys)  # claimed by another live judge
                break
            mine_set = set(mine)
            open_keys = [k for k in open_keys if k not in mine_set]
            try:
                rows = _judged(judge, metric, [by_key[k] for k in mine], run_id, progress)
                calls += sum(r["label"] != "EMPTY" for r in rows)
                judged += store.add_judgments(rows)
            finally:
                store.release(mine)
    return JudgeReport(judged=judged, cached=cached, calls=calls, left_to_others=left)


@lru_cache(maxsize=8)
def _worker_judge(spec_json: str):
    from emlab.judge import build_judge
    from emlab.specs import JudgeSpec

    return build_judge(JudgeSpec.model_validate_json(spec_json))


def judge_cell(spec_json: str, metric: str, pairs: list[tuple[dict, Rubric]], run_id: str | None,
               threads: int | None = None) -> list[dict]:
    """Judgments of (sample, rubric) pairs away from the store (an executor's task), in the
    batches the in-process judge uses; returns the rows to store."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    judge = _worker_judge(spec_json)
    return [row for start in range(0, len(pairs), BATCH)
            for row in _judged(judge, metric, pairs[start:start + BATCH], run_id)]


def count_unjudged(store: Store, judge: Judge, metrics: tuple[str, ...], where: Selection) -> int:
    """Judgments still to make for the samples matching `where`."""
    todo, _ = pending(store, judge, metrics, store.samples(**where))
    return sum(len(pairs) for pairs in todo.values())


def judge_stage(store: Store, judge: Judge, wheres: list[Selection], metrics: tuple[str, ...] = METRICS,
                console: Console | None = None, label: str | None = None, executor=None, spec=None) -> dict:
    """Judge the samples matching each of `wheres` (one recorded run); returns a summary.
    With an `executor` and the judge's `spec` (emlab.specs.JudgeSpec), each where and rubric
    is one task that builds the judge itself; this process stores the rows."""
    label = label or f"judge {judge.identity.label}"
    missing = sum(count_unjudged(store, judge, metrics, w) for w in wheres)
    summary = {"judge": judge.identity.label, "family": judge.identity.family, "missing": missing,
               "judged": 0, "calls": 0}
    if not missing:
        show.summary(console, label, "every judgment already stored; no calls")
        return summary
    run_id = store.begin_run("judge", {"judge": judge.identity.label, "family": judge.identity.family,
                                       "params": dict(judge.identity.params), "metrics": list(metrics),
                                       "where": wheres})
    with show.stage(console, label, missing) as advance:
        if executor is not None:
            cells = []
            for w in wheres:
                todo, _ = pending(store, judge, metrics, store.samples(**w), register=True)
                cells += [(spec.model_dump_json(), metric, pairs, run_id) for (_, metric), pairs in todo.items()]
            for _, rows in executor.run(judge_cell, cells, label):
                summary["judged"] += store.add_judgments(rows)
                summary["calls"] += sum(r["label"] != "EMPTY" for r in rows)
                advance(len(rows))
        for w in wheres if executor is None else []:
            rep = judge_samples(store, judge, metrics, w, progress=advance, run_id=run_id)
            summary["judged"] += rep.judged
            summary["calls"] += rep.calls
    store.end_run(run_id, summary)
    show.summary(console, label, f"{summary['judged']} judgments made ({summary['calls']} judge calls)")
    return summary


def judged_table(store: Store, family: str):
    """One row per judged sample of a judge family: scores and labels per metric (pandas)."""
    df = store.judgments(family)
    if df.empty:
        return df
    keys = ["sample_id", "model", "adapter", "suite", "question_id", "paraphrase_index", "sample_index", "gen_hash",
            "question", "answer"]
    out = df[keys].drop_duplicates("sample_id").set_index("sample_id")
    for metric, g in df.groupby("metric"):
        g = g.drop_duplicates("sample_id").set_index("sample_id")
        out[metric] = g["score"]
        out[f"{metric}_label"] = g["label"]
        if metric == "aligned":
            # judges that estimate it (mini-3) keep P(misaligned) in the raw record
            import pandas as pd

            p_mis = g["raw"].map(lambda raw: (json.loads(raw) or {}).get("p_misaligned") if isinstance(raw, str)
                                 and raw.startswith("{") else None)
            if p_mis.notna().any():
                out["p_misaligned"] = pd.to_numeric(p_mis, errors="coerce")
    if "persona" in out.columns and "aligned" not in out.columns:
        _persona_columns(out)
    out["judge_family"] = family
    return out.reset_index()


def _persona_columns(out) -> None:
    """A persona judge's table gets the paper's columns through `persona_as_paper` (so every
    rate, CI and report applies the persona rule); the grade and label stay as they are."""
    from emlab.misaligned import persona_as_paper

    mapped = [persona_as_paper(g, lab if isinstance(lab, str) else None)
              for g, lab in zip(out["persona"], out["persona_label"])]
    out["aligned"] = [a for a, _ in mapped]
    out["coherent"] = [c for _, c in mapped]
    out["aligned_label"] = out["persona_label"]
    out["coherent_label"] = None


def score_rows(judge: Judge, rows: list[dict], rubrics: dict[str, Rubric], progress=None) -> list[dict]:
    """Judge (question, answer) rows from any file; adds a column per metric (aligned,
    coherent; or persona with the paper's columns it maps to), label and judge_id."""
    from emlab.misaligned import persona_as_paper

    items = [(str(r["question"] if r["question"] is not None else ""), str(r["answer"] if r["answer"] is not None
                                                                           else "")) for r in rows]
    per_metric: dict[str, list[Judgment]] = {m: score_items(judge, items, rub, progress=progress)
                                             for m, rub in rubrics.items()}
    out = []
    for i, row in enumerate(rows):
        new = dict(row)
        labels = []
        for m, js in per_metric.items():
            new[m] = js[i].score
            if js[i].label:
                labels.append(js[i].label if m in ("aligned", "persona") else f"{m}:{js[i].label}")
        if "persona" in per_metric:
            new["aligned"], new["coherent"] = persona_as_paper(new["persona"], per_metric["persona"][i].label)
        new["label"] = labels[0] if labels else None
        new["judge_id"] = ";".join(sorted({js[i].judge_id for js in per_metric.values()}))
        out.append(new)
    return out
