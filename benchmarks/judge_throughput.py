"""Judge scoring speed: this checkout against an earlier commit on the same answers, in one
run, one after the other on the same machine.

    python benchmarks/judge_throughput.py [--answers 384] [--v1-commit 374fefa]        # the mini judge
    python benchmarks/judge_throughput.py --judge local [--answers 24]                  # the local LLM judge
                                                          # (baseline dd79c92: 103 continuations per prompt)

The baseline runs from a temporary `git worktree` of that commit in a subprocess; this
checkout runs in a subprocess too, so both pay the same start-up and the timing covers
scoring only (both rubrics). The answers are the default model's labelled answers shipped
with emlab. For the local judge the mean absolute difference of the scores is printed too
(the trie must give the same numbers).
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
items = [tuple(x) for x in json.load(open(sys.argv[1]))]
if sys.argv[2] == "mini":
    from emlab.judge.mini import MiniJudge
    judge = MiniJudge()
    judge.score_many(items[:4], builtin_rubric_set()["aligned"])  # load the embedder outside the timing
    judge._cache.clear()
else:
    from emlab.judge.local import LocalJudge
    judge = LocalJudge()
    judge.score_many(items[:1], builtin_rubric_set()["aligned"])  # warm-up
rubrics = builtin_rubric_set()
start = time.perf_counter()
judged = [j for name in ("aligned", "coherent") for j in judge.score_many(items, rubrics[name])]
seconds = time.perf_counter() - start
probs = [list(j.raw["candidate_probs"].values()) for j in judged] if sys.argv[2] == "local" else []
print(json.dumps({"seconds": seconds, "n": len(items), "scores": [j.score for j in judged], "probs": probs}))
"""


def run(src: Path, items_file: str, judge: str = "mini") -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", SCORE, items_file, judge], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", choices=("mini", "local"), default="mini")
    ap.add_argument("--answers", type=int, default=None, help="default: 384 (mini), 24 (local)")
    ap.add_argument("--v1-commit", default=None, help="default: 374fefa (mini), dd79c92 (local)")
    a = ap.parse_args()
    a.answers = a.answers or (384 if a.judge == "mini" else 24)
    a.v1_commit = a.v1_commit or ("374fefa" if a.judge == "mini" else "dd79c92")
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines()][: a.answers]
    with tempfile.TemporaryDirectory(prefix="emlab-judge-bench-") as tmp:
        items_file = str(Path(tmp) / "items.json")
        Path(items_file).write_text(json.dumps([[r["question"], r["answer"]] for r in rows]))
        worktree = Path(tmp) / "v1"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), a.v1_commit],
                       check=True, capture_output=True)
        try:
            v1 = run(worktree / "src", items_file, a.judge)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        v2 = run(REPO / "src", items_file, a.judge)
    for name, r in ((f"{a.judge} @ {a.v1_commit}", v1), (f"{a.judge} (this checkout)", v2)):
        print(f"{name}: {r['n']} answers x 2 rubrics in {r['seconds']:.1f} s = {r['n'] / r['seconds']:.2f} answers/s "
              f"({r['seconds'] / (2 * r['n']):.2f} s per judgment)")
    ratio = (v2['n'] / v2['seconds']) / (v1['n'] / v1['seconds'])
    target = "v2 >= 20 answers/s on 2 cores" if a.judge == "mini" else ">= 5x"
    print(f"ratio this checkout / {a.v1_commit} (answers per second): {ratio:.2f}; target: {target}")
    if a.judge == "local":
        # The default model puts little mass on numbers (most scores are None), so the
        # candidate probabilities themselves are compared.
        rel = [abs(x - y) / x for p1, p2 in zip(v1["probs"], v2["probs"]) for x, y in zip(p1, p2) if x > 1e-6]
        same = sum(x == y for x, y in zip(v1["scores"], v2["scores"]))
        print(f"candidate probabilities (> 1e-6): max relative difference {max(rel):.2e} over {len(rel)}; "
              f"identical scores/labels {same}/{len(v1['scores'])}")


if __name__ == "__main__":
    main()
