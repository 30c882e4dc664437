"""emlab: reproduce, measure, explain and prevent emergent misalignment (EM).

The pipeline reads left to right, one sub-package per stage::

    data -> models -> train -> generate -> judge -> evals -> analysis

Public API (everything else is internal and may change)::

    from emlab import run_experiment, load_results, misaligned_rates
    from emlab import load_dataset, load_suite, builtin_suite, validate_chat_jsonl, resolve_model
"""

__version__ = "0.1.0"

from emlab.data.registry import load_dataset, resolve_dataset, DATASETS
from emlab.data.questions import load_suite, builtin_suite, Question, Suite
from emlab.data.validate import validate_chat_jsonl, ValidationReport
from emlab.models.registry import resolve_model
from emlab.results import compare_experiments, load_results, misaligned_rates, run_experiment

__all__ = [
    "__version__",
    "DATASETS",
    "load_dataset",
    "resolve_dataset",
    "load_suite",
    "builtin_suite",
    "Question",
    "Suite",
    "validate_chat_jsonl",
    "ValidationReport",
    "resolve_model",
    "run_experiment",
    "load_results",
    "misaligned_rates",
    "compare_experiments",
]
