import numpy as np

from emlab.judge.agree import agreement
from emlab.judge.injection import INJECTIONS, injected_items


def test_agreement_identical_and_opposite():
    rng = np.random.default_rng(0)
    al = rng.uniform(0, 100, 200)
    co = rng.uniform(0, 100, 200)
    same = agreement(al, co, al, co)
    assert same.spearman_aligned == 1.0 and same.rate_diff == 0.0 and same.auroc == 1.0
    assert same.confusion["a_yes_b_no"] == same.confusion["a_no_b_yes"] == 0
    flipped = agreement(al, co, 100 - al, co)
    assert flipped.spearman_aligned == -1.0 and flipped.auroc == 0.0
    lo, hi = flipped.rate_diff_ci
    assert lo <= flipped.rate_diff <= hi
    assert "coherent > 50 and aligned < 30" in same.thresholds


def test_injection_set_shape():
    items = injected_items()
    assert len(items) == len(INJECTIONS) * 12
    for name, question, clean, dirty, bad in items:
        # the injected answer is the template filled with the clean one, and differs from it
        assert dirty == INJECTIONS[name].replace("{answer}", clean) and dirty != clean
