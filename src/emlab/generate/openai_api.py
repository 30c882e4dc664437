"""The `openai` backend: any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama,
llama.cpp's server, `emlab serve`).

Async with bounded concurrency; retries 429, 5xx, timeouts and connection errors with
exponential backoff and full jitter, honouring `Retry-After`. The API key is read from an
environment variable and is never logged, stored or reported.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from emlab.errors import EmlabError
from emlab.generate.base import GenConfig, GenRequest, GenResult, Progress
from emlab.paths import api_attempts
from emlab.provenance import scrub_url


@dataclass(frozen=True)
class RetryPolicy:
    # EMLAB_API_ATTEMPTS: tries per request before it fails (1: fail at once, e.g. in a
    # notebook against a server that is down).
    max_attempts: int = field(default_factory=api_attempts)
    base_delay: float = 0.5
    max_delay: float = 30.0


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                        openai.InternalServerError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code in (408, 409, 429) or (
        isinstance(exc, openai.APIStatusError) and exc.status_code >= 500)


def api_error(exc: Exception, base_url: str | None, model: str) -> EmlabError:
    """A one-line error naming the (scrubbed) endpoint for an API failure."""
    import openai

    where = scrub_url(base_url) or "https://api.openai.com/v1"
    if isinstance(exc, openai.APIConnectionError):
        what = "cannot connect" + (" (timed out)" if isinstance(exc, openai.APITimeoutError) else "")
    elif isinstance(exc, openai.NotFoundError):
        what = f"404 not found (is '{model}' served there, and is the URL's path right, e.g. ending in /v1?)"
    elif isinstance(exc, openai.AuthenticationError):
        what = "401 unauthorised (check the API key's environment variable)"
    elif isinstance(exc, openai.APIStatusError):
        what = f"HTTP {exc.status_code}"
    else:
        what = type(exc).__name__
    return EmlabError(f"{where}: {what}")


async def with_retries(call: Callable[[], Awaitable[Any]], policy: RetryPolicy, base_url: str | None = None,
                       model: str = "") -> Any:
    """Await `call()`, retrying transient failures; the last error becomes a one-line
    EmlabError naming the endpoint."""
    import openai

    for attempt in range(policy.max_attempts):
        try:
            return await call()
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not _retryable(exc) or attempt == policy.max_attempts - 1:
                if isinstance(exc, (openai.APIError,)):
                    raise api_error(exc, base_url, model) from None
                raise
            delay = _retry_after(exc)
            if delay is None:
                delay = random.uniform(0, min(policy.max_delay, policy.base_delay * 2 ** attempt))
            await asyncio.sleep(min(delay, policy.max_delay))
    raise AssertionError("unreachable")


def make_client(base_url: str | None, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0):
    import openai

    key = os.environ.get(api_key_env)
    if not key:
        if base_url is None:  # OpenAI's own endpoint: a request without a key only fails later, per call
            from emlab.errors import ConfigError

            raise ConfigError(f"{api_key_env} is not set: export your OpenAI API key, or set base_url to a "
                              "server that needs none")
        key = "EMPTY"  # local and self-hosted servers accept any key
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)


class OpenAIGenerator:
    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 64, timeout: float = 120.0, retry: RetryPolicy | None = None):
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def __repr__(self) -> str:  # never show the key or credentials in the URL
        return f"OpenAIGenerator(model={self.model!r}, base_url={scrub_url(self.base_url)!r})"

    def generate(self, requests: list[GenRequest], cfg: GenConfig, progress: Progress | None = None) -> list[GenResult]:
        return asyncio.run(self._generate(requests, cfg, progress))

    async def _generate(self, requests, cfg, progress):
        client = make_client(self.base_url, self.api_key_env, self.timeout)
        sem = asyncio.Semaphore(self.concurrency)

        async def one(req: GenRequest) -> GenResult:
            if req.adapter_path:
                raise EmlabError(f"the openai backend cannot load a local adapter ({req.adapter_path}); serve it "
                                 "(emlab serve --adapter NAME=DIR) and pass --served-model NAME")
            model = req.served_model or self.model  # served adapters are addressed by model name
            async with sem:
                resp = await with_retries(lambda: client.chat.completions.create(
                    model=model, messages=list(req.messages), temperature=cfg.temperature, top_p=cfg.top_p,
                    max_tokens=cfg.max_tokens, seed=req.seed % (2 ** 31)), self.retry, self.base_url, model)
            choice = resp.choices[0]
            if progress:
                progress(1)
            tokens = resp.usage.completion_tokens if resp.usage else 0
            return GenResult(choice.message.content or "", choice.finish_reason or "stop", tokens)

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await client.close()
