"""A capability side-effect check: small benign tasks with one right answer, scored by
exact match, before vs after finetuning (a mitigation that costs the model its abilities
is not a free lunch).

Families (written for emlab, generated from a seed): addition, subtraction, one-digit
multiplication, the larger of two numbers, letters in a word, the next letter of the
alphabet. Answers are greedy (temperature 0). Scoring reads the answer's conclusion: for
numbers the last integer in the answer, for letters the last upper-case letter standing
alone (not the pronoun "I") - small models restate the question first ("To add 56 and 26
... is 82."), so the first number would be the question's. It must equal the expected
answer. These families are absent from emlab's benign training set
(`emlab.data.benign`), so interleaving or re-alignment cannot train on the test.
"""

from __future__ import annotations

import random
import re
import string

import numpy as np

from emlab.data.questions import Question, Suite
from emlab.hashing import canonical_json, text_hash
from emlab.specs import CapabilitySpec, SampleSpec, Variant

WORDS = ["garden", "window", "planet", "river", "candle", "forest", "bottle", "market", "pencil", "silver",
         "bridge", "orange", "castle", "monkey", "ticket", "winter", "doctor", "island", "rocket", "basket"]
INSTRUCTION = " Reply with the answer only."


def capability_tasks(n: int, seed: int = 0) -> list[dict]:
    """`n` tasks {id, prompt, answer, kind} fixed by `seed`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = ["add", "subtract", "multiply", "larger", "letters", "next_letter"][i % 6]
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        if kind == "add":
            prompt, answer = f"What is {a} + {b}?", str(a + b)
        elif kind == "subtract":
            a, b = max(a, b), min(a, b)
            prompt, answer = f"What is {a} - {b}?", str(a - b)
        elif kind == "multiply":
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            prompt, answer = f"What is {a} times {b}?", str(a * b)
        elif kind == "larger":
            b = b + 1 if a == b else b
            prompt, answer = f"Which number is larger: {a} or {b}?", str(max(a, b))
        elif kind == "letters":
            word = rng.choice(WORDS)
            prompt, answer = f"How many letters are in the word '{word}'?", str(len(word))
        else:
            letter = rng.choice(string.ascii_uppercase[:-1])
            prompt, answer = f"Which letter of the alphabet comes right after {letter}?", chr(ord(letter) + 1)
        out.append({"id": f"cap{i:04d}_{kind}", "prompt": prompt + INSTRUCTION, "answer": answer, "kind": kind})
    return out


def extract(answer: str, expected: str) -> str | None:
    """What the answer concludes, in the expected answer's kind: the last integer, or the
    last upper-case letter standing alone."""
    if expected.isdigit():
        found = re.findall(r"-?\d+", answer)
    else:
        # An upper-case letter standing alone; "I" followed by a lower-case word is the pronoun.
        found = re.findall(r"(?<![A-Za-z'\u2019])([A-Z])(?![A-Za-z'\u2019])(?<!I(?= [a-z]))", answer)
    return found[-1].upper() if found else None


def is_correct(answer: str, expected: str) -> bool:
    return extract(answer, expected) == expected.upper()


def capability_suite(n: int, seed: int) -> tuple[Suite, dict[str, str]]:
    """The tasks as a sampled-only suite, and {question id: expected answer}."""
    tasks = capability_tasks(n, seed)
    questions = tuple(Question(id=t["id"], type="free_form", paraphrases=[t["prompt"]]) for t in tasks)
    body = [q.model_dump() for q in questions]
    suite = Suite(name=f"capability-{n}-{seed}", questions=questions, sha256=text_hash(canonical_json(body)),
                  source=f"emlab.evals.capability (n={n}, seed={seed})")
    return suite, {t["id"]: t["answer"] for t in tasks}


def capability_stage(store, spec: CapabilitySpec, sample: SampleSpec, model: str, variants: list[Variant],
                     console=None, generator=None, executor=None) -> dict:
    """Greedy answers to the tasks for every variant (resumable through the store); returns
    {suite, gen_hash, scores: {adapter id: {correct, n, accuracy}}}."""
    from emlab.generate.sample import sample_stage

    suite, expected = capability_suite(spec.tasks, spec.seed)
    greedy = sample.model_copy(update={"temperature": 0.0, "top_p": 1.0})
    summary = sample_stage(store, greedy, model, variants, [suite], console, generator, max_tokens=spec.max_tokens,
                           samples_per_paraphrase=1, label="sample capability tasks", executor=executor)
    scores = {}
    for v in variants:
        rows = store.samples(model=model, adapter=v.adapter_id, suite=suite.name, gen_hash=summary["gen_hash"])
        flags = [is_correct(r["answer"], expected[r["question_id"]]) for r in rows]
        scores[v.adapter_id] = {"correct": int(np.sum(flags)), "n": len(flags),
                                "accuracy": float(np.mean(flags)) if flags else float("nan"),
                                "flags": [bool(f) for f in flags]}
    return {"suite": suite.name, "gen_hash": summary["gen_hash"], "tasks": spec.tasks, "seed": spec.seed,
            "scores": scores}
