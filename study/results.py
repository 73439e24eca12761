"""The study's results store: one SQLite row per run, keyed by the sha256 of its canonical config.

A row moves pending -> running (claimed by one worker, with a heartbeat) -> done (all
result fields written in one transaction) or failed (with the error text; retried by a
later invocation). Several worker processes may share one study directory: every claim
is a `BEGIN IMMEDIATE` transaction, so two workers never hold the same configuration,
and a claim whose worker died (stale heartbeat, or a dead pid on this host) can be taken
over. WAL mode needs every process on one host (shared memory); on a network filesystem
open the store with journal_mode="delete" and a filesystem with working POSIX locks.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd

from checkpoints.atomic import atomic_path
from finetune.result import RESULT_COLUMNS, RunResult, canonical_config_json, run_key
from study import store_file
from study.locks import default_worker_id, pid_alive

STATUSES = ("pending", "running", "done", "failed")
DB_FILENAME = "results.sqlite"
SCHEMA_VERSION = 1
MODEL_PARAMS = "model_params"  # exported column: the model-size axis the laws fit (README's `laws fit`)

_STATE_COLUMNS = (
    "run_key TEXT PRIMARY KEY",
    "config_json TEXT NOT NULL",
    f"status TEXT NOT NULL CHECK (status IN {STATUSES!r})",
    "worker_id TEXT",
    "worker_host TEXT",
    "worker_pid INTEGER",
    "claimed_at REAL",
    "heartbeat_at REAL",
    "attempts INTEGER NOT NULL DEFAULT 0",
    "error TEXT",
    "failed_at REAL",
    "created_at REAL NOT NULL",
    "finished_at REAL",
)


def _schema() -> list[str]:
    """The statements that make a new store's tables."""
    columns = list(_STATE_COLUMNS) + [f"{name} {sql_type}" for name, sql_type in RESULT_COLUMNS]
    return [f"CREATE TABLE runs ({', '.join(columns)})", "CREATE INDEX runs_status ON runs (status)",
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}')"]


# --- The store ------------------------------------------------------------------------


