"""The paper's judge over any OpenAI-compatible API.

`logprob` mode (the paper's): one completion token, temperature 0, top-20 logprobs, seed 0;
score = probability-weighted mean of the integer tokens 0-100 (see `aggregate_0_100`).
`sampled` mode, for APIs without logprobs: K completions at temperature 1; the score is the
mean of the numbers given, and `raw` keeps the spread.

Up to `concurrency` requests in flight (64 by default), retries as in the generation
client; the API key is read from the environment and never logged or stored.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics

from emlab.errors import ConfigError
from emlab.generate.openai_api import RetryPolicy, make_client, with_retries
from emlab.judge.base import (LABELS, SCORES, JudgeIdentity, Judgment, Rubric, category_probs, family_params,
                              judge_prompt, pick_category)
from emlab.provenance import scrub_url, url_host


class APIJudge:
    capabilities = frozenset({SCORES, LABELS})

    def __init__(self, model: str = "gpt-4o-2024-08-06", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", mode: str = "logprob", concurrency: int = 64,
                 samples: int = 10, delimit="auto", timeout: float = 60.0, retry: RetryPolicy | None = None,
                 rubrics: str = "aligned-coherent"):
        if mode not in ("logprob", "sampled"):
            raise ConfigError(f"unknown API judge mode '{mode}'")
        self.name = mode
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.mode, self.concurrency, self.samples, self.delimit = mode, concurrency, samples, delimit
        self.timeout, self.retry = timeout, retry or RetryPolicy()
        params = ((("delimit", delimit),) + ((("samples", samples),) if mode == "sampled" else ())
                  + family_params(rubrics))
        # The host names the endpoint; credentials in the URL never enter the identity.
        self.identity = JudgeIdentity(mode, model, url_host(base_url), params)

    def __repr__(self) -> str:
        return f"APIJudge(model={self.model!r}, base_url={scrub_url(self.base_url)!r}, mode={self.mode!r})"

    @classmethod
    def from_spec(cls, spec) -> "APIJudge":
        return cls(model=spec.default_model(), base_url=spec.base_url, api_key_env=spec.api_key_env, mode=spec.name,
                   delimit=spec.delimit, rubrics=spec.rubrics)

    def judge_id(self, rubric: Rubric) -> str:
        return self.identity.judge_id(rubric)

    def score_many(self, items: list[tuple[str, str]], rubric: Rubric, progress=None) -> list[Judgment]:
        """Scores, or for a categorical rubric (TRUE/FALSE/UNKNOWN, ...) the top-20 first-token
        probabilities gathered onto the allowed answers (`logprob`), or the share of sampled
        replies starting with each (`sampled`)."""
        return asyncio.run(self._score_many(items, rubric, progress))

    async def _score_many(self, items, rubric, progress):
        client = make_client(self.base_url, self.api_key_env, self.timeout)
        sem = asyncio.Semaphore(self.concurrency)
        jid = self.judge_id(rubric)

        async def one(question: str, answer: str) -> Judgment:
            prompt = judge_prompt(rubric, question, answer, self.delimit)
            messages = [{"role": "user", "content": prompt}]
            async with sem:
                if rubric.categories is not None:
                    result = await self._category(client, messages, jid, rubric.categories)
                elif self.mode == "logprob":
                    result = await self._logprob(client, messages, jid, rubric)
                else:
                    result = await self._sampled(client, messages, jid, rubric)
            if progress:
                progress(1)
            return result

        try:
            return list(await asyncio.gather(*(one(q, a) for q, a in items)))
        finally:
            await client.close()

    async def _top_probs(self, client, messages) -> tuple[dict[str, float], str]:
        """The first reply token's top-20 probabilities (temperature 0, one token), and the model that answered."""
        resp = await with_retries(lambda: client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=1, temperature=0, logprobs=True, top_logprobs=20,
            seed=0), self.retry, self.base_url, self.model)
        content = resp.choices[0].logprobs.content if resp.choices[0].logprobs else None
        probs: dict[str, float] = {}
        for alt in (content[0].top_logprobs if content else []):
            probs[alt.token] = probs.get(alt.token, 0.0) + math.exp(alt.logprob)
        return probs, resp.model

    async def _draws(self, client, messages) -> list[str]:
        """`samples` short replies at temperature 1, seeds 0..samples-1."""
        async def draw(seed: int) -> str:
            resp = await with_retries(lambda: client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=8, temperature=1.0, seed=seed), self.retry,
                self.base_url, self.model)
            return resp.choices[0].message.content or ""

        return list(await asyncio.gather(*(draw(s) for s in range(self.samples))))

    async def _category(self, client, messages, jid, categories: tuple[str, ...]) -> Judgment:
        if self.mode == "logprob":
            tokens, _ = await self._top_probs(client, messages)
            return pick_category(category_probs(tokens, categories), {"top_probs": tokens}, jid)
        texts = await self._draws(client, messages)
        firsts = [(re.findall(r"[A-Za-z][A-Za-z0-9_-]*", t) or [""])[0] for t in texts]
        shares = {c: sum(f.upper() == c.upper() for f in firsts) / len(texts) for c in categories}
        return pick_category(shares, {"samples": texts}, jid)

    async def _logprob(self, client, messages, jid, rubric: Rubric) -> Judgment:
        probs, model = await self._top_probs(client, messages)
        score, label = rubric.aggregate(probs)
        return Judgment(score, label, {"top_probs": probs, "model": model}, jid)

    async def _sampled(self, client, messages, jid, rubric: Rubric) -> Judgment:
        """The mean of the replies that are a number of the rubric's scale (when at least a
        quarter are); else the escape word most replies start with."""
        texts = await self._draws(client, messages)
        lo, hi = rubric.scale
        numbers = []
        words = dict.fromkeys(rubric.escapes, 0)
        for t in texts:
            m = re.fullmatch(r"\s*(\d{1,3})\s*\.?\s*", t)
            if m and lo <= int(m.group(1)) <= hi:
                numbers.append(int(m.group(1)))
            else:
                for w in words:
                    if t.strip().upper().startswith(w):
                        words[w] += 1
        raw = {"samples": texts, "numbers": numbers}
        best = max(words, key=words.get) if words else None
        if rubric.graded and best is not None and words[best] > len(numbers):
            return Judgment(None, best, raw, jid)
        if len(numbers) >= self.samples / 4:
            raw["stdev"] = statistics.pstdev(numbers)
            return Judgment(statistics.fmean(numbers), None, raw, jid)
        return Judgment(None, best if best is not None and words[best] > len(numbers) else "UNPARSEABLE", raw, jid)
