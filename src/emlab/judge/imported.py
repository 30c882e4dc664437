"""Judged answers from elsewhere, in the run store (`emlab import-judged`).

A peer's judged file (any layout `emlab.data.judged.read_judged` reads) becomes samples of
the store - answering model, one variant per condition, a suite of their own - and the
peer's scores become the judgments of a judge named `peer:<name>`. From there every emlab
judge can score the same answers (`emlab judge run`), and `emlab judge compare` and
`emlab judge calibrate` read them like any other judge's.
"""

from __future__ import annotations

import math

import pandas as pd

from emlab.errors import EmlabError
from emlab.hashing import canonical_json, text_hash
from emlab.judge.base import JudgeIdentity, Rubric
from emlab.store import SampleKey, Store

PEER = "peer"
METRICS = ("aligned", "coherent")


def peer_identity(name: str, version: str) -> JudgeIdentity:
    """The judge behind a peer's scores: named by the user, versioned by the scores' content."""
    return JudgeIdentity(PEER, name, version, reads_rubric=False)


def _rubric(metric: str) -> Rubric:
    return Rubric(metric, f"scores imported from a judged file ({metric})")


def import_judged(store: Store, df: pd.DataFrame, name: str, suite: str | None = None,
                  model: str | None = None) -> dict:
    """Put `df` (emlab's column names: question_id, question, answer; optionally aligned,
    coherent, answer_model, condition) in `store`. Rows are keyed by their content, so
    importing the same file twice adds nothing. Returns counts and the peer judge's family."""
    missing = [c for c in ("question_id", "question", "answer") if c not in df.columns]
    if missing:
        raise EmlabError(f"import: missing column(s) {', '.join(missing)}")
    if not name or any(c in name for c in ":|/\\"):
        raise EmlabError(f"import: judge name {name!r} must be non-empty without ':', '|', '/' or '\\'")
    records = df.to_dict("records")
    # the answers key the samples (two peers' scores of one file land on the same samples);
    # the scores version the peer's judge
    answers = text_hash(canonical_json([[str(r.get(c)) for c in ("question_id", "question", "answer")]
                                        for r in records]))
    content = text_hash(canonical_json([[str(r.get(c)) for c in ("aligned", "coherent")] for r in records]))
    gen_hash = f"import:{answers[:16]}"
    suite = suite or "imported"  # one suite for every import: files with the same answers share samples
    models = df["answer_model"].astype(str) if "answer_model" in df.columns else pd.Series(model or "unknown",
                                                                                          index=df.index)
    conditions = df["condition"].astype(str) if "condition" in df.columns else pd.Series("imported", index=df.index)
    index = df.groupby([models, conditions, df["question_id"]], sort=False).cumcount()
    samples, keys = [], []
    for (i, row), m, c, k in zip(df.iterrows(), models, conditions, index):
        adapter = f"import:{c}"
        key = SampleKey(m, adapter, suite, str(row["question_id"]), 0, None, str(row["question"]), int(k),
                        gen_hash).digest()
        keys.append(key)
        samples.append({"key": key, "model": m, "adapter": adapter, "suite": suite,
                        "question_id": str(row["question_id"]), "paraphrase_index": 0, "system": None,
                        "sample_index": int(k), "gen_hash": gen_hash, "seed": 0, "question": str(row["question"]),
                        "answer": str(row["answer"]), "finish_reason": None, "n_tokens": None, "run_id": None})
    added = store.add_samples(samples)
    ids = {r["key"]: r["id"] for r in store.samples(gen_hash=gen_hash)}
    out = {"samples": len(samples), "new_samples": added, "suite": suite, "gen_hash": gen_hash, "family": None,
           "judgments": 0, "keys": keys}
    scored = [m for m in METRICS if m in df.columns]
    if scored:
        identity = peer_identity(name, content[:10])
        rows = []
        for metric in scored:
            jid = identity.register(store, _rubric(metric))
            for key, value in zip(keys, df[metric]):
                value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
                # the paper pipeline leaves `aligned` empty when its judge answered CODE or REFUSAL
                label = "UNSCORED" if value is None else None
                rows.append({"sample_id": ids[key], "judge_id": jid, "metric": metric, "score": value,
                             "label": label, "raw": None})
        out["judgments"] = store.add_judgments(rows)
        out["family"] = identity.family
    return out
