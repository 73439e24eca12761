"""One job per workdir: an exclusive `flock` on a file in the workdir, held while the job runs.

Two pretrainings in one workdir would both write its checkpoints and metrics; the second
process is refused at once, naming the first. The kernel drops the lock when its holder
exits or dies, so a killed job never leaves a stale lock behind. The lock file is per host:
the processes of one multi-host job share a workdir (on a network filesystem, where a lock
may span hosts), so only two jobs on one host are told apart.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Iterator


def lock_path(workdir: Path) -> Path:
    return workdir / f".job-{socket.gethostname()}.lock"


def check_workdir(workdir: Path) -> None:
    """ValueError unless `workdir` is a directory or can become one."""
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is a file, not a directory; give a new or existing directory")
    for parent in workdir.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--workdir {workdir} is inside {parent}, which is a file; give another path")
            break


@contextlib.contextmanager
def hold_workdir(workdir: Path, job: str) -> Iterator[None]:
    """Hold `workdir` for this process while the block runs; ValueError if another process holds it."""
    check_workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = lock_path(workdir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(encoding="utf-8").strip() or "another process"
            raise ValueError(f"{workdir} is in use by {holder}; wait for it to finish (a second {job} "
                             f"would write the same checkpoints), or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{job} pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
