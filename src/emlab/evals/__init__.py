"""Evaluations: static code-security scanning (and, with later stages, metrics)."""
