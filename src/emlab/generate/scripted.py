"""`scripted`: a fake generation backend, like Inspect's `mockllm`.

It runs no model: each answer comes from a script (a list cycled through, or a function of
the request), else a deterministic text built from the request's seed and question. Tests
use it to drive the whole pipeline - sampling, the store, judging, metrics, reports -
without loading weights; users can use it to dry-run an experiment's plumbing. It is a
fake: never report its output as a model's.
"""

from __future__ import annotations

import time
from typing import Callable

from emlab.generate.base import GenConfig, GenRequest, GenResult, Progress
from emlab.hashing import text_hash


class ScriptedGenerator:
    name = "scripted"

    def __init__(self, model: str = "scripted", answers: list[str] | Callable[[GenRequest], str] | None = None,
                 delay: float = 0.0):
        self.model = model
        self.answers = answers
        self.delay = delay
        self.calls = 0  # requests answered, for tests that count work

    def answer(self, req: GenRequest) -> str:
        if callable(self.answers):
            return self.answers(req)
        if self.answers:
            return self.answers[req.seed % len(self.answers)]
        question = next((m["content"] for m in reversed(req.messages) if m["role"] == "user"), "")
        # An adapter is named by a hash of its path: answers differ per adapter, and no local
        # folder lands in an answer (and so in a report).
        source = f"adapter {text_hash(req.adapter_path)[:8]}" if req.adapter_path else req.served_model or "base"
        return f"Scripted answer {req.seed % 9973} from {source} to: {question[:60]}"

    def generate(self, requests: list[GenRequest], cfg: GenConfig, progress: Progress | None = None) -> list[GenResult]:
        out = []
        for req in requests:
            if self.delay:
                time.sleep(self.delay)
            words = self.answer(req).split(" ")
            text = " ".join(words[:cfg.max_tokens])
            out.append(GenResult(text, "length" if len(words) > cfg.max_tokens else "stop", min(len(words), cfg.max_tokens)))
            self.calls += 1
            if progress:
                progress(1)
        return out
