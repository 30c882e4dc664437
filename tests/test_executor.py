"""The Ray executor (issue 13): a local Ray cluster started in the test runs an experiment's
training, sampling and judging cells as tasks; the run store comes out the same as with the
in-process executor, two cells ran at once, and a rerun does nothing twice."""

import pytest
import yaml
from rich.console import Console

pytestmark = pytest.mark.slow


def _contents(project):
    from emlab.store import Store

    with Store(project) as store:
        samples = {s["key"]: s["answer"] for s in store.samples()}
        by_id = {s["id"]: s["key"] for s in store.samples()}
        # Scores to 1e-6: the mini judge's embeddings in another process differ in the last float bits.
        judged = {(by_id[r.sample_id], r.metric): (None if r.score != r.score else round(r.score, 6), r.label)
                  for r in store.table("judgments").itertuples()}
        runs = store.table("runs")
    return samples, judged, runs


def test_ray_executor_matches_local_and_runs_cells_concurrently(tmp_path, default_model_dir):
    pytest.importorskip("ray")
    import torch

    from emlab.executor import RayExecutor, timeline
    from emlab.experiment import load_experiment, run_experiment

    exp = {"name": "cells", "model": "smollm2-135m-instruct",
           "train": {"preset": "cpu-quick", "overrides": {"max_rows": 8, "max_steps": 2}},
           "conditions": [{"name": "base"}, {"name": "insecure", "dataset": {"generate": "insecure-code", "n": 8}},
                          {"name": "secure", "dataset": {"generate": "secure-code", "n": 8}}],
           "sample": {"suites": ["builtin"], "samples_per_paraphrase": 1, "max_tokens": 8, "backend": "hf",
                      "batch_size": 32},
           "judges": ["mini"]}
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump(exp))
    local = run_experiment(load_experiment(path), Console(quiet=True), tmp_path / "local")
    executor = RayExecutor(num_cpus=1, threads=torch.get_num_threads(), init_kwargs={"num_cpus": 2})
    try:
        remote = run_experiment(load_experiment(path), Console(quiet=True), tmp_path / "ray", executor)
        kinds = {k for k, _, _ in executor.events}
        assert {"train", "sample"} <= kinds and any(k.startswith("judge mini") for k in kinds)
        assert timeline(e for e in executor.events if e[0] == "train") == 2  # both trainings at once
        samples_l, judged_l, _ = _contents(tmp_path / "local")
        samples_r, judged_r, runs = _contents(tmp_path / "ray")
        assert len(samples_l) == 3 * 32 and samples_r == samples_l  # same keys (adapter hashes) and answers
        assert judged_r == judged_l
        # A rerun (after a killed driver, or a finished one) plans only what the store lacks: nothing.
        n_runs = len(runs)
        executor.events.clear()
        run_experiment(load_experiment(path), Console(quiet=True), tmp_path / "ray", executor)
        assert executor.events == [] or {k for k, _, _ in executor.events} == {"train"}
        assert _contents(tmp_path / "ray")[0] == samples_l
    finally:
        executor.ray.shutdown()
    assert local.name == remote.name == "cells.json" and n_runs > 0
