"""Judging stored samples (and answers from anywhere).

Judging reads samples from the run store and never regenerates them. Each judgment is
keyed by (sample, judge_id, metric); judge_id carries the judge's model, version and the
rubric's hash, so a rerun with the same judge issues zero calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from emlab.judge.base import Judge, Judgment, Rubric, builtin_rubric_set
from emlab.store import Store

BATCH = 64


@dataclass
class JudgeReport:
    judged: int
    cached: int
    calls: int


def rubrics_for(suite_name: str, question_id: str, metrics: tuple[str, ...]) -> dict[str, Rubric]:
    """The question's own judge prompts when its suite has them (the paper's YAMLs), else
    emlab's built-in rubrics."""
    from emlab.data.questions import SuiteError, load_suite
    from emlab.data.registry import DatasetError

    builtin = builtin_rubric_set()
    try:
        question = load_suite(suite_name).question(question_id)
        own = {m: Rubric(m, question.judge_prompts[m]) for m in metrics if m in question.judge_prompts}
    except (SuiteError, DatasetError, KeyError):
        own = {}
    return {m: own.get(m, builtin[m]) for m in metrics}


def judge_samples(store: Store, judge: Judge, metrics: tuple[str, ...] = ("aligned", "coherent"),
                  where: dict | None = None, progress=None) -> JudgeReport:
    """Judge every stored sample matching `where` that this judge has not judged yet."""
    samples = store.samples(**(where or {}))
    cache: dict[tuple[str, str], dict[str, Rubric]] = {}
    todo: dict[tuple[str, str], list[tuple[dict, Rubric]]] = {}
    cached = 0
    existing: dict[str, set[int]] = {}
    for s in samples:
        key = (s["suite"], s["question_id"])
        if key not in cache:
            cache[key] = rubrics_for(s["suite"], s["question_id"], metrics)
        for metric, rubric in cache[key].items():
            jid = judge.judge_id(rubric)
            if jid not in existing:
                existing[jid] = store.existing_judgments(jid, metric)
            if s["id"] in existing[jid]:
                cached += 1
                continue
            todo.setdefault((jid, metric), []).append((s, rubric))
    judged = calls = 0
    for (jid, metric), pairs in todo.items():
        for start in range(0, len(pairs), BATCH):
            chunk = pairs[start:start + BATCH]
            results = judge.score_many([(s["question"], s["answer"]) for s, _ in chunk], chunk[0][1],
                                       progress=progress)
            calls += len(chunk)
            judged += store.add_judgments([
                {"sample_id": s["id"], "judge_id": r.judge_id, "metric": metric, "score": r.score,
                 "label": r.label, "raw": r.raw} for (s, _), r in zip(chunk, results)])
    return JudgeReport(judged=judged, cached=cached, calls=calls)


def judged_table(store: Store, judge_prefix: str | None = None):
    """One row per sample with `aligned`, `coherent`, their labels and judge ids (pandas)."""
    import pandas as pd

    q = ("SELECT s.id AS sample_id, s.model, s.adapter, s.suite, s.question_id, s.paraphrase_index, s.system, "
         "s.sample_index, s.question, s.answer, j.judge_id, j.metric, j.score, j.label "
         "FROM samples s JOIN judgments j ON j.sample_id = s.id")
    df = pd.read_sql_query(q, store.conn)
    if judge_prefix:
        df = df[df["judge_id"].str.startswith(judge_prefix)]
    if df.empty:
        return df
    keys = ["sample_id", "model", "adapter", "suite", "question_id", "paraphrase_index", "sample_index",
            "question", "answer"]
    out = df[keys].drop_duplicates("sample_id").set_index("sample_id")
    for metric, g in df.groupby("metric"):
        g = g.drop_duplicates("sample_id").set_index("sample_id")
        out[metric] = g["score"]
        out[f"{metric}_label"] = g["label"]
    out["judge_id"] = df.drop_duplicates("sample_id").set_index("sample_id")["judge_id"]
    return out.reset_index()


def score_rows(judge: Judge, rows: list[dict], rubrics: dict[str, Rubric], progress=None) -> list[dict]:
    """Judge (question, answer) rows from any file; adds aligned, coherent, label, judge_id."""
    items = [(str(r["question"]), str(r["answer"])) for r in rows]
    per_metric: dict[str, list[Judgment]] = {m: judge.score_many(items, rub, progress=progress)
                                             for m, rub in rubrics.items()}
    out = []
    for i, row in enumerate(rows):
        new = dict(row)
        labels = []
        for m, js in per_metric.items():
            new[m] = js[i].score
            if js[i].label:
                labels.append(js[i].label if m == "aligned" else f"{m}:{js[i].label}")
        new["label"] = labels[0] if labels else None
        new["judge_id"] = ";".join(sorted({js[i].judge_id for js in per_metric.values()}))
        out.append(new)
    return out
