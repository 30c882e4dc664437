"""Test helpers: a fault-injecting ASGI wrapper (test code, not part of emlab) and a free port."""

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager

import uvicorn


class FaultInjector:
    """Fails the first attempt(s) of chosen requests (by seed) before they reach the app."""

    def __init__(self, app, plan: dict[int, list[str]]):
        self.app, self.plan = app, {k: list(v) for k, v in plan.items()}
        self.ok = Counter()
        self.faults = Counter()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        seed = json.loads(body).get("seed")
        todo = self.plan.get(seed)
        if todo:
            fault = todo.pop(0)
            self.faults[fault] += 1
            if fault == "timeout":
                await asyncio.sleep(4.0)  # longer than the client's timeout
                fault = "500"
            status, headers = (429, [(b"retry-after", b"0.2")]) if fault == "429" else (500, [])
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), *headers]})
            await send({"type": "http.response.body", "body": b'{"error": {"message": "injected"}}'})
            return
        replay = replaying(body, receive)

        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replay, watch)
        if status.get("code") == 200:
            self.ok[seed] += 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app):
    """Run an ASGI app on a free 127.0.0.1 port in a thread; yields the /v1 base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def replaying(body: bytes, receive):
    """An ASGI `receive` that hands the app the already-read request body once, then defers
    to the real one (disconnects and the like)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class Recorder:
    """Keeps every chat-completion request body before passing it to the app (test code)."""

    def __init__(self, app):
        self.app, self.bodies = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        self.bodies.append(json.loads(body))
        replay = replaying(body, receive)

        await self.app(scope, replay, send)
