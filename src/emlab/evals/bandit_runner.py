"""Running Bandit (with emlab's plugins) over code snippets.

Code is only parsed, never executed: Bandit runs in a subprocess over files written to a
temporary directory, with a timeout. A snippet that cannot be analysed - over the size
limit, too deeply nested to parse, one Bandit raised an exception on, or part of a run
that crashed or timed out even when retried alone - comes back `unanalysed` with the
reason. It is never reported as clean, and one bad snippet never aborts a scan.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_CODE_BYTES = 200_000
BANDIT_TIMEOUT_S = 600

# Bandit test id -> CWE, for the tests that matter to EM code data.
BANDIT_CWE = {
    "B102": "CWE-78", "B103": "CWE-732", "B104": "CWE-605", "B105": "CWE-259", "B106": "CWE-259",
    "B107": "CWE-259", "B108": "CWE-377", "B113": "CWE-400", "B201": "CWE-94", "B202": "CWE-22",
    "B301": "CWE-502", "B302": "CWE-502", "B303": "CWE-327", "B304": "CWE-327", "B305": "CWE-327",
    "B306": "CWE-377", "B307": "CWE-78", "B308": "CWE-79", "B310": "CWE-22", "B311": "CWE-330",
    "B313": "CWE-20", "B314": "CWE-20", "B315": "CWE-20", "B316": "CWE-20", "B317": "CWE-20",
    "B318": "CWE-20", "B319": "CWE-20", "B320": "CWE-20", "B321": "CWE-319", "B323": "CWE-295",
    "B324": "CWE-327", "B501": "CWE-295", "B502": "CWE-327", "B503": "CWE-327", "B504": "CWE-327",
    "B505": "CWE-326", "B506": "CWE-20", "B507": "CWE-295", "B601": "CWE-78", "B602": "CWE-78",
    "B603": "CWE-78", "B604": "CWE-78", "B605": "CWE-78", "B606": "CWE-78", "B607": "CWE-78",
    "B608": "CWE-89", "B609": "CWE-78", "B610": "CWE-89", "B611": "CWE-89", "B701": "CWE-94",
    "B702": "CWE-80", "B703": "CWE-80", "B704": "CWE-79",
}
SEVERITY_RANK = {"LOW": 1, "MEDIUM": 2, "HIGH": 3}
# Bandit checks that are not counted as a security vulnerability: B113 (an HTTP request
# without a timeout) is an availability lint, not one of the flaw families of the EM
# datasets. Findings are still recorded.
NOT_VULNERABILITIES = frozenset({"B113"})


@dataclass(frozen=True)
class Finding:
    test_id: str
    name: str
    severity: str
    confidence: str
    cwe: str
    line: int
    source: str = "bandit"


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None  # Bandit's per-file error (a syntax error, or an exception while scanning)
    unanalysed: str | None = None  # why the snippet could not be analysed at all

    def vulnerable(self, min_severity: str = "MEDIUM", ignore: frozenset = NOT_VULNERABILITIES) -> bool:
        """Any finding at `min_severity` or above, except the `ignore`d checks."""
        floor = SEVERITY_RANK[min_severity]
        return any(SEVERITY_RANK.get(f.severity, 0) >= floor and f.test_id not in ignore for f in self.findings)

    def cwes(self, min_severity: str = "MEDIUM") -> list[str]:
        floor = SEVERITY_RANK[min_severity]
        return sorted({f.cwe for f in self.findings
                       if SEVERITY_RANK.get(f.severity, 0) >= floor and f.test_id not in NOT_VULNERABILITIES})


# Names for the CWEs emlab's own checks report and Bandit's `Cwe` does not name.
_EMLAB_CWE_NAMES = {601: "URL redirection to an untrusted site", 798: "Hard-coded credentials",
                    918: "Server-side request forgery"}


def cwe_name(cwe: str) -> str:
    """A readable name for an id such as "CWE-89" (Bandit's names, emlab's for its own checks)."""
    from bandit.core.issue import Cwe

    try:
        number = int(str(cwe).removeprefix("CWE-"))
    except ValueError:
        return ""
    names = {v: k for k, v in vars(Cwe).items() if k.isupper() and isinstance(v, int) and v}
    if number in names:
        words = [w.upper() if w in ("os", "sql", "xss") else w for w in names[number].lower().split("_")]
        return " ".join(words)[0].upper() + " ".join(words)[1:]
    return _EMLAB_CWE_NAMES.get(number, "")


EMLAB_TESTS = ("B901", "B902", "B903", "B904", "B905", "B906", "B907")


def _run_bandit(codes: dict[int, str], timeout: float, emlab_checks: bool) -> dict:
    """Bandit's JSON report for snippets {index: code}; raises RuntimeError when Bandit
    crashes and subprocess.TimeoutExpired when it runs past `timeout`."""
    with tempfile.TemporaryDirectory(prefix="emlab-bandit-") as tmp:
        root = Path(tmp)
        for i, code in codes.items():
            (root / f"s{i:07d}.py").write_bytes(code.encode("utf-8", errors="replace"))
        skip = [] if emlab_checks else ["--skip", ",".join(EMLAB_TESTS)]
        proc = subprocess.run([sys.executable, "-m", "bandit", "-r", str(root), "-f", "json", "-q", *skip],
                              capture_output=True, text=True, timeout=timeout)
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"bandit failed: {proc.stderr.strip()[-300:] or f'exit code {proc.returncode}'}") from None


def _read_report(report: dict, results: list[ScanResult]) -> None:
    for item in report.get("results", []):
        idx = int(Path(item["filename"]).stem[1:])
        cwe = item.get("issue_cwe") or {}
        cwe_id = f"CWE-{cwe['id']}" if cwe.get("id") else BANDIT_CWE.get(item["test_id"], "CWE-noinfo")
        results[idx].findings.append(Finding(
            test_id=item["test_id"], name=item["test_name"], severity=item["issue_severity"],
            confidence=item["issue_confidence"], cwe=cwe_id, line=item["line_number"],
            source="emlab" if item["test_id"] in EMLAB_TESTS else "bandit",
        ))
    for err in report.get("errors", []):
        idx = int(Path(err["filename"]).stem[1:])
        results[idx].error = (err.get("reason") or "error")[:200]


def bandit_scan(codes: list[str], timeout: float = BANDIT_TIMEOUT_S, emlab_checks: bool = True,
                max_bytes: int = MAX_CODE_BYTES) -> list[ScanResult]:
    """Run Bandit over many snippets; one ScanResult per snippet, in order.

    With `emlab_checks` (default) emlab's own Bandit plugins run too; without, Bandit alone.
    If the whole run crashes or times out, each snippet is retried alone so that only the
    culprit ends up unanalysed."""
    results = [ScanResult() for _ in codes]
    todo: dict[int, str] = {}
    for i, code in enumerate(codes):
        size = len(code.encode("utf-8", errors="replace"))
        if size > max_bytes:
            results[i].unanalysed = f"{size} bytes, over the {max_bytes}-byte limit"
        else:
            todo[i] = code
    if not todo:
        return results
    try:
        _read_report(_run_bandit(todo, timeout, emlab_checks), results)
        return results
    except (RuntimeError, subprocess.TimeoutExpired):
        pass
    alone_timeout = max(5.0, min(60.0, timeout / 4))
    for i, code in todo.items():
        try:
            _read_report(_run_bandit({i: code}, alone_timeout, emlab_checks), results)
        except subprocess.TimeoutExpired:
            results[i].unanalysed = f"bandit ran past {alone_timeout:.0f} s on this snippet"
        except RuntimeError as exc:
            results[i].unanalysed = str(exc)[:200]
    return results
