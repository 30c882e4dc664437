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


# ---- hostile requests (defect: one request could lock the server up)

@pytest.mark.parametrize("change", [
    {"temperature": -1}, {"temperature": 1e308}, {"top_p": -1}, {"top_p": 0}, {"messages": []},
    {"seed": 2 ** 80}, {"max_tokens": 0}, {"n": 10_000}, {"messages": [{"role": "robot", "content": "x"}]},
])
def test_invalid_parameters_get_422_json(server, change):
    url, _ = server
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            **change}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=30)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")


def test_nan_temperature_is_refused(server):
    url, _ = server
    raw = b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    r = httpx.post(f"{url}/chat/completions", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422


def test_lengths_are_capped_at_the_context(server):
    import time

    url, _ = server
    start = time.time()
    r = httpx.post(f"{url}/chat/completions", json={"model": "smollm2-135m-instruct", "max_tokens": 4,
                                                    "messages": [{"role": "user", "content": "x " * 50_000}]},
                   timeout=60)
    assert r.status_code == 400 and "context" in r.json()["error"]["message"] and time.time() - start < 10
    r = httpx.post(f"{url}/chat/completions", json={"model": "smollm2-135m-instruct", "max_tokens": 10 ** 6,
                                                    "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert r.status_code == 400 and "exceeds the model's context" in r.json()["error"]["message"]


def test_disconnected_client_is_cancelled_and_concurrent_requests_are_batched(server):
    import threading
    import time

    url, app = server
    batcher = app.app.state.batcher
    long = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 3000, "temperature": 1.0, "seed": 5}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/chat/completions", json=long, timeout=1.0)  # the client gives up
    start = time.time()
    short = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    ok = httpx.post(f"{url}/chat/completions", json={**short, "seed": 6}, timeout=60)
    assert ok.status_code == 200
    assert time.time() - start < 20  # the abandoned 3000-token request did not run to its end
    calls = []
    real = batcher.gen.generate

    def counting(requests, cfg, *a, **kw):
        calls.append(len(requests))
        return real(requests, cfg, *a, **kw)

    batcher.gen.generate = counting
    try:
        out = []
        threads = [threading.Thread(target=lambda s=s: out.append(httpx.post(
            f"{url}/chat/completions", json={**short, "seed": 100 + s}, timeout=60).status_code)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher.gen.generate = real
    assert out == [200] * 6
    assert len(calls) < 6 and max(calls) > 1  # requests that waited together ran as one batch


def test_api_key_and_bad_adapter(default_model_dir, tmp_path):
    from emlab.generate.hf import HFGenerator
    from emlab.serve import create_app

    gen = HFGenerator("smollm2-135m-instruct")
    with pytest.raises(ValueError, match="no adapter weights"):
        create_app(gen, "smollm2-135m-instruct", {"ghost": str(tmp_path)})
    app = create_app(gen, "smollm2-135m-instruct", api_key="s3cret")
    with serving(app) as url:
        assert httpx.get(f"{url}/models").status_code == 401
        r = httpx.get(f"{url}/models", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        app.state.batcher.stop()


def test_sigterm_stops_a_busy_server(tmp_path, default_model_dir):
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from fault_injection import _free_port

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "emlab", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            httpx.get(f"{url}/models", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.3)
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 4000, "seed": 1}
    def client():
        try:
            httpx.post(f"{url}/chat/completions", json=body, timeout=120)
        except httpx.HTTPError:  # the server goes away under it: that is the point
            pass

    threading.Thread(target=client, daemon=True).start()
    time.sleep(2.0)
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    finally:
        proc.kill()
    assert time.time() - start < 20
