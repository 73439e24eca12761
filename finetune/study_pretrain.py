"""The study's pretraining stage: one claim-locked train.pretrain run per (size, corpus).

Several workers may share a study directory. Pretraining a size is claimed by one worker
through a lock file created with O_EXCL (its holder's host, pid and a heartbeat in the
file's mtime); the others wait for its DONE marker. A lock whose holder died (dead pid on
this host, or no heartbeat for `stale_after_s`) is taken over by renaming it away first,
which only one worker can do; the new holder resumes the pretraining from its latest
checkpoint (train.pretrain resumes bit-exactly).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from finetune.results import _pid_alive  # same-host liveness test as the results store
from finetune.study_spec import PRETRAIN_DIRNAME, StudySpec

log = logging.getLogger(__name__)
DONE_FILENAME = "STUDY_PRETRAIN_DONE.json"
PretrainFn = Callable[[str, Sequence[str], Path, bool], None]  # (gin file, bindings, workdir, progress)


def pretrain_dir(study_dir: str | Path, size: str, corpus: str) -> Path:
    """Workdir of one pretraining run inside the study directory (path as given, not resolved)."""
    return Path(study_dir) / PRETRAIN_DIRNAME / f"{size}_{corpus}"


def pretrain_bindings(spec: StudySpec, size: str, corpus: str) -> tuple[str, list[str]]:
    """(gin file, bindings) of one pretraining run; the spec's own pretrain_params come last (they win)."""
    gin_file = spec.pretrain_gin.format(size=size, corpus=corpus)
    bindings = [
        f"pretrain.model_name = {size!r}",
        f"CorpusBatches.corpus = {corpus!r}",
        f"CorpusBatches.pair = {spec.pair!r}",
        f"TrainConfig.batch_size = {spec.pretrain_batch_size}",
        f"TrainConfig.seq_len = {spec.pretrain_seq_len}",
        f"TrainConfig.token_budget = {spec.token_budget}",
        "TrainConfig.num_steps = None",
        f"TrainConfig.checkpoint_tokens = {list(spec.checkpoint_tokens)}",
        "TrainConfig.checkpoint_every_tokens = None",
    ]
    return gin_file, bindings + list(spec.pretrain_params)


def pretrain_in_process(gin_file: str, bindings: Sequence[str], workdir: Path, progress: bool) -> None:
    """Run train.pretrain in this process (gin state is cleared before and after), as its CLI does."""
    import gin

    from train.pretrain import _write_atomic, parse_gin, pretrain

    gin.clear_config()
    try:
        parse_gin([gin_file], list(bindings))
        workdir.mkdir(parents=True, exist_ok=True)
        _write_atomic(workdir / "config.gin", gin.config_str())
        pretrain(workdir, progress=progress)
        _write_atomic(workdir / "operative_config.gin", gin.operative_config_str())
    finally:
        gin.clear_config()


def is_pretrained(workdir: Path) -> bool:
    """Whether the study marked this pretraining run complete."""
    return (workdir / DONE_FILENAME).is_file()


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(tmp, path)


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
            if not _pid_alive(record["pid"]):
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
                aside = self.path.with_name(f"{self.path.name}.stale-{self.pid}-{time.time_ns()}")
                try:
                    os.rename(self.path, aside)  # only one of several racing workers wins this
                except FileNotFoundError:
                    continue
                log.warning("taking over stale pretraining lock %s (holder %s)", self.path, self.holder())
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


def ensure_pretrained(spec: StudySpec, study_dir: str | Path, needed: Sequence[tuple[str, str]], *,
                      worker: int = 0, pretrain_fn: PretrainFn = pretrain_in_process, progress: bool = True,
                      poll_s: float = 2.0, stale_after_s: float = 300.0, say: Callable[[str], None] = print) -> None:
    """Pretrain every (size, corpus) in `needed` that is not done: claim free ones (starting at this
    worker's offset, so workers pretrain different sizes at once), then wait for the others."""
    needed = list(dict.fromkeys(needed))
    if not needed:
        return
    offset = worker % len(needed)
    order = needed[offset:] + needed[:offset]
    while True:
        waiting = []
        for size, corpus in order:
            workdir = pretrain_dir(study_dir, size, corpus)
            if is_pretrained(workdir):
                continue
            workdir.parent.mkdir(parents=True, exist_ok=True)
            lock = PretrainLock(workdir.parent / f"{workdir.name}.lock", stale_after_s=stale_after_s)
            if not lock.try_acquire():
                waiting.append(workdir.name)
                continue
            with lock.heartbeat():
                if is_pretrained(workdir):  # finished by another worker between our check and the claim
                    continue
                gin_file, bindings = pretrain_bindings(spec, size, corpus)
                say(f"pretraining {workdir.name} ({spec.token_budget:,} tokens, checkpoints at "
                    f"{', '.join(f'{t:,}' for t in spec.checkpoint_tokens)}) in {workdir}")
                start = time.perf_counter()
                pretrain_fn(gin_file, bindings, workdir, progress)
                _check_checkpoints(spec, workdir)
                _write_json(workdir / DONE_FILENAME, {"size": size, "corpus": corpus, "token_budget": spec.token_budget,
                                                      "checkpoint_tokens": list(spec.checkpoint_tokens),
                                                      "seconds": time.perf_counter() - start})
                say(f"pretrained {workdir.name} in {time.perf_counter() - start:.0f} s")
        if not waiting:
            return
        say(f"waiting for other workers to pretrain {', '.join(waiting)}")
        time.sleep(poll_s)


def _check_checkpoints(spec: StudySpec, workdir: Path) -> None:
    """Every checkpoint token count of the spec must exist (skipped for fakes that write no orbax dirs)."""
    if not (workdir / "checkpoints").is_dir():
        return
    from train.checkpoints import list_checkpoints

    found = {r.get("tokens") for r in list_checkpoints(workdir) if r.get("kind") == "intermediate"}
    missing = [t for t in spec.checkpoint_tokens if t not in found]
    if missing:
        raise RuntimeError(f"pretraining in {workdir} finished without checkpoints at {missing} tokens "
                           f"(found {sorted(t for t in found if t)}); check StudySpec.checkpoint_tokens against "
                           f"the pretraining batch (pretrain_batch_size x pretrain_seq_len)")
