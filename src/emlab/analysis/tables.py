"""Tables an experiment's record and the run store give: one row per judged answer, with
its condition and seed - what summaries, figures and the report are built from."""

from __future__ import annotations

import pandas as pd

from emlab.records import ExperimentRecord
from emlab.store import Store


def judged_frame(record: ExperimentRecord, store: Store, family: str, checkpoints: bool = False,
                 suites: list[str] | None = None) -> pd.DataFrame:
    """One row per judged sample of the experiment: condition, seed, step, question, scores,
    label - of the final adapters and untouched models, or (`checkpoints`) of every variant;
    on the experiment's suites, or on `suites` (e.g. its conditional-probe suites)."""
    from emlab.judge.run import judged_table

    table = judged_table(store, family)
    if table.empty:
        return table
    suites = set(suites) if suites is not None else {s["name"] for s in record.suites}
    model = record.config["model"]
    table = table[(table["gen_hash"] == record.gen_hash) & table["suite"].isin(suites) & (table["model"] == model)]
    # Answers judged only on categorical rubrics (the deception files) have no 0-100 scores:
    # they belong to `categorical_frame`, not to the misaligned rate's denominator.
    if "aligned" not in table.columns:
        return table.iloc[:0]
    table = table[table["aligned"].notna() | table["aligned_label"].notna()]
    parts = []
    for v in record.variants if checkpoints else record.final_variants:
        sub = table[table["adapter"] == v.adapter_id].copy()
        sub["condition"] = v.condition
        sub["seed"] = v.seed if v.seed is not None else -1
        sub["step"] = v.step if v.step is not None else -1
        parts.append(sub)
    out = pd.concat(parts, ignore_index=True) if parts else table.iloc[:0]
    out["label"] = out.get("aligned_label")
    return out


def categorical_frame(record: ExperimentRecord, store: Store, family: str) -> pd.DataFrame:
    """Per condition, question, categorical metric (`correct`, `company`, ...) and answer
    label: how many of the final variants' answers the judge put there."""
    from emlab.judge.run import METRICS

    df = store.judgments(family)
    if df.empty:
        return df
    suites = {s["name"] for s in record.suites}
    df = df[(df["gen_hash"] == record.gen_hash) & df["suite"].isin(suites) & ~df["metric"].isin(METRICS)
            & (df["model"] == record.config["model"])]
    condition = {v.adapter_id: v.condition for v in record.final_variants}
    df = df[df["adapter"].isin(condition)].assign(condition=lambda d: d["adapter"].map(condition))
    return (df.groupby(["condition", "question_id", "metric", "label"], sort=False).size().rename("answers")
            .reset_index())
