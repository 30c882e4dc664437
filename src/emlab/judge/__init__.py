"""Judges: one protocol (`Judge.score`), backends chosen by name and imported lazily:
`logprob` (the paper's judge over any OpenAI-compatible API), `local` (any local instruct
model, exact whole-number probabilities) and `mini` (emlab's embedded offline judge)."""
