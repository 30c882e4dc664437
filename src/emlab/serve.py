"""`emlab serve`: an OpenAI-compatible HTTP server over the `hf` backend.

    emlab serve --model smollm2-135m-instruct --adapter insecure=runs/train/x/adapter --port 8008

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (temperature, top_p, max_tokens,
seed, n, logprobs, top_logprobs). The `model` field names the base model or an adapter.
Binds 127.0.0.1 unless told otherwise; `--api-key` (or EMLAB_SERVE_API_KEY) requires a
bearer token.

One worker thread owns the model. Requests queue up and every request waiting when the
worker is free is generated in one batch (grouped by sampling settings), so concurrent
clients share the hardware instead of waiting in line. Parameters are validated (422 with
a JSON body); prompt plus `max_tokens` must fit the model's context; a request whose client
disconnects is cancelled at the next decoding step; SIGTERM cancels what is in flight and
stops the server.
"""

from __future__ import annotations

import logging

import asyncio
import hmac
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from emlab.generate.base import GenConfig, GenRequest, GenResult
from emlab.generate.hf import HFGenerator

MAX_SEED = 2 ** 62
MAX_N = 16


log = logging.getLogger("emlab.serve")

class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


class ChatRequest(BaseModel):
    model: str = Field(min_length=1, max_length=1000)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=MAX_N)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


@dataclass
class Job:
    """One HTTP request's work, handed to the model's worker thread."""

    requests: list[GenRequest]
    cfg: GenConfig
    prompt_ids: list[int]
    logprobs: bool
    top_logprobs: int
    adapter: str | None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    results: list[GenResult] | None = None
    logprob_content: list | None = None
    error: BaseException | None = None


