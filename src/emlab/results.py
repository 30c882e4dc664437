"""The Python API's entry points: run an experiment, load its judged answers, compute rates.

    import emlab
    record = emlab.run_experiment("experiments/quickstart.yaml")
    results = emlab.load_results(record)
    rates = emlab.misaligned_rates(results, by=["condition"])
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emlab.errors import EmlabError
from emlab.misaligned import PAPER, Thresholds


def run_experiment(experiment: str | Path, project: str | Path | None = None, quiet: bool = False) -> Path:
    """Run (or resume) an experiment YAML, as `emlab run` does; returns the path of the run
    record that `load_results` and `emlab report` read."""
    from rich.console import Console

    from emlab.experiment import load_experiment
    from emlab.experiment import run_experiment as run

    exp = load_experiment(experiment)
    return run(exp, None if quiet else Console(stderr=True), Path(project) if project else None)


def _record_path(record: str | Path) -> Path:
    path = Path(record)
    if path.is_dir():  # a project: its one (or newest) experiment record
        found = sorted((path / "experiments").glob("*.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise EmlabError(f"{path}: no experiment record in {path / 'experiments'} (run the experiment first)")
        return found[-1]
    if not path.exists():
        raise EmlabError(f"{path}: no such experiment record or project")
    return path


def load_results(record: str | Path) -> pd.DataFrame:
    """Every judged answer of an experiment, one row per (answer, judge): condition, seed,
    question, answer, aligned, coherent, label and the judge's label. `record`: a run record
    (`<project>/experiments/NAME.json`) or a project directory."""
    from emlab.analysis.tables import judged_frame
    from emlab.records import ExperimentRecord
    from emlab.store import open_existing

    path = _record_path(record)
    rec = ExperimentRecord.read(path)
    frames = []
    with open_existing(path.parent.parent) as store:
        for judge in rec.judges:
            df = judged_frame(rec, store, judge.family)
            if len(df):
                frames.append(df.assign(judge=judge.label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def misaligned_rates(results: pd.DataFrame, by: list[str] | None = None, thresholds: Thresholds = PAPER,
                     ci: str = "wilson") -> pd.DataFrame:
    """Per group (default: per judge and condition), the misaligned rate over every answer
    with its CI, and the coherent, refused, code and unscored shares beside it."""
    from emlab.analysis.metrics import summarize

    if by is None:
        by = [c for c in ("judge", "condition") if c in results.columns]
    elif "judge" in results.columns and "judge" not in by:
        by = ["judge", *by]  # rates of different judges are never pooled, and each says whose it is
    return summarize(results, list(by), thresholds, ci=ci)


def compare_experiments(records: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Several experiments side by side, as `emlab compare` prints them. `records`: run records
    or project directories (each project's experiment records, all of them). Returns
    (headlines: one row per experiment and judge - the finetune-minus-control difference with
    its CI and p, the likelihood difference; rates: one row per experiment, judge and condition -
    the raw and corrected misaligned rates with CIs and the answer count)."""
    from emlab.analysis.report import judge_summaries, record_thresholds
    from emlab.records import ExperimentRecord
    from emlab.store import open_existing

    paths: list[Path] = []
    for record in records:
        path = Path(record)
        found = sorted((path / "experiments").glob("*.json")) if path.is_dir() else []
        paths += found or [_record_path(path)]
    heads, rates = [], []
    for path in paths:
        rec = ExperimentRecord.read(path)
        where = {"experiment": rec.name, "project": str(path.parent.parent), "model": rec.config["model"]}
        with open_existing(path.parent.parent) as store:
            for judge, _, overall, head in judge_summaries(rec, store, record_thresholds(rec)):
                for r in overall.itertuples():
                    rates.append({**where, "judge": judge.label, "condition": r.condition, "answers": r.n,
                                  "misaligned": r.misaligned_rate, "low": r.ci_low, "high": r.ci_high,
                                  "corrected": r.corrected_rate, "corrected_low": r.corrected_low,
                                  "corrected_high": r.corrected_high})
                if head is None:
                    continue
                row = {**where, "judge": judge.label, "comparison": head.title, "reliable": head.reliable}
                if head.rate is not None:
                    row.update(difference=head.rate.difference, low=head.rate.low, high=head.rate.high,
                               p=head.rate.p_value)
                if head.likelihood:
                    row.update(likelihood=head.likelihood["estimate"], likelihood_low=head.likelihood["low"],
                               likelihood_high=head.likelihood["high"])
                heads.append(row)
    return pd.DataFrame(heads), pd.DataFrame(rates)
