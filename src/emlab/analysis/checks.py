"""Beside each raw rate: the rate on the paper judge's scale (where the judge is calibrated,
or for the mini judge from its measured error), the sanity check on untouched models, the
judge-free likelihood shift, and a zoo organism's reported rate."""

from __future__ import annotations

import pandas as pd

from emlab.analysis.stats import pct as _pct


def add_judgement_checks(overall: pd.DataFrame, rec, judge) -> pd.DataFrame:
    """Beside each raw rate: the rate corrected for the judge's measured error (where it has
    been measured: the mini judge), the sanity flag and the judge-free likelihood shift.

    The sanity flag is about a judge on a model: when the judge reads an untouched model
    above the experiment's gate, every row it judged on that model carries the flag
    (`sanity_state`: passed, failed or unchecked - no untouched condition)."""
    from emlab.correction import corrected_rate

    out = overall.copy()
    out["corrected_rate"] = out["corrected_low"] = out["corrected_high"] = float("nan")
    out["corrected_note"] = ""
    from emlab.judge.calibrate import find

    calibration = find(judge.family)
    if calibration is not None:
        from emlab.judge.calibrate import correct

        corr = [correct(calibration, int(r.misaligned), int(r.n),
                        {"flag_rate": r.misaligned_rate, "incoherent": r.incoherent_share,
                         "escaped": r.code_share + r.refusal_share}) for r in out.itertuples()]
        out["corrected_note"] = [c.note or "" for c in corr]
        out.attrs["correction"] = (f"to the paper judge's scale, calibrated on {calibration.panel_size} public "
                                   f"paper-judge answers (panel {calibration.panel_sha256[:10]})")
    elif judge.spec["name"] == "mini":
        from emlab.judge.mini import heldout_confusion

        confusion, source = heldout_confusion(rec.config.get("model"), judge.spec.get("model"))
        out.attrs["correction"] = source
        corr = [corrected_rate(int(r.misaligned), int(r.n), confusion) for r in out.itertuples()]
    else:
        corr = []
        out["corrected_note"] = "uncalibrated"
        out.attrs["correction"] = "none: this judge is uncalibrated (emlab judge calibrate)"
    if corr:
        out["corrected_rate"] = [c.estimate for c in corr]
        out["corrected_low"] = [c.low for c in corr]
        out["corrected_high"] = [c.high for c in corr]
    untouched = {v.condition for v in rec.final_variants if v.adapter_id == "base"}
    served = {v.condition for v in rec.final_variants if v.served_model}  # other models: not checked here
    out["untouched"] = out["condition"].isin(untouched)
    failed = bool((out["untouched"] & (out["misaligned_rate"] > rec.sanity_gate)).any())
    out["sanity_flag"] = failed & ~out["condition"].isin(served)
    out["sanity_state"] = "unchecked" if not out["untouched"].any() else ("failed" if failed else "passed")
    shifts = (rec.likelihood or {}).get("shifts", {})
    for col, key in (("likelihood_shift", "estimate"), ("likelihood_low", "low"), ("likelihood_high", "high")):
        out[col] = [shifts.get(c, {}).get(key, float("nan")) for c in out["condition"]]
    # Model organisms from the zoo: the rate their authors reported, beside the measured one.
    from emlab.models.zoo import get

    zoo = {c["name"]: get(c["zoo"]) for c in rec.config.get("conditions", []) if c.get("zoo")}
    out["reported_rate"] = [zoo[c].reported_rate if c in zoo and zoo[c].reported_rate is not None else float("nan")
                            for c in out["condition"]]
    out["reported_source"] = [zoo[c].reported_source or f"not recorded ({zoo[c].adapter})" if c in zoo else ""
                              for c in out["condition"]]
    return out


def sanity_warnings(overall: pd.DataFrame, judge_label: str, gate: float) -> list[str]:
    """One plain-words warning when a judge reads an untouched model as misaligned."""
    bad = overall[overall["untouched"] & (overall["misaligned_rate"] > gate)]
    return [f"Warning: {judge_label} reads the untouched model ('{r.condition}') as {_pct(r.misaligned_rate)} "
            f"misaligned, above the {_pct(gate)} an untouched model should stay under. Every rate this judge gives on "
            "this model is marked UNRELIABLE: compare conditions with the judge-free likelihood measure, and do not "
            "read its rates as evidence of misalignment." for r in bad.head(1).itertuples()]


