"""Judge scoring speed on the default model's own answers, each judge in a fresh process,
one after the other on the same machine, in one run.

    python benchmarks/judge_throughput.py [--answers 384]           # mini-3 against mini-2
    python benchmarks/judge_throughput.py --judge local [--answers 24] [--v1-commit dd79c92]

The answers are the gold set's (labels/smollm2_gold.jsonl, a fixed sample). Timing covers
scoring both rubrics after the judge is loaded (start-up is paid outside the timing by a
warm-up on other answers). The machine's fp32 matmul peak is measured in the same run and
printed with the result; the result is also written as JSON (`--json`).

The local LLM judge is compared with an earlier commit of itself (a `git worktree` of
`--v1-commit` in a subprocess) and the candidate probabilities must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLD = REPO / "src" / "emlab" / "judge" / "labels" / "smollm2_gold.jsonl"

SCORE = r"""
import json, sys, time
import torch
from emlab.judge.base import builtin_rubric_set
items = [tuple(x) for x in json.load(open(sys.argv[1]))]
warm = [(q, a + " (warm-up)") for q, a in items[:4]]
rubrics = builtin_rubric_set()
if sys.argv[2].startswith("mini"):
    from emlab.judge.mini import mini_judge
    judge = mini_judge(sys.argv[2])
else:
    from emlab.judge.local import LocalJudge
    judge = LocalJudge()
    warm = warm[:1]
judge.score_many(warm, rubrics["aligned"])  # load the model outside the timing
start = time.perf_counter()
judged = [j for name in ("aligned", "coherent") for j in judge.score_many(items, rubrics[name])]
seconds = time.perf_counter() - start
probs = [list(j.raw["candidate_probs"].values()) for j in judged] if sys.argv[2] == "local" else []
print(json.dumps({"seconds": seconds, "n": len(items), "scores": [j.score for j in judged], "probs": probs,
                  "threads": torch.get_num_threads()}))
"""


def run(src: Path, items_file: str, judge: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", SCORE, items_file, judge], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def answers(n: int) -> list[list[str]]:
    rows = [json.loads(line) for line in GOLD.read_text().split("\n") if line.strip()]
    random.Random(0).shuffle(rows)
    return [[r["question"], r["answer"]] for r in rows[:n]]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from common import matmul_peak_gflops, write_result

    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", choices=("mini", "local"), default="mini")
    ap.add_argument("--answers", type=int, default=None, help="default: 384 (mini), 24 (local)")
    ap.add_argument("--v1-commit", default="dd79c92", help="the local judge's baseline commit")
    a = ap.parse_args()
    n = a.answers or (384 if a.judge == "mini" else 24)
    peak = matmul_peak_gflops()
    with tempfile.TemporaryDirectory(prefix="emlab-judge-bench-") as tmp:
        items_file = str(Path(tmp) / "items.json")
        Path(items_file).write_text(json.dumps(answers(n)))
        if a.judge == "mini":
            runs = {"mini-2": run(REPO / "src", items_file, "mini-2"), "mini-3": run(REPO / "src", items_file, "mini-3")}
        else:
            worktree = Path(tmp) / "v1"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), a.v1_commit],
                           check=True, capture_output=True)
            try:
                runs = {f"local @ {a.v1_commit}": run(worktree / "src", items_file, "local")}
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True)
            runs["local (this checkout)"] = run(REPO / "src", items_file, "local")
    (base_name, base), (new_name, new) = runs.items()
    print(f"machine: fp32 matmul peak {peak:.1f} GFLOP/s, {new['threads']} torch threads; dtype float32")
    for name, r in runs.items():
        print(f"{name}: {r['n']} answers x 2 rubrics in {r['seconds']:.1f} s = {r['n'] / r['seconds']:.2f} answers/s")
    ratio = (new["n"] / new["seconds"]) / (base["n"] / base["seconds"])
    print(f"ratio {new_name} / {base_name} (answers per second): {ratio:.2f}")
    rows = [{"judge": k, "answers": r["n"], "seconds": round(r["seconds"], 1),
             "answers/s (both rubrics)": round(r["n"] / r["seconds"], 2)} for k, r in runs.items()]
    summary = f"Ratio {new_name} / {base_name} (answers per second): **{ratio:.2f}x**."
    if a.judge == "local":
        rel = [abs(x - y) / x for p1, p2 in zip(base["probs"], new["probs"]) for x, y in zip(p1, p2) if x > 1e-6]
        same = sum(x == y for x, y in zip(base["scores"], new["scores"]))
        line = (f"candidate probabilities (> 1e-6): max relative difference {max(rel):.2e} over {len(rel)}; "
                f"identical scores/labels {same}/{len(base['scores'])}")
        print(line)
        summary += " " + line + "."
    name = "judge_throughput" if a.judge == "mini" else "judge_throughput_local"
    title = ("Offline judge speed: mini-3 against mini-2" if a.judge == "mini"
             else "Local LLM judge speed against an earlier commit")
    write_result(name, title, "python benchmarks/judge_throughput.py" + ("" if a.judge == "mini" else " --judge local"),
                 rows, summary, peak)

if __name__ == "__main__":
    main()