class ResultsStore:
    """SQLite results store of one study directory; safe to share between processes."""

    def __init__(
        self,
        study_dir: str | os.PathLike,
        *,
        filename: str = DB_FILENAME,
        journal_mode: str = "wal",
        stale_after_s: float = 600.0,
        busy_timeout_s: float = 120.0,
        clock: Callable[[], float] = time.time,
        create: bool = True,
    ) -> None:
        if journal_mode.lower() not in ("wal", "delete", "truncate"):
            raise ValueError(f"journal_mode must be 'wal' (one host) or 'delete'/'truncate' (network filesystems), got {journal_mode!r}")
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0 seconds, got {stale_after_s!r}")
        self.study_dir = Path(study_dir)
        self.path = self.study_dir / filename
        self.journal_mode = journal_mode.lower()
        self.stale_after_s = float(stale_after_s)
        self.busy_timeout_s = float(busy_timeout_s)
        self.clock = clock
        self._local = threading.local()
        if self.path.exists() or self.path.is_symlink():
            store_file.check_existing(self.path, self.busy_timeout_s)  # never a new store over an existing path
        elif not create:
            raise ValueError(f"{self.study_dir} has no results store ({filename}); run the study first")
        else:
            self.study_dir.mkdir(parents=True, exist_ok=True)
            store_file.create_whole(self.path, _schema())
        with self._transaction() as conn:
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if int(found) != SCHEMA_VERSION:
            raise ValueError(f"{self.path} has results schema version {found}, this code reads {SCHEMA_VERSION}")

    # connections: one per (process, thread); sqlite3 connections must not cross either.
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = store_file.connect_existing(self.path, self.busy_timeout_s)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA journal_mode={self.journal_mode}")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock now: read-then-write is atomic
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _key(self, run: Mapping[str, Any] | str) -> str:
        if isinstance(run, str):
            if len(run) != 64 or any(c not in "0123456789abcdef" for c in run):
                raise ValueError(f"run key {run!r} is not a sha256 hex digest; pass the config dict or run_key(config)")
            return run
        return run_key(run)

    def _insert_pending(self, conn: sqlite3.Connection, config: Mapping[str, Any]) -> str:
        key = run_key(config)
        conn.execute(
            "INSERT OR IGNORE INTO runs (run_key, config_json, status, created_at) VALUES (?, ?, 'pending', ?)",
            (key, canonical_config_json(config), self.clock()),
        )
        return key

    def _row(self, conn: sqlite3.Connection, run: Mapping[str, Any] | str) -> sqlite3.Row | None:
        key = self._key(run)
        row = conn.execute("SELECT * FROM runs WHERE run_key = ?", (key,)).fetchone()
        if row is None and not isinstance(run, str):
            self._insert_pending(conn, run)
            row = conn.execute("SELECT * FROM runs WHERE run_key = ?", (key,)).fetchone()
        return row

    def _claim_live(self, row: sqlite3.Row, now: float) -> bool:
        """Whether a running row's worker is (as far as we can tell) still alive."""
        if row["heartbeat_at"] is None or now - row["heartbeat_at"] > self.stale_after_s:
            return False
        if row["worker_host"] == socket.gethostname() and row["worker_pid"] is not None:
            return row["worker_pid"] == os.getpid() or pid_alive(int(row["worker_pid"]))
        return True

    def _claimable(self, row: sqlite3.Row, now: float, retry_failed_before: float | None, mine_ok: str | None = None) -> bool:
        status = row["status"]
        if status == "pending":
            return True
        if status == "running":
            return row["worker_id"] == mine_ok or not self._claim_live(row, now)
        if status == "failed":
            return retry_failed_before is not None and (row["failed_at"] or 0.0) < retry_failed_before
        return False

    def _take(self, conn: sqlite3.Connection, key: str, worker_id: str, now: float) -> None:
        host, _, pid = worker_id.rpartition(":")
        conn.execute(
            "UPDATE runs SET status='running', worker_id=?, worker_host=?, worker_pid=?, claimed_at=?,"
            " heartbeat_at=?, attempts=attempts+1 WHERE run_key=?",
            (worker_id, host or None, int(pid) if pid.isdigit() else None, now, now, key),
        )

    # --- public API ---------------------------------------------------------------

    def add(self, config: Mapping[str, Any]) -> str:
        """Register a run as pending (no-op if it exists); returns its key."""
        with self._transaction() as conn:
            return self._insert_pending(conn, config)

    def add_many(self, configs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Register many runs in one transaction; returns their keys in order."""
        with self._transaction() as conn:
            return [self._insert_pending(conn, config) for config in configs]

    def claim(self, run: Mapping[str, Any] | str, *, worker_id: str | None = None, retry_failed: bool = True) -> bool:
        """Atomically claim one run (registering a config if new); False if done or held by another live worker."""
        worker_id = worker_id or default_worker_id()
        with self._transaction() as conn:
            row = self._row(conn, run)
            if row is None:
                raise KeyError(f"no run with key {run!r} in {self.path}")
            now = self.clock()
            if not self._claimable(row, now, math.inf if retry_failed else None, mine_ok=worker_id):
                return False
            if row["status"] == "running" and row["worker_id"] == worker_id:  # already ours: the same attempt
                conn.execute("UPDATE runs SET heartbeat_at=? WHERE run_key=?", (now, row["run_key"]))
                return True
            self._take(conn, row["run_key"], worker_id, now)
            return True

    def claim_next(
        self,
        keys: Sequence[str] | None = None,
        *,
        worker_id: str | None = None,
        retry_failed_before: float | None = None,
    ) -> tuple[str, dict[str, Any]] | None:
        """Claim the first claimable run (in `keys` order, else registration order); None when none is left.

        Claimable: pending, or running under a dead worker (stale heartbeat / dead pid on this host).
        Failed runs are retried only if they failed before `retry_failed_before` (pass the time this
        invocation started: failures of earlier invocations are retried, this one's are not looped on).
        """
        worker_id = worker_id or default_worker_id()
        with self._transaction() as conn:
            now = self.clock()
            rows = conn.execute(
                "SELECT run_key, config_json, status, worker_id, worker_host, worker_pid, heartbeat_at, failed_at"
                " FROM runs WHERE status != 'done' ORDER BY created_at, rowid"
            ).fetchall()
            if keys is not None:
                order = {key: i for i, key in enumerate(keys)}
                rows = sorted((r for r in rows if r["run_key"] in order), key=lambda r: order[r["run_key"]])
            for row in rows:
                if self._claimable(row, now, retry_failed_before):
                    self._take(conn, row["run_key"], worker_id, now)
                    return row["run_key"], json.loads(row["config_json"])
        return None

    def heartbeat(self, run: Mapping[str, Any] | str, *, worker_id: str | None = None) -> bool:
        """Refresh this worker's claim; False means the claim was lost (stop working on the run)."""
        worker_id = worker_id or default_worker_id()
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE runs SET heartbeat_at=? WHERE run_key=? AND status='running' AND worker_id=?",
                (self.clock(), self._key(run), worker_id),
            )
            return cursor.rowcount == 1

    @contextlib.contextmanager
    def keep_alive(self, run: Mapping[str, Any] | str, *, interval_s: float = 30.0, worker_id: str | None = None) -> Iterator[threading.Event]:
        """Heartbeat in a background thread while the block runs; the yielded Event is set if the claim is lost."""
        worker_id = worker_id or default_worker_id()
        stop, lost = threading.Event(), threading.Event()

        def beat() -> None:
            while not stop.wait(interval_s):
                if not self.heartbeat(run, worker_id=worker_id):
                    lost.set()
            self.close()

        thread = threading.Thread(target=beat, name="results-heartbeat", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()

    def finish(self, run: Mapping[str, Any] | str, result: RunResult, *, worker_id: str | None = None) -> bool:
        """Write a finished run's row in one transaction; a no-op (False) if the run is already done."""
        values = result.to_row()
        worker_id = worker_id or default_worker_id()
        with self._transaction() as conn:
            row = self._row(conn, run)
            if row is None:
                raise KeyError(f"no run with key {run!r} in {self.path}")
            if row["status"] == "done":
                return False
            assignments = ", ".join(f"{name}=?" for name in values)
            conn.execute(
                f"UPDATE runs SET {assignments}, status='done', worker_id=?, error=NULL, finished_at=? WHERE run_key=?",
                (*values.values(), worker_id, self.clock(), row["run_key"]),
            )
            return True

    def fail(self, run: Mapping[str, Any] | str, error: str, *, worker_id: str | None = None) -> None:
        """Mark a run failed with its error text (kept for `failures()`); done runs are left alone."""
        with self._transaction() as conn:
            row = self._row(conn, run)
            if row is None:
                raise KeyError(f"no run with key {run!r} in {self.path}")
            if row["status"] != "done":
                conn.execute(
                    "UPDATE runs SET status='failed', error=?, failed_at=?, worker_id=? WHERE run_key=?",
                    (str(error)[-20000:], self.clock(), worker_id or default_worker_id(), row["run_key"]),
                )

    def release(self, run: Mapping[str, Any] | str, *, worker_id: str | None = None) -> bool:
        """Give a claim back (e.g. on Ctrl-C): running -> pending, if this worker holds it."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status='pending', heartbeat_at=NULL WHERE run_key=? AND status='running' AND worker_id=?",
                (self._key(run), worker_id or default_worker_id()),
            )
            return cursor.rowcount == 1

    def rekey(self, old_key: str, config: Mapping[str, Any]) -> str:
        """Give row `old_key` the key of `config` (the same run with its config rewritten, e.g. made
        relocatable); returns the new key. Where a row with that key exists already, one row is
        kept: a done one, the new-key row if both or neither are done."""
        new_key = run_key(config)
        with self._transaction() as conn:
            old = conn.execute("SELECT status FROM runs WHERE run_key=?", (old_key,)).fetchone()
            if old is None or new_key == old_key:
                return new_key
            new = conn.execute("SELECT status FROM runs WHERE run_key=?", (new_key,)).fetchone()
            if new is not None and (new["status"] == "done" or old["status"] != "done"):
                conn.execute("DELETE FROM runs WHERE run_key=?", (old_key,))
                return new_key
            conn.execute("DELETE FROM runs WHERE run_key=?", (new_key,))
            conn.execute("UPDATE runs SET run_key=?, config_json=? WHERE run_key=?",
                         (new_key, canonical_config_json(config), old_key))
        return new_key

    def has_result(self, run: Mapping[str, Any] | str) -> bool:
        """Whether the run finished (its row is done)."""
        row = self._conn().execute("SELECT status FROM runs WHERE run_key=?", (self._key(run),)).fetchone()
        return row is not None and row["status"] == "done"

    def get(self, run: Mapping[str, Any] | str) -> dict[str, Any] | None:
        """The run's row as a dict (config parsed into 'config'), or None."""
        row = self._conn().execute("SELECT * FROM runs WHERE run_key=?", (self._key(run),)).fetchone()
        return None if row is None else self._as_dict(row)

    @staticmethod
    def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        out["config"] = json.loads(out["config_json"])
        return out

    def counts(self) -> dict[str, int]:
        """Runs per state: pending, running (live worker), stale (worker dead), failed, done, total."""
        now = self.clock()
        out = dict.fromkeys(("pending", "running", "stale", "failed", "done"), 0)
        for row in self._conn().execute("SELECT status, worker_id, worker_host, worker_pid, heartbeat_at FROM runs"):
            status = row["status"]
            if status == "running" and not self._claim_live(row, now):
                status = "stale"
            out[status] += 1
        out["total"] = sum(out.values())
        return out

    def failures(self) -> list[dict[str, Any]]:
        """Failed runs with their error text, attempts and worker, oldest failure first."""
        rows = self._conn().execute("SELECT * FROM runs WHERE status='failed' ORDER BY failed_at").fetchall()
        keep = ("run_key", "config", "error", "attempts", "failed_at", "worker_id")
        return [{k: d[k] for k in keep} for d in map(self._as_dict, rows)]

    def summary(self) -> str:
        """Human-readable status: one counts line, then one line per failed run with its last error line."""
        counts = self.counts()
        lines = [" · ".join(f"{k} {counts[k]}" for k in ("done", "running", "stale", "failed", "pending")) + f" (total {counts['total']})"]
        for failure in self.failures():
            last = (failure["error"] or "").strip().splitlines()[-1:] or ["(no error text)"]
            lines.append(f"FAILED {failure['run_key'][:12]} attempts={failure['attempts']} {failure['config']}: {last[0]}")
        return "\n".join(lines)

    def rows(self, status: str | None = "done") -> list[dict[str, Any]]:
        """All rows with the given status (None = every row), in registration order."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES} or None, got {status!r}")
        query, args = "SELECT * FROM runs", ()
        if status is not None:
            query, args = query + " WHERE status=?", (status,)
        return [self._as_dict(r) for r in self._conn().execute(query + " ORDER BY created_at, rowid", args)]

    def to_dataframe(self, status: str | None = "done", *, expand_json: bool = True):
        """Rows as a pandas DataFrame; zero-shot and extra metrics also as 'zero_shot.<name>' / 'extra.<name>'
        columns, and `model_params` (the non-embedding parameters: the model-size X of the laws)."""
        records = []
        for row in self.rows(status):
            row.pop("config")
            if expand_json:
                for column, prefix in (("zero_shot_json", "zero_shot."), ("extra_metrics_json", "extra.")):
                    for name, value in json.loads(row[column] or "{}").items():
                        row[prefix + name] = value
            row[MODEL_PARAMS] = row["non_embedding_params"]
            records.append(row)
        columns = ["run_key", "status"] + [name for name, _ in RESULT_COLUMNS] + [MODEL_PARAMS]
        frame = pd.DataFrame.from_records(records)
        if frame.empty:
            return pd.DataFrame(columns=columns)
        first = [c for c in columns if c in frame.columns]
        return frame[first + [c for c in frame.columns if c not in first]]

    def to_csv(self, path: str | os.PathLike, status: str | None = "done") -> Path:
        """Write the rows to CSV atomically (tmp file, then os.replace); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            self.to_dataframe(status).to_csv(tmp, index=False)
        return target
