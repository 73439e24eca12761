"""The results store's file: an existing one is checked before use, a new one appears whole.

sqlite3.connect creates an empty database wherever it is pointed, so a truncated, emptied or
foreign `results.sqlite` would silently become a new, empty store (and its runs be redone,
its report replaced). Here an existing file must be an intact SQLite database with the
store's tables, or the caller gets a ValueError naming it; a new store is built in a
temporary file and linked into place (os.link fails if the path appeared meanwhile, so
concurrent workers creating one study's store never see a half-made file); connections
open it with mode=rw, which never creates a file.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

TABLES = ("runs", "meta")


def connect_existing(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A connection to the database at `path` that never creates the file."""
    return sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=rw", uri=True, timeout=timeout_s,
                           isolation_level=None)


def check_existing(path: Path, timeout_s: float = 120.0) -> None:
    """ValueError naming `path` unless it is an intact SQLite database holding the store's tables
    (waiting up to `timeout_s` for another process's write lock)."""
    advice = ("restore it from a backup, or move it away to start a new store (its runs would be redone); "
              "it was left untouched")
    if not path.is_file():
        raise ValueError(f"results store {path} is not a file; {advice}")
    # No open()/close() of the file here: closing any descriptor of it drops the POSIX locks the
    # SQLite connections of this process hold on it, and another process may then checkpoint and
    # delete the WAL under them (https://sqlite.org/howtocorrupt.html, 2.2). stat and SQLite only.
    if path.stat().st_size == 0:
        raise ValueError(f"results store {path} is empty (0 bytes), not a results database; {advice}")
    try:
        conn = connect_existing(path, timeout_s=timeout_s)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):  # held by a writer: not a fault of the file
            raise ValueError(f"results store {path} stayed locked by another process for {timeout_s:.0f} s; "
                             f"retry when it is done") from None
        raise ValueError(f"results store {path} is corrupt ({error}); {advice}") from None
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            raise ValueError(f"results store {path} is not an SQLite database; {advice}") from None
        raise ValueError(f"results store {path} is corrupt ({error}); {advice}") from None
    if problems != ["ok"]:
        raise ValueError(f"results store {path} is corrupt (sqlite quick_check: {'; '.join(problems[:3])}); {advice}")
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise ValueError(f"{path} is an SQLite database without the results tables {missing}, not a results "
                         f"store; {advice}")


def create_whole(path: Path, statements: Iterable[str]) -> None:
    """Create the database at `path` with `statements` run on it, appearing complete or not at all;
    if another process created it first, theirs is kept."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}")
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("BEGIN")
            for statement in statements:
                conn.execute(statement)
            conn.execute("COMMIT")
        finally:
            conn.close()
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for suffix in ("-journal", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
