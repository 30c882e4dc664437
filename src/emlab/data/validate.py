"""Validation of training files, by content rather than by file name.

A training file is either chat JSONL (`{"messages": [...]}` per line) or a CSV with
`prompt` and `response` columns; `validate_training_file` tells them apart by their first
bytes, so `data.JSONL`, `data.txt` or a CSV named `.jsonl` are all checked. Every problem
is reported as ``file:line: reason``. Duplicated rows are reported as warnings (legal, but
usually a mistake). A file with no rows is an error.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from emlab.hashing import canonical_json

ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 1_000_000


@dataclass
class ValidationReport:
    path: Path
    rows: int = 0
    errors: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_messages(messages: object) -> str | None:
    """The reason a `messages` value is invalid, or None when it is a valid conversation.

    Valid: an optional leading system turn, then user/assistant alternating from user,
    ending with assistant; every content a non-empty string.
    """
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    expected = "user"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages[{i}] is not an object"
        role = msg.get("role")
        if role not in ROLES:
            return f"messages[{i}].role is {role!r}, expected one of {', '.join(ROLES)}"
        content = msg.get("content")
        if not isinstance(content, str):
            return f"messages[{i}].content must be a string"
        if not content.strip():
            return f"messages[{i}].content is empty"
        if role == "system":
            if i != 0:
                return f"messages[{i}]: a system turn may only come first"
            continue
        if role != expected:
            return f"messages[{i}]: role order: got {role}, expected {expected}"
        expected = "assistant" if role == "user" else "user"
    if messages[-1].get("role") != "assistant":
        return "conversation must end with an assistant turn"
    return None


def validate_chat_jsonl(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> ValidationReport:
    """Check every line of a chat JSONL file; never raises for bad content."""
    path = Path(path)
    report = ValidationReport(path=path)
    seen: dict[str, int] = {}
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            if len(raw) > max_line_bytes:
                report.errors.append(f"{where}: line is {len(raw)} bytes, over the {max_line_bytes}-byte limit")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.errors.append(f"{where}: not valid UTF-8 (byte {exc.start})")
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                hint = " (truncated line?)" if "Unterminated" in exc.msg or "Expecting" in exc.msg else ""
                report.errors.append(f"{where}: invalid JSON: {exc.msg} at column {exc.colno}{hint}")
                continue
            if not isinstance(row, dict):
                report.errors.append(f"{where}: a line must be a JSON object")
                continue
            if "messages" not in row:
                report.errors.append(f"{where}: missing 'messages'")
                continue
            reason = check_messages(row["messages"])
            if reason:
                report.errors.append(f"{where}: {reason}")
                continue
            report.rows += 1
            key = canonical_json(row["messages"])
            if key in seen:
                report.duplicates.append(f"{where}: duplicate of line {seen[key]}")
            else:
                seen[key] = lineno
    return report


def sniff_format(path: str | Path) -> str:
    """"jsonl" when the first non-blank byte opens a JSON object, else "csv"."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return "jsonl" if head[:1] in (b"{", b"") else "csv"


def validate_csv(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> ValidationReport:
    """A prompt/response CSV: both columns present, every cell a non-empty string."""
    path = Path(path)
    report = ValidationReport(path=path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        report.errors.append(f"{path}: not valid UTF-8 (byte {exc.start})")
        return report
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        report.errors.append(f"{path}:1: invalid CSV: {exc}")
        return report
    missing = [c for c in ("prompt", "response") if c not in header]
    if missing:
        report.errors.append(f"{path}:1: neither chat JSONL nor a CSV with prompt and response columns "
                             f"(CSV header has no {', '.join(repr(m) for m in missing)}; found {header[:6]})")
        return report
    seen: dict[tuple, int] = {}
    try:
        for row in reader:
            lineno = reader.line_num
            where = f"{path}:{lineno}"
            if None in row or any(v is None for v in row.values()):
                report.errors.append(f"{where}: wrong number of columns")
                continue
            empty = [c for c in ("prompt", "response") if not row[c].strip()]
            if empty:
                report.errors.append(f"{where}: column '{empty[0]}' is empty")
                continue
            if len(row["prompt"]) + len(row["response"]) > max_line_bytes:
                report.errors.append(f"{where}: row is over the {max_line_bytes}-byte limit")
                continue
            report.rows += 1
            key = (row["prompt"], row["response"])
            if key in seen:
                report.duplicates.append(f"{where}: duplicate of line {seen[key]}")
            else:
                seen[key] = lineno
    except csv.Error as exc:
        report.errors.append(f"{path}:{reader.line_num}: invalid CSV: {exc}")
    return report


def validate_training_file(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> ValidationReport:
    """Validate chat JSONL or prompt/response CSV, whatever the file is called."""
    path = Path(path)
    report = (validate_chat_jsonl(path, max_line_bytes) if sniff_format(path) == "jsonl"
              else validate_csv(path, max_line_bytes))
    if report.ok and report.rows == 0:
        report.errors.append(f"{path}: no rows (an empty training file)")
    return report
