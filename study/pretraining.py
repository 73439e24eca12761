"""The study's pretraining stage: one claim-locked train.pretrain run per (size, corpus).

Several workers may share a study directory. Pretraining a size is claimed by one worker
through a lock file created with O_EXCL (its holder's host, pid and a heartbeat in the
file's mtime); the others wait for its DONE marker. A lock whose holder died (dead pid on
this host, or no heartbeat for `stale_after_s`) is taken over by renaming it away first,
which only one worker can do; the new holder resumes the pretraining from its latest
checkpoint (train.pretrain resumes bit-exactly).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import gin
import jax

from checkpoints.atomic import write_json_atomic
from checkpoints.store import INTERMEDIATE_DIR, list_checkpoints
from study.locks import PretrainLock
from study.spec import PRETRAIN_DIRNAME, StudySpec
from train.pretrain import run_job

DONE_FILENAME = "STUDY_PRETRAIN_DONE.json"
# (gin file, bindings, workdir, size the files must configure, progress)
PretrainFn = Callable[[str, Sequence[str], Path, str, bool], None]


def pretrain_dir(study_dir: str | Path, size: str, corpus: str) -> Path:
    """Workdir of one pretraining run inside the study directory (path as given, not resolved)."""
    return Path(study_dir) / PRETRAIN_DIRNAME / f"{size}_{corpus}"


def pretrain_bindings(spec: StudySpec, size: str, corpus: str) -> tuple[str, list[str]]:
    """(gin file, bindings) of one pretraining run: the size's file (which includes its model)
    and the spec's corpus, pair, batch and budget; the spec's pretrain_params come last (they win)."""
    gin_file = spec.pretrain_gin.format(size=size, corpus=corpus)
    bindings = [
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


def pretrain_in_process(gin_file: str, bindings: Sequence[str], workdir: Path, size: str, progress: bool) -> None:
    """Run train.pretrain's job in this process (gin state is cleared before and after), as its CLI does."""
    gin.clear_config()
    try:
        run_job([gin_file], list(bindings), workdir, progress=progress, expected_model=size)
    finally:
        gin.clear_config()


def is_pretrained(workdir: Path) -> bool:
    """Whether the study marked this pretraining run complete."""
    return (workdir / DONE_FILENAME).is_file()


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
                if not is_pretrained(workdir):  # another worker may have finished it before our claim
                    _pretrain_one(spec, size, corpus, workdir, pretrain_fn, progress, say)
        if not waiting:
            return
        say(f"waiting for other workers to pretrain {', '.join(waiting)}")
        time.sleep(poll_s)


def _pretrain_one(spec: StudySpec, size: str, corpus: str, workdir: Path, pretrain_fn: PretrainFn, progress: bool,
                  say: Callable[[str], None], *, extra_bindings: Sequence[str] = ()) -> None:
    """Pretrain one (size, corpus), check its checkpoints and mark it done (process 0 writes the mark)."""
    gin_file, bindings = pretrain_bindings(spec, size, corpus)
    say(f"pretraining {workdir.name} ({spec.token_budget:,} tokens, checkpoints at "
        f"{', '.join(f'{t:,}' for t in spec.checkpoint_tokens)}) in {workdir}")
    start = time.perf_counter()
    pretrain_fn(gin_file, [*bindings, *extra_bindings], workdir, size, progress)
    _check_checkpoints(spec, workdir)
    if jax.process_index() == 0:
        write_json_atomic(workdir / DONE_FILENAME, {
            "size": size, "corpus": corpus, "token_budget": spec.token_budget,
            "checkpoint_tokens": list(spec.checkpoint_tokens), "seconds": time.perf_counter() - start})
    say(f"pretrained {workdir.name} in {time.perf_counter() - start:.0f} s")


def pretrain_on_every_host(spec: StudySpec, study_dir: str | Path, size: str, corpus: str, *,
                           distributed: bool = True, progress: bool = True,
                           say: Callable[[str], None] = print) -> Path:
    """One size's pretraining as one (multi-host) job: every host runs this (SPMD, one process per
    host; `distributed` calls jax.distributed.initialize), then the study's workers find it done.
    No claim lock: all hosts take part in the same run."""
    if (size, corpus) not in spec.pretrain_runs():
        raise ValueError(f"({size!r}, {corpus!r}) is not a pretraining run of study {spec.name!r}; "
                         f"valid: {spec.pretrain_runs()}")
    workdir = pretrain_dir(study_dir, size, corpus)
    if is_pretrained(workdir):
        say(f"{workdir.name} is already pretrained")
        return workdir
    workdir.parent.mkdir(parents=True, exist_ok=True)
    _pretrain_one(spec, size, corpus, workdir, pretrain_in_process, progress, say,
                  extra_bindings=[f"pretrain.distributed = {bool(distributed)}"])
    return workdir


def _check_checkpoints(spec: StudySpec, workdir: Path) -> None:
    """Every checkpoint token count of the spec must exist (skipped for fakes that write no orbax dirs)."""
    if not (workdir / INTERMEDIATE_DIR).is_dir():
        return
    found = {r.get("tokens") for r in list_checkpoints(workdir) if r.get("kind") == "intermediate"}
    missing = [t for t in spec.checkpoint_tokens if t not in found]
    if missing:
        raise RuntimeError(f"pretraining in {workdir} finished without checkpoints at {missing} tokens "
                           f"(found {sorted(t for t in found if t)}); check StudySpec.checkpoint_tokens against "
                           f"the pretraining batch (pretrain_batch_size x pretrain_seq_len)")
