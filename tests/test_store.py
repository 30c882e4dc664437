"""The run store: schema, batch writes, resume after SIGKILL, export."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from emlab.store import DB_NAME, MIGRATIONS, Store


def _row(i, key=None):
    return {"key": key or f"k{i}", "model": "m", "adapter": "base", "suite": "s", "question_id": "q",
            "paraphrase_index": 0, "system": None, "sample_index": i, "gen_hash": "g", "seed": i,
            "question": "Q?", "answer": f"A{i}", "finish_reason": "stop", "n_tokens": 3}


def test_schema_wal_and_migrations(tmp_path):
    with Store(tmp_path) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Store(tmp_path) as s:  # reopening does not re-run migrations
        assert s.schema_version == len(MIGRATIONS)


def test_batches_are_idempotent_and_export(tmp_path):
    with Store(tmp_path) as s:
        assert s.add_samples([_row(i) for i in range(5)]) == 5
        assert s.add_samples([_row(i) for i in range(3, 8)]) == 3  # 3, 4 exist
        assert s.count_samples() == 8
        assert s.existing_keys(["k1", "k9"]) == {"k1"}
        for fmt in ("parquet", "csv", "jsonl"):
            out = s.export(tmp_path / f"x.{fmt}", fmt)
            df = pd.read_parquet(out) if fmt == "parquet" else (
                pd.read_csv(out) if fmt == "csv" else pd.read_json(out, lines=True))
            assert len(df) == 8 and set(df["answer"]) == {f"A{i}" for i in range(8)}


def test_failed_batch_writes_nothing(tmp_path):
    with Store(tmp_path) as s:
        bad = [_row(0), {**_row(1), "answer": None}]  # NOT NULL violation in the second row
        with pytest.raises(sqlite3.IntegrityError):
            s.add_samples(bad)
        assert s.count_samples() == 0


WRITER = r"""
import sys, time
from emlab.store import Store
s = Store(sys.argv[1])
i = 0
while True:
    rows = [{"key": f"k{i + j}", "model": "m", "adapter": "base", "suite": "s", "question_id": "q",
             "paraphrase_index": 0, "system": None, "sample_index": i + j, "gen_hash": "g", "seed": 0,
             "question": "Q", "answer": "x" * 2000, "finish_reason": "stop", "n_tokens": 1} for j in range(50)]
    s.add_samples(rows)
    i += 50
    if i >= 100000:
        break
"""


def test_sigkill_during_writes_leaves_whole_batches(tmp_path):
    counts = []
    for delay in (0.3, 0.7, 1.2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with Store(tmp_path) as s:
            n = s.count_samples()
            assert n % 50 == 0  # only whole batches
            counts.append(n)
            assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (tmp_path / DB_NAME).exists()
    assert counts[-1] > 0  # batches did land before a kill, so the check above was not vacuous
