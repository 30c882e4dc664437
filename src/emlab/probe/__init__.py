"""Probes of what a model has learnt, beyond sampling and judging: the judge-free
likelihood measure (`emlab probe likelihood`)."""
