"""Judges: one protocol (`Judge.score_many`, emlab.judge.base) with declared capabilities,
backends named in `JUDGES` and imported only when built (`build_judge`): `logprob` and
`sampled` (the paper's judge over any OpenAI-compatible API), `local` (any local instruct
model, exact whole-number probabilities), `mini` (emlab's embedded offline judge) and
`scripted` (a fake: fixed scores from a hash of the answer, for pipeline tests)."""

from __future__ import annotations

from emlab.registry import resolve

JUDGES = {
    "logprob": "emlab.judge.api:APIJudge",
    "sampled": "emlab.judge.api:APIJudge",
    "local": "emlab.judge.local:LocalJudge",
    "mini": "emlab.judge.mini:MiniJudge",
    "scripted": "emlab.judge.scripted:ScriptedJudge",
}


def build_judge(spec):
    """The judge a `JudgeSpec` describes (one instance per stage, shared by its conditions)."""
    return resolve(JUDGES, spec.name, "judge").from_spec(spec)


__all__ = ["JUDGES", "build_judge"]
