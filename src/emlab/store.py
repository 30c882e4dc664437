"""The run store: one SQLite database per project directory (`<project>/emlab.db`).

WAL mode, a versioned schema with numbered migrations, and transactional batch writes.
Samples are keyed by everything that decides them (model, adapter hash, suite, question,
paraphrase, system prompt, sample index, generation-config hash), so a rerun finds what
exists and generates only what is missing: kill -9 at any point loses at most the batch
in flight and never duplicates a sample.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from emlab.hashing import canonical_json, text_hash

DB_NAME = "emlab.db"

MIGRATIONS: list[str] = [
    # 1: runs, artefacts, samples, judgments
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        created REAL NOT NULL,
        config TEXT NOT NULL,
        versions TEXT NOT NULL,
        git_revision TEXT,
        seeds TEXT
    );
    CREATE TABLE artefacts (
        sha256 TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        path TEXT,
        meta TEXT
    );
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,
        adapter TEXT NOT NULL,
        suite TEXT NOT NULL,
        question_id TEXT NOT NULL,
        paraphrase_index INTEGER NOT NULL,
        system TEXT,
        sample_index INTEGER NOT NULL,
        gen_hash TEXT NOT NULL,
        seed INTEGER NOT NULL,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        finish_reason TEXT,
        n_tokens INTEGER,
        run_id TEXT,
        created REAL NOT NULL
    );
    CREATE INDEX samples_by_condition ON samples(model, adapter, suite, gen_hash);
    CREATE TABLE judgments (
        id INTEGER PRIMARY KEY,
        sample_id INTEGER NOT NULL REFERENCES samples(id),
        judge_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        score REAL,
        label TEXT,
        raw TEXT,
        created REAL NOT NULL,
        UNIQUE(sample_id, judge_id, metric)
    );
    """,
]


@dataclass(frozen=True)
class SampleKey:
    model: str
    adapter: str  # "base" or the adapter's content hash
    suite: str
    question_id: str
    paraphrase_index: int
    system: str | None
    sample_index: int
    gen_hash: str

    def digest(self) -> str:
        return text_hash(canonical_json([self.model, self.adapter, self.suite, self.question_id,
                                         self.paraphrase_index, self.system, self.sample_index, self.gen_hash]))


class Store:
    """A project's SQLite store."""

    def __init__(self, project: str | Path = "."):
        self.project = Path(project)
        self.project.mkdir(parents=True, exist_ok=True)
        self.path = self.project / DB_NAME
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        version = self.schema_version
        for number, script in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={number}")
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    # -- runs and artefacts

    def add_run(self, run_id: str, kind: str, config: dict, versions: dict, git_revision: str | None,
                seeds: Any = None) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?)",
            (run_id, kind, time.time(), canonical_json(config), canonical_json(versions), git_revision,
             canonical_json(seeds)),
        )

    def add_artefact(self, sha256: str, kind: str, path: str | None, meta: dict | None = None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO artefacts VALUES (?,?,?,?)",
                          (sha256, kind, path, canonical_json(meta or {})))

    def runs(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY created")]

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
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            before = self.conn.total_changes
            self.conn.executemany(sql, params)
            added = self.conn.total_changes - before
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return added

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

    # -- judgments

    def existing_judgments(self, judge_id: str, metric: str) -> set[int]:
        return {r[0] for r in self.conn.execute(
            "SELECT sample_id FROM judgments WHERE judge_id = ? AND metric = ?", (judge_id, metric))}

    def add_judgments(self, rows: list[dict]) -> int:
        now = time.time()
        return self._insert_batch(
            "INSERT INTO judgments (sample_id, judge_id, metric, score, label, raw, created) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(sample_id, judge_id, metric) DO NOTHING",
            [(r["sample_id"], r["judge_id"], r["metric"], r.get("score"), r.get("label"), json.dumps(r.get("raw")),
              now) for r in rows])

    # -- export

    def table(self, name: str):
        import pandas as pd

        if name not in ("samples", "judgments", "runs", "artefacts"):
            raise ValueError(f"unknown table '{name}'")
        return pd.read_sql_query(f"SELECT * FROM {name}", self.conn)

    def export(self, out: str | Path, fmt: str = "parquet", table: str = "samples") -> Path:
        """Write a table to Parquet, CSV or JSONL (atomically)."""
        from emlab.io import atomic_write

        df = self.table(table)
        out = Path(out)
        if fmt == "parquet":
            with atomic_write(out, "wb") as handle:
                df.to_parquet(handle, index=False)
        elif fmt == "csv":
            with atomic_write(out) as handle:
                df.to_csv(handle, index=False)
        elif fmt == "jsonl":
            with atomic_write(out) as handle:
                df.to_json(handle, orient="records", lines=True, force_ascii=False)
        else:
            raise ValueError(f"unknown format '{fmt}' (parquet, csv, jsonl)")
        return out
