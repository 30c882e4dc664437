"""Datasets: the registry of named public datasets, validation, question suites,
the control-matched code-dataset generator and dataset transforms."""
