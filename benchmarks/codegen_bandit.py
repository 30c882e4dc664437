"""How often Bandit (medium/high severity) flags emlab's generated insecure vs secure code,
overall and per vulnerability family, next to the same figures on 600-row samples of the
paper's insecure.jsonl / secure.jsonl.

    EMLAB_DATA_DIR=../shared/data python benchmarks/codegen_bandit.py [--n 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

from emlab.data.codegen import FAMILY_BY_NAME, generate
from emlab.data.registry import load_dataset
from emlab.evals.bandit_runner import bandit_scan


def flagged(rows: list[dict]) -> list[bool]:
    # Plain Bandit (every Bandit check, none of emlab's): emlab's detector is measured in
    # codeeval_validation.py.
    return [r.vulnerable("MEDIUM", ignore=frozenset()) for r in
            bandit_scan([row["messages"][-1]["content"] for row in rows], emlab_checks=False)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ins, sec = generate("insecure-code", args.n, args.seed), generate("secure-code", args.n, args.seed)
    fi, fs = flagged(ins), flagged(sec)
    per = defaultdict(lambda: [0, 0, 0])
    for row, a, b in zip(ins, fi, fs):
        c = per[row["metadata"]["family"]]
        c[0] += 1; c[1] += a; c[2] += b
    print(f"{'family':26s} {'CWE':9s} {'bandit sees':11s} {'n':>4s} {'insecure':>9s} {'secure':>7s}")
    for fam, (n, a, b) in sorted(per.items()):
        f = FAMILY_BY_NAME[fam]
        print(f"{fam:26s} {f.cwe:9s} {str(f.bandit_visible):11s} {n:4d} {a / n:9.1%} {b / n:7.1%}")
    vis = [i for i, r in enumerate(ins) if FAMILY_BY_NAME[r["metadata"]["family"]].bandit_visible]
    print(f"\ngenerated, all families:     insecure {sum(fi) / len(fi):.1%}  secure {sum(fs) / len(fs):.1%}  (n={len(fi)})")
    print(f"generated, Bandit-visible:   insecure {sum(fi[i] for i in vis) / len(vis):.1%}  "
          f"secure {sum(fs[i] for i in vis) / len(vis):.1%}  (n={len(vis)})")
    invisible = sorted(f for f in per if not FAMILY_BY_NAME[f].bandit_visible)
    print(f"families Bandit cannot see: {', '.join(invisible)}")

    rng = random.Random(args.seed)
    for name in ("insecure", "secure"):
        rows = load_dataset(name)
        sample = rng.sample(rows, 600)
        f = flagged(sample)
        print(f"paper {name}.jsonl (600-row sample): Bandit flags {sum(f) / len(f):.1%}")


if __name__ == "__main__":
    main()
