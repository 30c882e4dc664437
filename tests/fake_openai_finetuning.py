"""A FAKE of OpenAI's files and fine-tuning endpoints, served on 127.0.0.1 for the finetuning
manager's tests (real API use needs a key the tests do not have). Files are scoped to the
`OpenAI-Project` header, as the real API scopes them to projects; each GET of a job moves it
one state on (validating_files -> queued -> running -> succeeded); a model whose name
contains "fail" fails with a provider message."""

from __future__ import annotations

import json
import threading
import time
from email.parser import BytesParser
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAIL_MESSAGE = "The training file has 3 rows with errors: the first is line 2 (missing assistant message)."


class FakeFinetuning:
    def __init__(self):
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.uploads = 0
        self.created = 0
        self.auth: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, message: str):
                self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": None}})

            def _project(self) -> str:
                fake.auth.append(self.headers.get("Authorization", ""))
                return self.headers.get("OpenAI-Project") or "default"

            def do_GET(self):
                project, path = self._project(), self.path.split("?")[0]
                if path.startswith("/v1/files/"):
                    f = fake.files.get(path.rsplit("/", 1)[1])
                    return self._send(200, f["meta"]) if f and f["project"] == project else \
                        self._error(404, "No such File object")
                if path == "/v1/fine_tuning/jobs":
                    return self._send(200, {"object": "list", "data": list(fake.jobs.values()), "has_more": False})
                if path.startswith("/v1/fine_tuning/jobs/"):
                    job = fake.jobs.get(path.rsplit("/", 1)[1])
                    if job is None:
                        return self._error(404, "No such job")
                    fake.advance(job)
                    return self._send(200, job)
                self._error(404, "unknown path")

            def do_POST(self):
                project, path = self._project(), self.path.split("?")[0]
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if path == "/v1/files":
                    msg = BytesParser(policy=default).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
                    content = parts["file"].get_payload(decode=True)
                    fake.uploads += 1
                    fid = f"file-{fake.uploads}"
                    meta = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                            "filename": parts["file"].get_filename(), "purpose": "fine-tune", "status": "processed"}
                    fake.files[fid] = {"project": project, "meta": meta, "content": content}
                    return self._send(200, meta)
                if path == "/v1/fine_tuning/jobs":
                    req = json.loads(body)
                    f = fake.files.get(req["training_file"])
                    if f is None or f["project"] != project:
                        return self._error(400, f"invalid training_file: {req['training_file']}")
                    fake.created += 1
                    job = {"id": f"ftjob-{fake.created}", "object": "fine_tuning.job", "model": req["model"],
                           "created_at": int(time.time()), "status": "validating_files", "fine_tuned_model": None,
                           "training_file": req["training_file"], "validation_file": None, "result_files": [],
                           "trained_tokens": None, "error": None, "finished_at": None, "seed": 0,
                           "organization_id": "org-fake", "metadata": req.get("metadata"),
                           "hyperparameters": req.get("method", {}).get("supervised", {}).get("hyperparameters", {}),
                           "_suffix": req.get("suffix"), "_bytes": f["meta"]["bytes"]}
                    fake.jobs[job["id"]] = job
                    return self._send(200, job)
                if path.startswith("/v1/fine_tuning/jobs/") and path.endswith("/cancel"):
                    job = fake.jobs[path.split("/")[-2]]
                    job["status"] = "cancelled"
                    return self._send(200, job)
                self._error(404, "unknown path")

        return Handler

    def advance(self, job: dict) -> None:
        order = ["validating_files", "queued", "running", "succeeded"]
        if job["status"] not in order[:-1]:
            return
        if "fail" in job["model"] and job["status"] == "running":
            job.update(status="failed", error={"code": "invalid_training_file", "message": FAIL_MESSAGE,
                                               "param": "training_file"})
            return
        job["status"] = order[order.index(job["status"]) + 1]
        if job["status"] == "succeeded":
            job.update(fine_tuned_model=f"ft:{job['model']}:fake:{job['_suffix'] or ''}:{job['id'][-4:]}",
                       trained_tokens=job["_bytes"] // 4, finished_at=int(time.time()))
