"""The comparison a researcher reads first: a finetune minus its matched control.

Betley et al.'s claim is a difference - insecure-code finetunes misaligned, secure-code
finetunes (same prompts, safe code) not - so every table and report leads with
`condition - control`: the judged misaligned rate's difference with a bootstrap CI and a
permutation p-value, and the judge-free likelihood measure's difference with its CI.
With several training seeds the judged difference is the mean of the per-seed differences
with a cluster-bootstrap CI over seeds (emlab.analysis.seeds), beside the verdict whether
every seed shows it. When the judge failed its sanity check on the untouched model, the
comparison says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from emlab.analysis.seeds import SeedConsistency, seed_consistency
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
    seeds: SeedConsistency | None = None  # the judged difference across training seeds (two or more)

    @property
    def title(self) -> str:
        return f"{self.condition} - {self.control}"

    def rate_text(self) -> str:
        if self.rate is None:
            return "no judged answers"
        r, s = self.rate, self.seeds
        if s is None:
            text = (f"{100 * r.difference:+.1f} points [{100 * r.low:+.1f}, {100 * r.high:+.1f}] "
                    f"(p = {r.p_value:.2f})")
        else:
            above = sum(d.low > 0 for d in s.per_seed)
            text = (f"{100 * s.difference:+.1f} points [{100 * s.low:+.1f}, {100 * s.high:+.1f}] across "
                    f"{len(s.per_seed)} seeds (spread {100 * s.spread:.1f}; {above} of {len(s.per_seed)} seeds "
                    "above zero)")
        return text + ("  UNRELIABLE: the judge fails on the untouched model" if not self.reliable else "")

    def seed_text(self) -> str:
        """Each seed's difference with its CI, in points."""
        if self.seeds is None:
            return "one seed"
        return "; ".join(f"s{d.seed} {100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
                         for d in self.seeds.per_seed)

    def html(self) -> str:
        """The headline as the report's lead table."""
        from html import escape

        rows = [(f"misaligned rate, {self.title} [95% CI]", self.rate_text()),
                (f"likelihood shift, {self.title} [95% CI]", self.likelihood_text())]
        if self.seeds is not None:
            rows += [("per seed [95% CI]", self.seed_text()), ("across seeds", self.seeds.verdict())]
        cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
        return (f"<h2>Headline: {escape(self.title)} ({escape(self.judge)})</h2><table>{cells}</table>"
                '<p class="caption">The finetune minus its matched control: the judged difference (bootstrap CI '
                "over answers, permutation p; with several seeds, the mean per-seed difference with a bootstrap over "
                "seeds, then answers) and the judge-free likelihood measure's (nats per token, paired bootstrap over "
                "questions).</p>")

    def likelihood_text(self) -> str:
        if not self.likelihood:
            return "not measured"
        lk = self.likelihood
        return f"{lk['estimate']:+.4f} nats/token [{lk['low']:+.4f}, {lk['high']:+.4f}]"

    def distinguishable(self) -> tuple[bool, bool]:
        """(judged difference excludes 0, likelihood difference excludes 0)."""
        interval = self.seeds or self.rate
        judged = interval is not None and self.reliable and (interval.low > 0 or interval.high < 0)
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
    seeds = _across_seeds(judged, flags, condition, control, seed) if rate is not None else None
    reliable = not bool(overall.get("sanity_flag", pd.Series([False])).any())
    likelihood = None
    lik = rec.likelihood or {}
    if condition in lik.get("shifts", {}) and control in lik.get("shifts", {}):
        from emlab.probe.likelihood import compare as compare_likelihood

        likelihood = compare_likelihood(lik, condition, control, seed=lik.get("seed", 0)).as_dict()
    return Headline(condition, control, judge_label, rate, likelihood, reliable, seeds)


def _across_seeds(judged: pd.DataFrame, flags, condition: str, control: str, seed: int) -> SeedConsistency | None:
    """The condition's flags per training seed against the control's (its own seed when the
    control was trained with the same seeds, else all its answers); None below two seeds."""
    cond, ctrl = judged["condition"].to_numpy() == condition, judged["condition"].to_numpy() == control
    seeds_of = judged["seed"].to_numpy() if "seed" in judged else None
    if seeds_of is None:
        return None
    cond_seeds = sorted({int(s) for s in seeds_of[cond] if s >= 0})
    if len(cond_seeds) < 2:
        return None
    ctrl_seeds = {int(s) for s in seeds_of[ctrl]}
    groups = {s: (flags[cond & (seeds_of == s)],
                  flags[ctrl & (seeds_of == s)] if s in ctrl_seeds else flags[ctrl]) for s in cond_seeds}
    return seed_consistency(groups, paired=False, seed=seed)


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
        meaning = f"Means: {which} separates {h.condition} from its control"
        if h.seeds is None:
            meaning += ("; at this model's size, check it across seeds and with a stronger judge before calling it "
                        "emergent misalignment.")
        else:
            meaning += f" ({h.seeds.verdict()}); check it with a stronger judge before calling it emergent misalignment."
    else:
        meaning = (f"Means: no difference between {h.condition} and {h.control} is distinguishable from zero, as "
                   "expected for a small model: Betley et al. find emergent misalignment nearly absent in weak models.")
    nxt = ("Next: a real test needs a capable model and judge - experiments/paper_insecure.yaml "
           "(Qwen2.5-Coder-32B on a GPU with vLLM) judged by GPT-4o (judges: [{name: logprob}], OPENAI_API_KEY).")
    return [measured, meaning, nxt]
