"""Who is working where: worker ids, same-host liveness, and the exclusive file lock that
lets one of several workers sharing a study directory run a pretraining (O_EXCL create,
heartbeat in the file's mtime, a dead holder's lock taken over by renaming it away)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    """'<host>:<pid>': unique per live process, and lets this host detect dead workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but unreaped child is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class PretrainLock:
    """An exclusive, heartbeat-refreshed claim on one pretraining run (a file next to its workdir)."""

    def __init__(self, path: Path, *, stale_after_s: float = 300.0, worker_id: str | None = None):
        self.path = path
        self.stale_after_s = stale_after_s
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = worker_id or f"{self.host}:{self.pid}"

    def holder(self) -> dict | None:
        """The current holder's record, or None if unlocked or unreadable (being written)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_stale(self) -> bool:
        """Whether the lock's holder is dead: pid gone on this host, or no heartbeat for stale_after_s."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        record = self.holder()
        if record is None:
            return age > 5.0  # a record is written right after creation; older and empty means abandoned
        if record.get("host") == self.host and isinstance(record.get("pid"), int):
            if record["pid"] == self.pid:
                return False
            if not pid_alive(record["pid"]):
                return True
        return age > self.stale_after_s

    def try_acquire(self) -> bool:
        """Take the lock if free or stale; False if a live worker holds it."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.is_stale():
                    return False
                holder = self.holder()  # read before the rename: afterwards the file is gone
                aside = self.path.with_name(f"{self.path.name}.stale-{self.pid}-{time.time_ns()}")
                try:
                    os.rename(self.path, aside)  # only one of several racing workers wins this
                except FileNotFoundError:
                    continue
                log.warning("taking over stale pretraining lock %s (holder %s)", self.path,
                            holder or "unknown: the lock file was empty")
                with contextlib.suppress(OSError):
                    os.remove(aside)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"host": self.host, "pid": self.pid, "worker_id": self.worker_id, "since": time.time()}, handle)
            return True
        return False

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        record = self.holder()
        if record and record.get("pid") == self.pid and record.get("host") == self.host:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)

    @contextlib.contextmanager
    def heartbeat(self, interval_s: float = 20.0) -> Iterator[None]:
        """Refresh the lock's mtime in a background thread while the block runs; release at the end."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval_s):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        thread = threading.Thread(target=beat, name="pretrain-lock-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.release()
