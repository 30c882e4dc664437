"""Experiments: one YAML, one command.

    emlab run experiments/quickstart.yaml [--dry-run]

models x conditions (a dataset plus transforms) x seeds x suites x judges ->
train -> sample -> judge -> (code evaluation) -> record, each step through the same stage
function the CLI's sub-commands call, all through the run store or content-addressed run
directories. Rerunning resumes; editing one condition changes only the hashes that depend
on it, so only that condition is retrained, resampled and rejudged.

The whole experiment - names, bounds, registered judges/presets/backends, that every
dataset resolves and validates, that every suite loads - is checked before any work
starts. The record `<project>/experiments/<name>.json` (emlab.records.ExperimentRecord)
maps conditions to adapters and is what `emlab report` reads.
"""

from emlab.experiment.plan import check_resources, likelihood_data_available, missing_keys, plan
from emlab.experiment.run import run_experiment, train_conditions
from emlab.experiment.spec import (CapabilitySpec, Condition, Experiment, ProbeSpec, load_experiment,
                                   read_experiment_yaml, validate_spec)

__all__ = ["CapabilitySpec", "Condition", "Experiment", "ProbeSpec", "check_resources", "likelihood_data_available",
           "load_experiment", "missing_keys", "plan", "read_experiment_yaml", "run_experiment", "train_conditions",
           "validate_spec"]
