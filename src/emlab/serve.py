"""`emlab serve`: an OpenAI-compatible HTTP server over the `hf` backend.

    emlab serve --model smollm2-135m-instruct --adapter insecure=runs/train/x/adapter --port 8008

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (temperature, top_p, max_tokens,
seed, n, logprobs, top_logprobs). The `model` field names the base model or an adapter.
Binds 127.0.0.1 unless told otherwise. Requests are served one at a time (a lock around
the model); clients get concurrency from batching on their side.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from emlab.generate.base import GenConfig, GenRequest
from emlab.generate.hf import HFGenerator


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage]
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=128)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


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


def create_app(gen: HFGenerator, model_name: str, adapters: dict[str, str] | None = None) -> FastAPI:
    adapters = adapters or {}
    app = FastAPI(title="emlab serve")
    lock = threading.Lock()

    @app.get("/v1/models")
    def list_models() -> dict:
        names = [model_name, *adapters]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "emlab"}
                                           for n in names]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> dict:
        if req.model != model_name and req.model not in adapters:
            raise HTTPException(404, f"model '{req.model}' is not served (have: {', '.join([model_name, *adapters])})")
        adapter = adapters.get(req.model)
        max_tokens = req.max_completion_tokens or req.max_tokens or 600
        messages = tuple({"role": m.role, "content": m.content} for m in req.messages)
        base_seed = req.seed if req.seed is not None else uuid.uuid4().int % (2 ** 31)
        cfg = GenConfig(temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens, seed=base_seed)
        requests = [GenRequest(messages, base_seed + i, adapter) for i in range(req.n)]
        with lock:
            results = gen.generate(requests, cfg)
            choices = []
            prompt_ids = gen.encode(messages)
            for i, res in enumerate(results):
                choice: dict[str, Any] = {"index": i, "finish_reason": res.finish_reason,
                                          "message": {"role": "assistant", "content": res.text}}
                if req.logprobs:
                    model = gen._model_for(adapter)
                    completion_ids = list(res.token_ids)
                    if not completion_ids and res.finish_reason == "stop":
                        completion_ids = [gen.tokenizer.eos_token_id]  # the model chose to stop at once
                    content = _token_logprobs(gen, model, prompt_ids, completion_ids, req.top_logprobs or 0)
                    choice["logprobs"] = {"content": content}
                choices.append(choice)
        completion_tokens = sum(r.n_tokens for r in results)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "choices": choices,
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(prompt_ids) + completion_tokens},
        }

    return app


def serve(model: str, adapters: dict[str, str], host: str = "127.0.0.1", port: int = 8008) -> None:
    import uvicorn

    gen = HFGenerator(model)
    uvicorn.run(create_app(gen, model, adapters), host=host, port=port, log_level="warning")
