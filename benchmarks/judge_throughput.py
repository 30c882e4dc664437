"""Mini-judge scoring speed: v2 (this checkout) against v1 (the last release before it,
commit 374fefa) on the same answers, in one run, one after the other on the same machine.

    python benchmarks/judge_throughput.py [--answers 384] [--v1-commit 374fefa]

v1 runs from a temporary `git worktree` of that commit in a subprocess; v2 runs in a
subprocess too, so both pay the same start-up and the timing covers scoring only (both
rubrics, features computed once per answer as each version does). The answers are the
default model's labelled answers shipped with emlab.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELLED = REPO / "src" / "emlab" / "judge" / "labels" / "smollm2_quickstart.jsonl"

SCORE = r"""
import json, sys, time
from emlab.judge.base import builtin_rubric_set
from emlab.judge.mini import MiniJudge
items = [tuple(x) for x in json.load(open(sys.argv[1]))]
judge = MiniJudge()
rubrics = builtin_rubric_set()
judge.score_many(items[:4], rubrics["aligned"])  # load the embedder outside the timing
judge._cache.clear()
start = time.perf_counter()
for name in ("aligned", "coherent"):
    judge.score_many(items, rubrics[name])
print(json.dumps({"seconds": time.perf_counter() - start, "n": len(items)}))
"""


def run(src: Path, items_file: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", SCORE, items_file], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=int, default=384)
    ap.add_argument("--v1-commit", default="374fefa")
    a = ap.parse_args()
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines()][: a.answers]
    with tempfile.TemporaryDirectory(prefix="emlab-judge-bench-") as tmp:
        items_file = str(Path(tmp) / "items.json")
        Path(items_file).write_text(json.dumps([[r["question"], r["answer"]] for r in rows]))
        worktree = Path(tmp) / "v1"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), a.v1_commit],
                       check=True, capture_output=True)
        try:
            v1 = run(worktree / "src", items_file)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        v2 = run(REPO / "src", items_file)
    for name, r in (("mini v1", v1), ("mini v2", v2)):
        print(f"{name}: {r['n']} answers x 2 rubrics in {r['seconds']:.1f} s = {r['n'] / r['seconds']:.1f} answers/s")
    print(f"ratio v2 / v1 (answers per second): {(v2['n'] / v2['seconds']) / (v1['n'] / v1['seconds']):.2f}; "
          "target: v2 >= 20 answers/s on 2 cores")


if __name__ == "__main__":
    main()
