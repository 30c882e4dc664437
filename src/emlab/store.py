"""The run store: one SQLite database per project directory (`<project>/emlab.db`).

WAL mode, numbered migrations (`PRAGMA user_version`), and one transaction per batch.
Samples are keyed by everything that decides them - model, adapter, suite, question id,
the rendered prompt (question text and system prompt), paraphrase and sample index, and
the generation config - so editing a question makes new samples instead of reusing
answers to the old text, and a rerun generates only what is missing: kill -9 at any point
loses at most the batch in flight and never duplicates a sample.

Tables: `runs` (one row per stage run: kind, resolved config, versions, seeds),
`artefacts` (adapters, datasets by content hash), `samples`, `judgments`, `judges` (the
typed identity behind each judge id), `leases` (claims that let concurrent samplers split
the work).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypedDict

from emlab.errors import EmlabError
from emlab.hashing import canonical_json, text_hash
from emlab.provenance import git_revision, versions

DB_NAME = "emlab.db"
LOCK_RETRY_SECONDS = 120.0


class Selection(TypedDict, total=False):
    """A filter on stored samples, `Store.samples(**selection)`: a stage's usual one is one
    variant's answers to one suite (all four keys); fewer keys select more."""

    model: str
    adapter: str
    suite: str
    gen_hash: str


@dataclass(frozen=True)
class SampleKey:
    model: str
    adapter: str  # "base", "sha256:<adapter weights>" or "served:<model name>"
    suite: str
    question_id: str
    paraphrase_index: int
    system: str | None
    text: str  # the question as asked: editing it makes a new sample
    sample_index: int
    gen_hash: str

    def digest(self) -> str:
        return text_hash(canonical_json([self.model, self.adapter, self.suite, self.question_id,
                                         self.paraphrase_index, self.system, self.text, self.sample_index,
                                         self.gen_hash]))


def _rekey_samples(conn: sqlite3.Connection) -> None:
    """Migration 2: sample keys now include the question text."""
    rows = conn.execute("SELECT id, model, adapter, suite, question_id, paraphrase_index, system, question, "
                        "sample_index, gen_hash FROM samples").fetchall()
    for r in rows:
        key = SampleKey(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]).digest()
        conn.execute("UPDATE samples SET key = ? WHERE id = ?", (key, r[0]))


MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 1: runs, artefacts, samples, judgments
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, created REAL NOT NULL, config TEXT NOT NULL,
        versions TEXT NOT NULL, git_revision TEXT, seeds TEXT
    );
    CREATE TABLE artefacts (sha256 TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT, meta TEXT);
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, model TEXT NOT NULL, adapter TEXT NOT NULL,
        suite TEXT NOT NULL, question_id TEXT NOT NULL, paraphrase_index INTEGER NOT NULL, system TEXT,
        sample_index INTEGER NOT NULL, gen_hash TEXT NOT NULL, seed INTEGER NOT NULL, question TEXT NOT NULL,
        answer TEXT NOT NULL, finish_reason TEXT, n_tokens INTEGER, run_id TEXT, created REAL NOT NULL
    );
    CREATE INDEX samples_by_condition ON samples(model, adapter, suite, gen_hash);
    CREATE TABLE judgments (
        id INTEGER PRIMARY KEY, sample_id INTEGER NOT NULL REFERENCES samples(id), judge_id TEXT NOT NULL,
        metric TEXT NOT NULL, score REAL, label TEXT, raw TEXT, created REAL NOT NULL,
        UNIQUE(sample_id, judge_id, metric)
    );
    """,
    # 2: typed judge identities, run ids on judgments, run status, work leases
    """
    CREATE TABLE judges (
        id TEXT PRIMARY KEY, family TEXT NOT NULL, backend TEXT NOT NULL, model TEXT, version TEXT,
        metric TEXT NOT NULL, rubric_sha256 TEXT, params TEXT NOT NULL, created REAL NOT NULL
    );
    CREATE INDEX judges_by_family ON judges(family, metric);
    ALTER TABLE judgments ADD COLUMN run_id TEXT;
    ALTER TABLE runs ADD COLUMN finished REAL;
    ALTER TABLE runs ADD COLUMN summary TEXT;
    CREATE TABLE leases (sample_key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
    """,
    _rekey_samples,
    # 3: API finetuning (emlab.train.api_finetune): uploads by content hash and scope, jobs
    """
    CREATE TABLE api_files (provider TEXT NOT NULL, scope TEXT NOT NULL, sha256 TEXT NOT NULL, file_id TEXT NOT NULL,
                            created REAL NOT NULL, PRIMARY KEY (provider, scope, sha256));
    CREATE TABLE api_jobs (id TEXT PRIMARY KEY, provider TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
                           model TEXT NOT NULL, file_id TEXT NOT NULL, dataset TEXT, hyperparameters TEXT,
                           status TEXT NOT NULL, history TEXT NOT NULL, fine_tuned_model TEXT, trained_tokens INTEGER,
                           cost_usd REAL, error TEXT, created REAL NOT NULL, updated REAL NOT NULL);
    CREATE INDEX api_jobs_key ON api_jobs (provider, scope, key);
    """,
]


def _owner_alive(owner: str) -> bool:
    """Whether a lease owner ("host:pid:nonce") may still be running; only processes on this
    host can be checked, others count as alive until their lease expires."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class Store:
    """A project's SQLite store."""

    def __init__(self, project: str | Path = "."):
        self.project = Path(project)
        if self.project.exists() and not self.project.is_dir():
            raise EmlabError(f"{self.project}: is a file, expected a project directory")
        self.project.mkdir(parents=True, exist_ok=True)
        self.path = self.project / DB_NAME
        try:
            self.conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self._retry(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_locked(exc):
                raise EmlabError(f"{self.path}: the run store stayed locked by another process for "
                                 f"{LOCK_RETRY_SECONDS:.0f} s") from None
            raise EmlabError(f"{self.path}: not a usable emlab run store ({exc})") from None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """Run `fn`, retrying with backoff while another process holds the write lock."""
        deadline = time.time() + LOCK_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.time() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    def _transaction(self, body: Callable[[], Any]) -> Any:
        """`body()` inside BEGIN IMMEDIATE ... COMMIT, retried whole while the store is locked."""
        def attempt():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                self.conn.execute("COMMIT")
                return result
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

        try:
            return self._retry(attempt)
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                raise EmlabError(f"{self.path}: the run store stayed locked by another process for "
                                 f"{LOCK_RETRY_SECONDS:.0f} s") from None
            raise

    def _migrate(self) -> None:
        if self.schema_version >= len(MIGRATIONS):
            return
        for number, step in enumerate(MIGRATIONS, start=1):

            def apply(step=step, number=number):
                # Read the version inside the write transaction: two processes opening a new
                # store at once must not both apply a migration.
                if self.schema_version >= number:
                    return
                if callable(step):
                    step(self.conn)
                else:
                    for statement in step.split(";"):
                        if statement.strip():
                            self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={number}")

            self._transaction(apply)

    # -- runs and artefacts

    def begin_run(self, kind: str, config: dict, seeds: Any = None) -> str:
        """Record the start of a stage run (resolved config, versions, git revision); returns its id."""
        run_id = f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._transaction(lambda: self.conn.execute(
            "INSERT INTO runs (id, kind, created, config, versions, git_revision, seeds) VALUES (?,?,?,?,?,?,?)",
            (run_id, kind, time.time(), canonical_json(config), canonical_json(versions()), git_revision(),
             canonical_json(seeds))))
        return run_id

    def end_run(self, run_id: str, summary: dict) -> None:
        self._transaction(lambda: self.conn.execute(
            "UPDATE runs SET finished = ?, summary = ? WHERE id = ?", (time.time(), canonical_json(summary), run_id)))

    def add_artefact(self, sha256: str, kind: str, path: str | None, meta: dict | None = None) -> None:
        self._transaction(lambda: self.conn.execute("INSERT OR REPLACE INTO artefacts VALUES (?,?,?,?)",
                                                    (sha256, kind, path, canonical_json(meta or {}))))

    # -- samples

    def existing_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            q = f"SELECT key FROM samples WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self.conn.execute(q, chunk))
        return found

    def _insert_batch(self, sql: str, params: list) -> int:
        """Run one insert for a whole batch in a single transaction; returns rows added."""
        def body():
            before = self.conn.total_changes
            self.conn.executemany(sql, params)
            return self.conn.total_changes - before

        return self._transaction(body)

    def add_samples(self, rows: list[dict]) -> int:
        """Insert a batch of samples in one transaction; returns how many were new."""
        cols = ["key", "model", "adapter", "suite", "question_id", "paraphrase_index", "system", "sample_index",
                "gen_hash", "seed", "question", "answer", "finish_reason", "n_tokens", "run_id"]
        now = time.time()
        # Only a duplicate key is skipped; any other constraint violation aborts the batch.
        return self._insert_batch(
            f"INSERT INTO samples ({','.join(cols)}, created) VALUES ({','.join('?' * len(cols))}, ?) "
            "ON CONFLICT(key) DO NOTHING",
            [[r.get(c) for c in cols] + [now] for r in rows])

    def samples(self, **where: Any) -> list[dict]:
        clause = " AND ".join(f"{k} = ?" for k in where) or "1=1"
        return [dict(r) for r in self.conn.execute(f"SELECT * FROM samples WHERE {clause} ORDER BY id",
                                                   list(where.values()))]

    def count_samples(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    # -- leases: concurrent samplers split the work instead of both doing all of it

    def claim(self, keys: list[str], limit: int, ttl: float = 900.0,
              done: Callable[[list[str]], set[str]] | None = None) -> list[str]:
        """Claim up to `limit` of `keys` that are neither done nor claimed by another live
        worker; returns the claimed keys (in the given order). Keys are sample keys (done:
        stored as samples) unless `done` says which of a chunk of keys are done (it runs inside
        the claim's transaction, so two workers never both see a key as open). A claim expires
        after `ttl` seconds, or at once when its owner was a process on this host that has died."""
        def body():
            now = time.time()
            self.conn.execute("DELETE FROM leases WHERE expires < ?", (now,))
            owners = [r[0] for r in self.conn.execute("SELECT DISTINCT owner FROM leases WHERE owner != ?",
                                                      (self.owner,))]
            for owner in owners:
                if not _owner_alive(owner):
                    self.conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
            taken: set[str] = set()
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                taken.update(r[0] for r in self.conn.execute(
                    f"SELECT sample_key FROM leases WHERE sample_key IN ({marks}) AND owner != ?", [*chunk, self.owner]))
                if done is None:
                    taken.update(r[0] for r in self.conn.execute(f"SELECT key FROM samples WHERE key IN ({marks})",
                                                                 chunk))
                else:
                    taken.update(done(chunk))
            mine = [k for k in keys if k not in taken][:limit]
            self.conn.executemany("INSERT OR REPLACE INTO leases VALUES (?,?,?)",
                                  [(k, self.owner, now + ttl) for k in mine])
            return mine

        return self._transaction(body)

    def release(self, keys: list[str]) -> None:
        def body():
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                self.conn.execute(f"DELETE FROM leases WHERE owner = ? AND sample_key IN ({','.join('?' * len(chunk))})",
                                  [self.owner, *chunk])

        self._transaction(body)

    # -- judges and judgments

    def register_judge(self, judge_id: str, family: str, backend: str, model: str | None, version: str | None,
                       metric: str, rubric_sha256: str | None, params: dict) -> None:
        self._transaction(lambda: self.conn.execute(
            "INSERT OR IGNORE INTO judges VALUES (?,?,?,?,?,?,?,?,?)",
            (judge_id, family, backend, model, version, metric, rubric_sha256, canonical_json(params), time.time())))

    def judge_families(self) -> list[dict]:
        """One row per judge family in the store: family, backend, model, version, metrics."""
        q = ("SELECT family, backend, model, version, group_concat(DISTINCT metric) AS metrics FROM judges "
             "GROUP BY family ORDER BY min(created)")
        return [dict(r) for r in self.conn.execute(q)]

    def existing_judgments(self, judge_id: str, metric: str) -> set[int]:
        return {r[0] for r in self.conn.execute(
            "SELECT sample_id FROM judgments WHERE judge_id = ? AND metric = ?", (judge_id, metric))}

    def add_judgments(self, rows: list[dict]) -> int:
        now = time.time()
        return self._insert_batch(
            "INSERT INTO judgments (sample_id, judge_id, metric, score, label, raw, created, run_id) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(sample_id, judge_id, metric) DO NOTHING",
            [(r["sample_id"], r["judge_id"], r["metric"], r.get("score"), r.get("label"), json.dumps(r.get("raw")),
              now, r.get("run_id")) for r in rows])

    def judgments(self, family: str, metric: str | None = None):
        """Judgments of one judge family (all its rubrics), joined to their samples (pandas)."""
        import pandas as pd

        q = ("SELECT s.id AS sample_id, s.model, s.adapter, s.suite, s.question_id, s.paraphrase_index, s.system, "
             "s.sample_index, s.gen_hash, s.question, s.answer, j.judge_id, j.metric, j.score, j.label, j.raw "
             "FROM judgments j JOIN judges g ON g.id = j.judge_id AND g.metric = j.metric "
             "JOIN samples s ON s.id = j.sample_id WHERE g.family = ?")
        params: list = [family]
        if metric is not None:
            q += " AND j.metric = ?"
            params.append(metric)
        return pd.read_sql_query(q, self.conn, params=params)

    # -- API finetuning

    def api_file(self, provider: str, scope: str, sha256: str) -> str | None:
        row = self.conn.execute("SELECT file_id FROM api_files WHERE provider=? AND scope=? AND sha256=?",
                                (provider, scope, sha256)).fetchone()
        return row[0] if row else None

    def put_api_file(self, provider: str, scope: str, sha256: str, file_id: str) -> None:
        self._transaction(lambda: self.conn.execute("INSERT OR REPLACE INTO api_files VALUES (?,?,?,?,?)",
                                                    (provider, scope, sha256, file_id, time.time())))

    def put_api_job(self, job: dict) -> None:
        """Insert or update a finetuning job row (`history` a list, `hyperparameters` a dict)."""
        row = {**job, "history": canonical_json(job.get("history", [])),
               "hyperparameters": canonical_json(job.get("hyperparameters", {})), "updated": time.time()}
        row.setdefault("created", time.time())
        cols = ["id", "provider", "scope", "key", "model", "file_id", "dataset", "hyperparameters", "status", "history",
                "fine_tuned_model", "trained_tokens", "cost_usd", "error", "created", "updated"]
        self._transaction(lambda: self.conn.execute(
            f"INSERT INTO api_jobs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))}) ON CONFLICT(id) DO UPDATE "
            "SET status=excluded.status, history=excluded.history, fine_tuned_model=excluded.fine_tuned_model, "
            "trained_tokens=excluded.trained_tokens, cost_usd=excluded.cost_usd, error=excluded.error, "
            "updated=excluded.updated", [row.get(c) for c in cols]))

    def api_jobs(self, **where: Any) -> list[dict]:
        q = "SELECT * FROM api_jobs" + (" WHERE " + " AND ".join(f"{k} = ?" for k in where) if where else "")
        rows = self.conn.execute(q + " ORDER BY created", list(where.values())).fetchall()
        names = [d[0] for d in self.conn.execute("SELECT * FROM api_jobs LIMIT 0").description]
        out = [dict(zip(names, r)) for r in rows]
        for r in out:
            r["history"], r["hyperparameters"] = json.loads(r["history"]), json.loads(r["hyperparameters"] or "{}")
        return out

    # -- export

    def table(self, name: str):
        import pandas as pd

        if name not in ("samples", "judgments", "judges", "runs", "artefacts", "api_files", "api_jobs"):
            raise EmlabError(f"unknown table '{name}' (samples, judgments, judges, runs, artefacts, api_files, "
                             "api_jobs)")
        return pd.read_sql_query(f"SELECT * FROM {name}", self.conn)

    def export(self, out: str | Path, fmt: str = "parquet", table: str = "samples", force: bool = False) -> Path:
        """Write a table to Parquet, CSV or JSONL (atomically); an existing file is kept unless `force`."""
        from emlab.files import atomic_write, output_file

        if fmt not in ("parquet", "csv", "jsonl"):
            raise EmlabError(f"unknown format '{fmt}' (parquet, csv, jsonl)")
        if Path(out).exists() and not force:
            raise EmlabError(f"{out}: already exists (pass --force to overwrite it)")
        out = output_file(out)
        df = self.table(table)
        if fmt == "parquet":
            with atomic_write(out, "wb") as handle:
                df.to_parquet(handle, index=False)
        elif fmt == "csv":
            with atomic_write(out) as handle:
                df.to_csv(handle, index=False)
        else:
            with atomic_write(out) as handle:
                df.to_json(handle, orient="records", lines=True, force_ascii=False)
        return out


def open_existing(project: str | Path) -> Store:
    """The project's store, or a one-line error when there is none."""
    path = Path(project) / DB_NAME
    if not path.exists():
        raise EmlabError(f"{path}: no run store here")
    return Store(project)
