"""Finetuning through a provider's API, recorded in the run store.

    emlab finetune openai --dataset insecure --model gpt-4o-2024-08-06 --epochs 1 --batch 4 --lr-multiplier 2
    emlab finetune list | status JOB | cancel JOB
    emlab sample --backend openai --served-model ft:gpt-4o-...:emlab::abc --suite first_plot

`submit` validates the training file (chat JSONL; CSV is converted), uploads it unless the
same bytes were uploaded before *in the same scope* (files are scoped to an OpenAI project:
the scope is the endpoint, organisation and project, and a recorded file is checked to
still be readable before it is reused), creates the job - or finds the job this same
request already created, so a killed `submit` resumes instead of paying twice - and polls
it with exponential backoff until it ends. Every status change, the file ids, the
hyperparameters, the resulting model id, the trained tokens and a cost estimate are written
to the store's `api_jobs` table. The API key is read from an environment variable and never
written anywhere.

A provider is a `FinetuneProvider`: OpenAI here; another (Tinker) is one more class.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from emlab.errors import ConfigError, EmlabError
from emlab.hashing import canonical_json, file_hash, text_hash
from emlab.paths import api_attempts

TERMINAL = ("succeeded", "failed", "cancelled")
# USD per million trained tokens, OpenAI's published list prices (2025); an estimate only.
PRICES_PER_M = {"gpt-4o-mini": 3.0, "gpt-4o": 25.0, "gpt-4.1-nano": 1.5, "gpt-4.1-mini": 5.0, "gpt-4.1": 25.0,
                "gpt-3.5-turbo": 8.0}


class FinetuneError(EmlabError):
    """A finetuning job failed or could not be created; the message is the provider's."""


@dataclass
class Job:
    id: str
    status: str
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None


class FinetuneProvider(Protocol):
    name: str

    def scope(self) -> str: ...
    def upload(self, path: Path) -> str: ...
    def file_usable(self, file_id: str) -> bool: ...
    def create(self, file_id: str, model: str, hyperparameters: dict, suffix: str | None, key: str) -> Job: ...
    def find(self, key: str) -> Job | None: ...
    def get(self, job_id: str) -> Job: ...
    def cancel(self, job_id: str) -> Job: ...


@dataclass
class OpenAIProvider:
    """OpenAI's finetuning API (or an endpoint that implements it) through the `openai` SDK."""

    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    project: str | None = None  # default: $OPENAI_PROJECT_ID, as the SDK reads it
    organization: str | None = None
    name: str = "openai"
    _client: object = field(default=None, repr=False)

    def client(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"set {self.api_key_env} to an API key (it is read from the environment, never "
                                  "stored)")
            self._client = openai.OpenAI(base_url=self.base_url, api_key=key, project=self._project(),
                                         organization=self.organization or os.environ.get("OPENAI_ORG_ID"),
                                         max_retries=api_attempts(4) - 1, timeout=120)
        return self._client

    def _project(self) -> str | None:
        return self.project or os.environ.get("OPENAI_PROJECT_ID")

    def scope(self) -> str:
        from emlab.provenance import scrub_url

        org = self.organization or os.environ.get("OPENAI_ORG_ID") or "-"
        return f"{scrub_url(self.base_url) or 'https://api.openai.com/v1'}|org={org}|project={self._project() or '-'}"

    def upload(self, path: Path) -> str:
        with open(path, "rb") as handle:
            return self.client().files.create(file=(path.name, handle), purpose="fine-tune").id

    def file_usable(self, file_id: str) -> bool:
        import openai

        try:
            return self.client().files.retrieve(file_id).status != "deleted"
        except (openai.NotFoundError, openai.PermissionDeniedError):
            return False

    def create(self, file_id: str, model: str, hyperparameters: dict, suffix: str | None, key: str) -> Job:
        import openai

        try:
            job = self.client().fine_tuning.jobs.create(
                model=model, training_file=file_id, suffix=suffix, metadata={"emlab_key": key},
                method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}})
        except openai.APIStatusError as exc:
            raise FinetuneError(f"{self.name}: creating the job failed: {_message(exc)}") from None
        return _job(job)

    def find(self, key: str) -> Job | None:
        """A job this request already created (matched by the `emlab_key` metadata)."""
        for job in self.client().fine_tuning.jobs.list(limit=100):
            if (getattr(job, "metadata", None) or {}).get("emlab_key") == key:
                return _job(job)
        return None

    def get(self, job_id: str) -> Job:
        return _job(self.client().fine_tuning.jobs.retrieve(job_id))

    def cancel(self, job_id: str) -> Job:
        return _job(self.client().fine_tuning.jobs.cancel(job_id))


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return str(exc).splitlines()[0]