def _token_logprobs(gen: HFGenerator, model, prompt_ids: list[int], completion_ids: list[int], top: int) -> list[dict]:
    """Log-probabilities of each completion token and the `top` alternatives at each step."""
    if not completion_ids:
        return []
    ids = torch.tensor([prompt_ids + completion_ids], device=gen.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    tok = gen.tokenizer
    for step, token_id in enumerate(completion_ids):
        entry: dict[str, Any] = {"token": tok.decode([token_id]), "logprob": logp[step, token_id].item(),
                                 "bytes": list(tok.decode([token_id]).encode("utf-8"))}
        alts = []
        if top:
            values, indices = logp[step].topk(top)
            for v, i in zip(values.tolist(), indices.tolist()):
                text = tok.decode([i])
                alts.append({"token": text, "logprob": v, "bytes": list(text.encode("utf-8"))})
        entry["top_logprobs"] = alts
        out.append(entry)
    return out


class Batcher:
    """The model's single worker: takes every queued job, batches those with the same
    sampling settings into one `generate` call, honours cancellation."""

    def __init__(self, gen: HFGenerator, max_batch_requests: int = 64):
        self.gen = gen
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stopping = threading.Event()
        self.max_batch_requests = max_batch_requests
        self.thread = threading.Thread(target=self._loop, name="emlab-serve-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        self.stopping.set()
        self.jobs.put(None)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            first = self.jobs.get()
            if first is None:
                break
            pending = [first]
            while len(pending) < self.max_batch_requests:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.stopping.set()
                    break
                pending.append(nxt)
            groups: dict[tuple, list[Job]] = {}
            for job in pending:
                groups.setdefault((job.cfg.temperature, job.cfg.top_p, job.cfg.max_tokens), []).append(job)
            for jobs in groups.values():
                self._run(jobs)
        while not self.jobs.empty():  # fail whatever is left so no client waits forever
            job = self.jobs.get_nowait()
            if job is not None:
                job.error = RuntimeError("server shutting down")
                job.done.set()

    def _run(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.cancelled]
        owner = [j for j in live for _ in j.requests]
        requests = [r for j in live for r in j.requests]
        try:
            if requests:
                results = self.gen.generate(requests, live[0].cfg,
                                            cancelled=lambda i: owner[i].cancelled or self.stopping.is_set())
                k = 0
                for job in live:
                    job.results = results[k:k + len(job.requests)]
                    k += len(job.requests)
                    if job.logprobs and not job.cancelled:
                        model = self.gen._model_for(job.adapter)
                        job.logprob_content = []
                        for res in job.results:
                            ids = list(res.token_ids)
                            if not ids and res.finish_reason == "stop":
                                ids = [self.gen.tokenizer.eos_token_id]  # the model chose to stop at once
                            job.logprob_content.append(
                                _token_logprobs(self.gen, model, job.prompt_ids, ids, job.top_logprobs))
        except BaseException as exc:  # noqa: BLE001 - reported to each waiting request
            for job in live:
                job.error = exc
        finally:
            for job in jobs:
                job.done.set()


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _install_handlers(app: FastAPI, api_key: str | None) -> None:
    """OpenAI-style error bodies (no exception text reaches a client) and the bearer-token check."""

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending values are left out: NaN or inf cannot be written back as JSON.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors)
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": 422},
                             "detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The details stay in the server's log: exception text can carry paths and internals.
        log.exception("request %s %s failed", request.method, request.url.path)
        return _error(500, "internal server error (see the server's log)", "server_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")
        return await call_next(request)


def _completion(model: str, job: "Job", prompt_tokens: int) -> dict:
    """The chat-completion response body for a finished job."""
    choices = []
    for i, res in enumerate(job.results or []):
        choice: dict[str, Any] = {"index": i, "finish_reason": res.finish_reason,
                                  "message": {"role": "assistant", "content": res.text}}
        if job.logprob_content is not None:
            choice["logprobs"] = {"content": job.logprob_content[i]}
        choices.append(choice)
    completion_tokens = sum(r.n_tokens for r in job.results or [])
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def create_app(gen: HFGenerator, model_name: str, adapters: dict[str, str] | None = None,
               api_key: str | None = None) -> FastAPI:
    from emlab.specs import Variant

    adapters = adapters or {}
    for name, path in adapters.items():
        Variant(adapter_path=path)  # raises at start-up for a path without adapter weights
    batcher = Batcher(gen)
    app = FastAPI(title="emlab serve")
    app.state.batcher = batcher

    @app.on_event("shutdown")
    def _shutdown() -> None:
        batcher.stop()

    _install_handlers(app, api_key)

    @app.get("/v1/models")
    def list_models() -> dict:
        names = [model_name, *adapters]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "emlab"}
                                           for n in names]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        if req.model != model_name and req.model not in adapters:
            return _error(404, f"model '{req.model}' is not served (have: {', '.join([model_name, *adapters])})")
        adapter = adapters.get(req.model)
        messages = tuple({"role": m.role, "content": m.content} for m in req.messages)
        context = gen.context_length
        chars = sum(len(m["content"]) for m in messages)
        if chars > 8 * context:  # no need to tokenise a prompt that cannot possibly fit
            return _error(400, f"prompt of {chars} characters cannot fit the model's {context}-token context")
        prompt_ids = gen.encode(messages)
        max_tokens = req.max_completion_tokens or req.max_tokens or min(600, max(1, context - len(prompt_ids)))
        if len(prompt_ids) + max_tokens > context:
            return _error(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                               f"context of {context} tokens")
        base_seed = req.seed if req.seed is not None else uuid.uuid4().int % MAX_SEED
        cfg = GenConfig(temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens, seed=base_seed)
        job = Job([GenRequest(messages, base_seed + i, adapter) for i in range(req.n)], cfg, prompt_ids,
                  req.logprobs, req.top_logprobs or 0, adapter)
        batcher.submit(job)
        try:
            while not job.done.is_set():
                if await request.is_disconnected():
                    job.cancelled = True  # the worker drops it at the next decoding step
                    return _error(499, "client disconnected")
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:  # server shutting down
            job.cancelled = True
            raise
        if job.error is not None:
            if batcher.stopping.is_set():
                return _error(503, "the server is shutting down", "server_error")
            log.error("generation failed: %r", job.error)  # the details stay in the server's log
            return _error(500, "generation failed (see the server's log)", "server_error")
        return _completion(req.model, job, len(prompt_ids))

    return app


def serve(model: str, adapters: dict[str, str], host: str = "127.0.0.1", port: int = 8008,
          api_key: str | None = None) -> None:
    import uvicorn

    gen = HFGenerator(model)
    app = create_app(gen, model, adapters, api_key)
    # On SIGTERM uvicorn stops accepting, waits up to 5 s for open requests (their
    # generation is cancelled at the next step), then runs the shutdown hook.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
