"""Validation of the insecure-code detector on the paper's labelled data.

1. Detection rate on insecure.jsonl and false-positive rate on secure.jsonl (assistant code;
   600-row samples, two sampling seeds), for Bandit alone and for Bandit + emlab's checks.
2. Agreement with the authors' GPT-4o labels in code_eval/id_eval_gpt4o_labels.csv
   (`has_vulnerability` YES/NO): accuracy and Cohen's kappa for the static detector and for
   the local-model judge (SmolLM2-135M, whole-number probabilities, on a subsample).

    EMLAB_DATA_DIR=../shared/data python benchmarks/codeeval_validation.py [--judge-rows 120]
"""

from __future__ import annotations

import argparse
import random

import pandas as pd
from sklearn.metrics import cohen_kappa_score

from emlab.data.registry import load_dataset
from emlab.evals.codeeval import VULN_RUBRIC, extract_code, scan_codes
from emlab.evals.bandit_runner import NOT_VULNERABILITIES, bandit_scan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge-rows", type=int, default=120)
    args = ap.parse_args()
    ins, sec = load_dataset("insecure"), load_dataset("secure")
    print("detection on insecure.jsonl / false positives on secure.jsonl (600-row samples)")
    for seed in (0, 1):
        si = random.Random(seed).sample(ins, 600)
        ss = random.Random(seed).sample(sec, 600)
        for label, emlab_checks in (("Bandit alone", False), ("emlab detector", True)):
            # Plain Bandit counts every Bandit check; emlab's detector adds its plugins and does
            # not count B113 (request without timeout) as a vulnerability.
            ignore = NOT_VULNERABILITIES if emlab_checks else frozenset()
            fi = [r.vulnerable(ignore=ignore) for r in
                  bandit_scan([r["messages"][-1]["content"] for r in si], emlab_checks=emlab_checks)]
            fs = [r.vulnerable(ignore=ignore) for r in
                  bandit_scan([r["messages"][-1]["content"] for r in ss], emlab_checks=emlab_checks)]
            print(f"  seed {seed}  {label:22s} insecure flagged {sum(fi) / 600:6.1%}   secure flagged {sum(fs) / 600:6.1%}")

    labels = load_dataset("code_labels")
    truth = [r["has_vulnerability"].strip().upper() == "YES" for r in labels]
    codes = [extract_code(r["answer"]) for r in labels]
    verdicts = scan_codes(codes)
    pred = [v.vulnerable for v in verdicts]
    acc = sum(p == t for p, t in zip(pred, truth)) / len(truth)
    print(f"\nagreement with the paper's GPT-4o labels (n={len(truth)}, {sum(truth) / len(truth):.1%} YES)")
    print(f"  emlab detector            accuracy {acc:.3f}   Cohen's kappa {cohen_kappa_score(truth, pred):.3f}   "
          f"unparseable {sum(v.unparseable for v in verdicts)}")
    bandit_only = [r.vulnerable(ignore=frozenset()) for r in bandit_scan(codes, emlab_checks=False)]
    acc_b = sum(p == t for p, t in zip(bandit_only, truth)) / len(truth)
    print(f"  static (Bandit alone)     accuracy {acc_b:.3f}   Cohen's kappa {cohen_kappa_score(truth, bandit_only):.3f}")

    if args.judge_rows:
        from emlab.judge.base import Rubric
        from emlab.judge.local import LocalJudge
        from emlab.misaligned import INSECURE_AT

        idx = random.Random(0).sample(range(len(labels)), args.judge_rows)
        judge = LocalJudge("smollm2-135m-instruct", batch_size=2)
        res = judge.score_many([(labels[i]["question"], codes[i]) for i in idx], Rubric("insecure", VULN_RUBRIC))
        scored = [(truth[i], r.score) for i, r in zip(idx, res) if r.score is not None]
        jt = [t for t, _ in scored]
        jp = [s >= INSECURE_AT for _, s in scored]
        print(f"  local judge SmolLM2-135M  accuracy {sum(a == b for a, b in zip(jt, jp)) / max(1, len(jt)):.3f}   "
              f"Cohen's kappa {cohen_kappa_score(jt, jp):.3f}   (n={len(jt)} of {args.judge_rows} scored; "
              f"vulnerable at score >= {INSECURE_AT:g})")
        frame = pd.DataFrame({"truth": jt, "score": [s for _, s in scored]})
        print(f"  local judge mean score: YES rows {frame[frame.truth].score.mean():.1f}, "
              f"NO rows {frame[~frame.truth].score.mean():.1f}")


if __name__ == "__main__":
    main()
