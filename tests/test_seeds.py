"""Seed consistency on synthetic data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from emlab.analysis.seeds import seed_consistency


def _groups(effects: list[float], n: int = 60, noise: float = 0.3, paired: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for s, effect in enumerate(effects):
        control = rng.normal(0, 1, n)
        condition = (control if paired else rng.normal(0, 1, n)) + effect + rng.normal(0, noise, n)
        out[s] = (condition, control)
    return out


def test_a_real_effect_in_every_seed_is_consistent():
    result = seed_consistency(_groups([0.5] * 5), paired=True)
    assert result.consistent and "consistent across seeds: all 5" in result.verdict()
    assert result.low > 0 and result.low < 0.5 < result.high
    assert all(p.low > 0 for p in result.per_seed) and len(result.per_seed) == 5


def test_no_effect_is_not_consistent_and_its_interval_covers_zero():
    result = seed_consistency(_groups([0.0] * 5), paired=True)
    assert not result.consistent and result.low < 0 < result.high
    assert "not consistent" in result.verdict() and "80% power" in result.verdict()


def test_one_lucky_seed_is_not_enough():
    result = seed_consistency(_groups([1.0, 0, 0, 0, 0]), paired=True)
    assert not result.consistent and "1 of 5 seeds" in result.verdict()
    assert result.per_seed[0].low > 0 and result.spread > 0.3
    # the across-seed interval is wide: the seeds disagree
    assert result.high - result.low > 0.3


def test_the_seed_interval_carries_between_seed_spread():
    """Same mean effect, but seeds disagree: the cluster interval must be wider than when
    they agree (a row bootstrap pooled over seeds would not see the difference)."""
    agree = seed_consistency(_groups([0.3] * 6), paired=True)
    disagree = seed_consistency(_groups([0.0, 0.6, 0.0, 0.6, 0.0, 0.6]), paired=True)
    assert disagree.high - disagree.low > 2 * (agree.high - agree.low)
    assert disagree.detectable > agree.detectable


def test_more_rows_detect_smaller_effects_unpaired():
    small = seed_consistency(_groups([0.0] * 4, n=30, paired=False), paired=False)
    large = seed_consistency(_groups([0.0] * 4, n=480, paired=False), paired=False)
    assert large.detectable < small.detectable / 2


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="no seeds"):
        seed_consistency({})
    with pytest.raises(ValueError, match="seed 3: needs values for both sides of equal length"):
        seed_consistency({3: ([1.0, 2.0], [1.0])}, paired=True)
    with pytest.raises(ValueError, match="seed 1: needs values"):
        seed_consistency({1: ([], [1.0])})


def _judged(rates: dict[tuple[str, int], float], n: int = 200):
    """A judged frame with exactly `rate` misaligned answers per (condition, seed)."""
    import pandas as pd

    rows = []
    for (condition, seed), rate in rates.items():
        k = round(rate * n)
        rows += [{"condition": condition, "seed": seed, "question_id": f"q{i % 8}",
                  "aligned": 10.0 if i < k else 90.0, "coherent": 80.0} for i in range(n)]
    return pd.DataFrame(rows)


def _headline(rates):
    from types import SimpleNamespace

    import pandas as pd

    from emlab.analysis.headline import headline

    rec = SimpleNamespace(config={"conditions": [{"name": "insecure"}, {"name": "secure"}]}, likelihood=None)
    return headline(rec, _judged(rates), pd.DataFrame({"sanity_flag": [False]}), "mini")


def test_the_headline_uses_the_across_seed_interval():
    h = _headline({**{("insecure", s): 0.3 for s in range(3)}, **{("secure", s): 0.05 for s in range(3)}})
    assert h.seeds is not None and h.seeds.consistent
    assert "across 3 seeds" in h.rate_text() and "3 of 3 seeds above zero" in h.rate_text()
    assert h.distinguishable()[0] and h.seed_text().startswith("s0 +25.0")

    lucky = _headline({("insecure", 0): 0.3, ("insecure", 1): 0.05, ("insecure", 2): 0.05,
                       **{("secure", s): 0.05 for s in range(3)}})
    assert not lucky.seeds.consistent and "1 of 3 seeds above zero" in lucky.rate_text()
    assert lucky.rate.low > 0  # pooled over answers, the lucky seed alone looks like an effect
    assert not lucky.distinguishable()[0]  # across seeds it is not


def test_one_seed_keeps_the_answer_level_comparison():
    h = _headline({("insecure", 0): 0.3, ("secure", 0): 0.05})
    assert h.seeds is None and "p = " in h.rate_text() and h.seed_text() == "one seed"


def test_an_untouched_control_is_compared_with_every_seed():
    h = _headline({("insecure", 0): 0.2, ("insecure", 1): 0.2, ("secure", -1): 0.0})
    assert [d.n_control for d in h.seeds.per_seed] == [200, 200]


def test_the_seed_table_lists_each_seed_and_the_spread():
    from emlab.analysis.report import seed_table
    from emlab.misaligned import PAPER

    table = seed_table(_judged({("insecure", 0): 0.1, ("insecure", 1): 0.3, ("base", -1): 0.0}), PAPER)
    assert list(table["seed"]) == [0, 1] and list(table["misaligned"].str[:5]) == ["10.0%", "30.0%"]
    assert set(table["spread across seeds"]) == {"14.1%"}
    assert seed_table(_judged({("insecure", 0): 0.1, ("base", -1): 0.0}), PAPER) is None
