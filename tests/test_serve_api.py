"""`emlab serve` on 127.0.0.1 with the real default model, and emlab's OpenAI-compatible
client against it - including injected 429 / 500 / timeouts from a fault-injecting ASGI
wrapper in tests/fault_injection.py (test code)."""

from collections import Counter

import httpx
import pytest

from emlab.generate import GenConfig, GenRequest
from emlab.generate.openai_api import OpenAIGenerator, RetryPolicy
from fault_injection import FaultInjector, serving


@pytest.fixture(scope="module")
def server(default_model_dir):
    from emlab.generate.hf import HFGenerator
    from emlab.serve import create_app

    gen = HFGenerator("smollm2-135m-instruct")
    plan = {1001: ["429", "429"], 1002: ["500"], 1003: ["timeout"], 1004: ["429", "500", "timeout"]}
    app = FaultInjector(create_app(gen, "smollm2-135m-instruct"), plan)
    with serving(app) as url:
        yield url, app


def test_models_and_logprobs(server):
    url, _ = server
    models = httpx.get(f"{url}/models").json()
    assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
    resp = httpx.post(f"{url}/chat/completions", json={
        "model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Say a number from 0 to 100."}],
        "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20, "seed": 0}, timeout=60).json()
    top = resp["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert len(top) == 20
    assert all(a["logprob"] >= b["logprob"] for a, b in zip(top, top[1:]))
    total = sum(2.718281828 ** t["logprob"] for t in top)
    assert 0 < total <= 1.0001
    chosen = resp["choices"][0]["logprobs"]["content"][0]["token"]
    assert chosen == top[0]["token"]  # greedy picks the most likely token


def test_unknown_model_is_404(server):
    url, _ = server
    r = httpx.post(f"{url}/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404


def test_client_retries_until_every_request_is_answered_once(server, monkeypatch):
    url, app = server
    monkeypatch.setenv("EMLAB_TEST_KEY", "sk-test-secret-123")
    # The server answers one request at a time; two in flight keep every real answer well
    # inside the client's timeout, so only the injected hangs time out.
    gen = OpenAIGenerator("smollm2-135m-instruct", base_url=url, api_key_env="EMLAB_TEST_KEY", concurrency=2,
                          timeout=2.5, retry=RetryPolicy(max_attempts=6, base_delay=0.05, max_delay=1.0))
    assert "sk-test" not in repr(gen)
    msgs = ({"role": "user", "content": "Name a colour."},)
    seeds = [1000 + i for i in range(8)]
    results = gen.generate([GenRequest(msgs, s) for s in seeds], GenConfig(max_tokens=5))
    assert len(results) == 8 and all(isinstance(r.text, str) and r.n_tokens > 0 for r in results)
    assert app.faults == Counter({"429": 3, "500": 2, "timeout": 2})
    assert all(app.ok[s] == 1 for s in seeds)  # answered exactly once each
    # Same seed through the server gives the same answer.
    again = gen.generate([GenRequest(msgs, 1005)], GenConfig(max_tokens=5))
    assert again[0].text == results[5].text
