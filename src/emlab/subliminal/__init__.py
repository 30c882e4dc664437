"""Subliminal learning (Cloud et al. 2025, arXiv 2507.14805): a teacher with a trait writes
number sequences, a strict filter removes anything but numbers, and a student finetuned on
what is left - from the teacher's own base model - is tested for the trait.

    emlab run experiments/subliminal_quick.yaml [--dry-run]

`numbers` writes the prompts and holds the filter, `trait` measures a preference, `run`
holds the experiment's spec and its stages (teacher -> samples -> filter -> students ->
trait evaluation -> record).
"""