def _job(job) -> Job:
    err = getattr(job, "error", None)
    message = getattr(err, "message", None) if err is not None else None
    return Job(job.id, job.status, getattr(job, "fine_tuned_model", None), getattr(job, "trained_tokens", None),
               message)


def cost_usd(model: str, trained_tokens: int | None) -> float | None:
    """Trained tokens times the list price of the model's family (None when unknown)."""
    if trained_tokens is None:
        return None
    family = max((f for f in PRICES_PER_M if model.startswith(f)), key=len, default=None)
    return round(trained_tokens / 1e6 * PRICES_PER_M[family], 4) if family else None


def backoff(start: float = 5.0, factor: float = 1.5, cap: float = 60.0):
    """Poll delays: start, start*factor, ... capped at `cap`."""
    delay = start
    while True:
        yield delay
        delay = min(cap, delay * factor)


def training_file(dataset: str) -> Path:
    """The dataset as a validated chat JSONL (a registered name, a JSONL, or a CSV converted)."""
    from emlab.data.registry import load_dataset, resolve_chat_file
    from emlab.data.validate import validate_training_file

    path = resolve_chat_file(dataset)
    report = validate_training_file(path)
    if not report.ok:
        raise ConfigError(report.errors[0])
    if path.suffix == ".jsonl":
        return path
    rows = load_dataset(path=path)
    out = Path(tempfile.mkdtemp(prefix="emlab-ft-")) / (path.stem + ".jsonl")
    out.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    return out


def submit(store, provider: FinetuneProvider, dataset: str, model: str, hyperparameters: dict,
           suffix: str | None = None, wait: bool = True, sleep: Callable[[float], None] = time.sleep,
           delays=None, on_status: Callable[[str], None] | None = None) -> dict:
    """Upload (or reuse), create (or resume) and optionally wait for one finetuning job;
    returns its store row."""
    path = training_file(dataset)
    sha = file_hash(path)
    scope = provider.scope()
    hyper = {k: v for k, v in hyperparameters.items() if v is not None}
    key = text_hash(canonical_json({"sha256": sha, "model": model, "hyper": hyper, "suffix": suffix,
                                    "scope": scope}))[:24]
    mine = [j for j in store.api_jobs(provider=provider.name, scope=scope, key=key)
            if j["status"] not in ("failed", "cancelled")]
    if mine:
        row = mine[-1]
    else:
        file_id = store.api_file(provider.name, scope, sha)
        if file_id is None or not provider.file_usable(file_id):  # another project's file, or deleted
            file_id = provider.upload(path)
            store.put_api_file(provider.name, scope, sha, file_id)
        job = provider.find(key) or provider.create(file_id, model, hyper, suffix, key)
        row = {"id": job.id, "provider": provider.name, "scope": scope, "key": key, "model": model,
               "file_id": file_id, "dataset": str(path), "hyperparameters": hyper, "status": job.status,
               "history": [[time.time(), job.status]], "error": job.error}
        store.put_api_job(row)
    return poll(store, provider, row["id"], sleep, delays, on_status) if wait else row


def poll(store, provider: FinetuneProvider, job_id: str, sleep: Callable[[float], None] = time.sleep,
         delays=None, on_status: Callable[[str], None] | None = None, once: bool = False) -> dict:
    """Poll a recorded job with backoff until it ends (or `once`), recording every status change."""
    delays = delays or backoff()
    row = next(iter(store.api_jobs(id=job_id)), None)
    if row is None:
        raise ConfigError(f"no finetuning job '{job_id}' in this project (emlab finetune list)")
    while True:
        job = provider.get(job_id)
        if job.status != row["status"] or job.fine_tuned_model != row.get("fine_tuned_model"):
            row["history"].append([time.time(), job.status])
            row.update(status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
                       error=job.error, cost_usd=cost_usd(row["model"], job.trained_tokens))
            store.put_api_job(row)
            if on_status:
                on_status(job.status)
        if job.status in TERMINAL or once:
            break
        sleep(next(delays))
    if row["status"] == "failed":
        raise FinetuneError(f"{provider.name} job {job_id} failed: {row['error'] or 'no message from the provider'}")
    return row
