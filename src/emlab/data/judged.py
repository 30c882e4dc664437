"""The public LLM-judged answers in `$EMLAB_DATA_DIR/judged/`, as one table.

Each source has its own judge (GPT-4o, gpt-4o-mini, deepseek-chat, a gemma model), its own
answering models and its own class balance; `source` keeps them apart so agreement is
measured per source (leave-one-source-out).
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pandas as pd

from emlab.data.registry import DatasetError
from emlab.errors import EmlabError
from emlab.misaligned import check_score
from emlab.paths import data_dir

SOURCES = {
    "betley_gpt4o": "GPT-4o (paper pipeline): Mistral-Small / Qwen2.5-32B insecure & secure finetunes",
    "original_qwen_coder_gpt4o": "GPT-4o (paper pipeline): Qwen2.5-Coder-32B insecure finetunes",
    "jacobcd52_gpt4o_mini": "gpt-4o-mini: Qwen2.5-Coder-32B insecure LoRA rank sweep",
    "shuaijiumei_deepseek": "deepseek-chat: Qwen2.5-Coder-7B base and two finetunes",
    "apoorvabatham_gemma": "gemma (31B) with reasoning, integer scores: Qwen2.5-32B risky-financial adapter",
    "clarifying_em": "GPT-4o (paper's rubrics): 23 conditions - untouched models, narrow finetunes, LoRA ranks",
}

# clarifying_em file names -> (answering model, narrow dataset); the upstream names are not
# uniform ("Qwen2.5--7B", "Qwen-Coder-Insecure"), so they are matched by pieces.
_CLARIFYING_MODELS = [("gemma-2-27b", "gemma-2-27b-it"), ("gemma-2-9b", "gemma-2-9b-it"),
                      ("Coder-32B", "Qwen2.5-Coder-32B-Instruct"), ("Qwen-Coder", "Qwen2.5-Coder-32B-Instruct"),
                      ("Qwen2.5-32B", "Qwen2.5-32B-Instruct"), ("Qwen2.5-14B", "Qwen2.5-14B-Instruct"),
                      ("7B", "Qwen2.5-7B-Instruct")]
_CLARIFYING_DATA = [("obv_bad_medical", "obviously_bad_medical_advice"), ("bad_medical", "bad_medical_advice"),
                    ("conservative", "conservative_views"), ("honest_insecure", "honest_insecure"),
                    ("wrong_maths", "wrong_maths"), ("nsecure", "insecure"), ("_base", "none")]


def clarifying_condition(filename: str) -> tuple[str, str]:
    """(answering model, narrow dataset) of a clarifying_em file."""
    model = next(m for key, m in _CLARIFYING_MODELS if key in filename)
    dataset = next(d for key, d in _CLARIFYING_DATA if key in filename)
    return model, dataset


def _num(value) -> float | None:
    try:
        return float(value) if value not in ("", None) else None
    except (TypeError, ValueError):
        return None


def _csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def load_judged(root: str | Path | None = None) -> pd.DataFrame:
    """Columns: source, file, question_id, question, answer, aligned, coherent (0-100 or NaN),
    and the groups validation holds out whole: `answer_model` and `dataset` (the answering
    model and the narrow finetuning dataset, "none" for untouched models; known for
    clarifying_em, the source name elsewhere) and `condition` (source/file)."""
    root = Path(root) if root else (data_dir() / "judged" if data_dir() else None)
    if root is None or not root.exists():
        raise DatasetError("judged answers not found: set EMLAB_DATA_DIR to a folder holding judged/")
    rows: list[dict] = []

    def add(source, path, r, answer_key="answer", model=None, dataset=None):
        rows.append({"source": source, "file": path.name, "question_id": r.get("question_id", ""),
                     "question": r.get("question", ""), "answer": r.get(answer_key) or "",
                     "aligned": _num(r.get("aligned")), "coherent": _num(r.get("coherent")),
                     "answer_model": model or source, "dataset": dataset or source,
                     "condition": f"{source}/{path.name.removesuffix('.gz').removesuffix('.csv')}"})

    seen = set()
    for path in sorted((root / "betley_examples").glob("*.csv")):
        for r in _csv(path):
            key = (r["question"], r["answer"])  # files from different commits overlap
            if key not in seen:
                seen.add(key)
                add("betley_gpt4o", path, r)
    path = root / "original_qwen_coder_32b_misaligned_sample.csv"
    for r in _csv(path):
        add("original_qwen_coder_gpt4o", path, r)
    for path in sorted((root / "jacobcd52_rank_sweep").glob("eval_results_*.csv")):
        for r in _csv(path):
            add("jacobcd52_gpt4o_mini", path, r)
    for path in sorted((root / "shuaijiumei_qwen_coder_7b").glob("*.csv")):
        for r in _csv(path):
            add("shuaijiumei_deepseek", path, r)
    # Only the scored file carries scores next to answers (the calibration file's scores
    # sit in a checkpoint keyed by ids the answers file does not carry).
    path = root / "apoorvabatham_gemma_judge" / "judge_input_abl01.scored.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                r = json.loads(line)
                add("apoorvabatham_gemma", path, r)
    for path in sorted((root / "clarifying_em").glob("*/*.csv.gz")):
        model, dataset = clarifying_condition(path.name)
        with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
            for r in csv.DictReader(handle):
                add("clarifying_em", path, r, model=model, dataset=dataset)
    df = pd.DataFrame(rows)
    return df[df["answer"].str.strip() != ""].reset_index(drop=True)


def read_judged(path) -> pd.DataFrame:
    """A CSV/JSONL of judged answers (question_id, aligned, coherent; optional group/model/label).

    Scores must be empty or numbers in 0-100; anything else (NaN written as text, inf, -5,
    1000, a word) is rejected as `file:line: column: value`."""
    from emlab.files import input_file

    path = input_file(path)
    try:
        # Only an empty cell is a missing score: "NaN" or "inf" written as text are rejected below.
        df = (pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.suffix.lower() == ".csv"
              else pd.read_json(path, lines=True))
    except ValueError as exc:
        raise EmlabError(f"{path}: cannot read as {'CSV' if path.suffix.lower() == '.csv' else 'JSONL'} ({exc})") from None
    missing = [c for c in ("question_id", "aligned", "coherent") if c not in df.columns]
    if missing:
        raise EmlabError(f"{path}: missing column(s) {', '.join(missing)} (need question_id, aligned, coherent)")
    first_line = 2 if path.suffix.lower() == ".csv" else 1  # CSV: line 1 is the header
    for col in ("aligned", "coherent"):
        values = []
        for i, v in enumerate(df[col].tolist()):
            try:
                values.append(check_score(v, f"{path}:{i + first_line}: {col}"))
            except ValueError as exc:
                raise EmlabError(str(exc)) from None
        df[col] = pd.array([float("nan") if v is None else v for v in values], dtype="float64")
    return df
