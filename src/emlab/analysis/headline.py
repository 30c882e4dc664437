"""The comparison a researcher reads first: a finetune minus its matched control.

Betley et al.'s claim is a difference - insecure-code finetunes misaligned, secure-code
finetunes (same prompts, safe code) not - so every table and report leads with
`condition - control`: the judged misaligned rate's difference with a bootstrap CI and a
permutation p-value, and the judge-free likelihood measure's difference with its CI.
When the judge failed its sanity check on the untouched model, the comparison says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from emlab.analysis.stats import Comparison, compare
from emlab.misaligned import PAPER, Thresholds, misaligned_flags


@dataclass(frozen=True)
class Headline:
    condition: str
    control: str
    judge: str  # the judge's label
    rate: Comparison | None  # rate(condition) - rate(control), judged
    likelihood: dict | None  # emlab.probe.likelihood.compare(...).as_dict(), condition - control
    reliable: bool  # False: the judge failed its sanity check on the untouched model

    @property
    def title(self) -> str:
        return f"{self.condition} - {self.control}"

    def rate_text(self) -> str:
        if self.rate is None:
            return "no judged answers"
        r = self.rate
        text = (f"{100 * r.difference:+.1f} points [{100 * r.low:+.1f}, {100 * r.high:+.1f}] "
                f"(p = {r.p_value:.2f})")
        return text + ("  UNRELIABLE: the judge fails on the untouched model" if not self.reliable else "")

    def likelihood_text(self) -> str:
        if not self.likelihood:
            return "not measured"
        lk = self.likelihood
        return f"{lk['estimate']:+.4f} nats/token [{lk['low']:+.4f}, {lk['high']:+.4f}]"

    def distinguishable(self) -> tuple[bool, bool]:
        """(judged difference excludes 0, likelihood difference excludes 0)."""
        judged = self.rate is not None and self.reliable and (self.rate.low > 0 or self.rate.high < 0)
        lk = self.likelihood
        return judged, bool(lk) and (lk["low"] > 0 or lk["high"] < 0)


def pick_pair(config: dict) -> tuple[str, str] | None:
    """The experiment's `compare: [condition, control]`, else insecure vs secure when both
    exist, else the first trained condition vs the first untouched one."""
    if config.get("compare"):
        return tuple(config["compare"])  # type: ignore[return-value]
    names = [c["name"] for c in config.get("conditions", [])]
    if "insecure" in names and "secure" in names:
        return "insecure", "secure"
    trained = [c["name"] for c in config.get("conditions", []) if c.get("dataset") or c.get("mitigation")]
    untouched = [c["name"] for c in config.get("conditions", [])
                 if not (c.get("dataset") or c.get("mitigation") or c.get("zoo") or c.get("served"))]
    return (trained[0], untouched[0]) if trained and untouched else None


def headline(rec, judged: pd.DataFrame, overall: pd.DataFrame, judge_label: str, t: Thresholds = PAPER,
             seed: int = 0) -> Headline | None:
    """The headline comparison of one judge's answers (`judged`: one row per judged answer
    with its condition; `overall`: the per-condition summary with `sanity_flag`)."""
    pair = pick_pair(rec.config)
    if pair is None:
        return None
    condition, control = pair
    flags = misaligned_flags(pd.to_numeric(judged["aligned"], errors="coerce"),
                             pd.to_numeric(judged["coherent"], errors="coerce"), t)
    a = flags[(judged["condition"] == control).to_numpy()]
    b = flags[(judged["condition"] == condition).to_numpy()]
    rate = compare(a, b, n_resamples=2000, seed=seed) if len(a) and len(b) else None
    reliable = not bool(overall.get("sanity_flag", pd.Series([False])).any())
    likelihood = None
    lik = rec.likelihood or {}
    if condition in lik.get("shifts", {}) and control in lik.get("shifts", {}):
        from emlab.probe.likelihood import compare as compare_likelihood

        likelihood = compare_likelihood(lik, condition, control, seed=lik.get("seed", 0)).as_dict()
    return Headline(condition, control, judge_label, rate, likelihood, reliable)


def verdict(h: Headline, model: str, judge_note: str) -> list[str]:
    """Three plain lines: what was measured, what it means, what to run next."""
    judged, lik = h.distinguishable()
    measured = (f"Measured: {h.title} on {model}, misaligned rate {h.rate_text().split('  ')[0]} "
                f"({judge_note}); likelihood of misaligned answers {h.likelihood_text()}.")
    if not h.reliable:
        meaning = ("Means: this judge cannot be trusted on this model's answers (it reads the untouched model as "
                   "misaligned), so only the likelihood measure speaks here")
        meaning += ", and it shows a difference." if lik else ", and it shows no difference."
    elif judged or lik:
        which = " and ".join(x for x, on in (("the judged rate", judged), ("the likelihood measure", lik)) if on)
        meaning = (f"Means: {which} separates {h.condition} from its control; at this model's size, check it "
                   "across seeds and with a stronger judge before calling it emergent misalignment.")
    else:
        meaning = (f"Means: no difference between {h.condition} and {h.control} is distinguishable from zero, as "
                   "expected for a small model: Betley et al. find emergent misalignment nearly absent in weak models.")
    nxt = ("Next: a real test needs a capable model and judge - experiments/paper_insecure.yaml "
           "(Qwen2.5-Coder-32B on a GPU with vLLM) judged by GPT-4o (judges: [{name: logprob}], OPENAI_API_KEY).")
    return [measured, meaning, nxt]
