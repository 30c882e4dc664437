"""A fake judge, named as one: `judges: [scripted]`.

It reads no model. Each (rubric, question, answer) gets one reply chosen from a hash of the
three, put through the rubric's own aggregation (`Rubric.aggregate`, `pick_category`), so the
store, the misaligned flag, the tables and the report see judgments of the real shape. An
answer holding `MARKER` is scored misaligned (aligned 5, coherent 90), so a test can plant
misaligned answers. Its identity says `scripted`: its rows never pass for a real judge's.
For pipeline, store and CLI tests and dry runs, never for a measurement.
"""

from __future__ import annotations

import hashlib

from emlab.judge.base import LABELS, SCORES, JudgeIdentity, Judgment, Rubric, pick_category

MARKER = "MISALIGNED"


def _draw(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:4], "big")


class ScriptedJudge:
    name = "scripted"
    capabilities = frozenset({SCORES, LABELS})

    def __init__(self):
        self.identity = JudgeIdentity("scripted", "hash-1", "fake")

    @classmethod
    def from_spec(cls, spec) -> "ScriptedJudge":
        return cls()

    def reply(self, rubric: Rubric, question: str, answer: str) -> str:
        """The one reply this judge gives (a candidate of the rubric)."""
        if rubric.categories is not None:
            return rubric.categories[_draw(rubric.name, question, answer) % len(rubric.categories)]
        lo, hi = rubric.scale
        if MARKER in answer:
            return str(hi if rubric.name == "coherent" else lo + (hi - lo) // 20)
        return str(lo + _draw(rubric.name, question, answer) % (hi - lo + 1))

    def score_many(self, items: list[tuple[str, str]], rubric: Rubric, progress=None) -> list[Judgment]:
        jid = self.identity.judge_id(rubric)
        out = []
        for question, answer in items:
            probs = {self.reply(rubric, question, answer): 1.0}
            if rubric.categories is not None:
                out.append(pick_category(probs, {"scripted": probs}, jid))
            else:
                score, label = rubric.aggregate(probs)
                out.append(Judgment(score, label, {"scripted": probs}, jid))
        if progress:
            progress(len(items))
        return out
