"""The study runner: pretrain every size, run the finetuning grid resumably and in parallel, fit, report.

The study directory holds study.json (the spec; a rerun must use the same one), results.sqlite
(one row per run, study.results), pretrain/<size>_<corpus>/ (pretraining workdirs with their
intermediate checkpoints), runs/<key>/ (one finetuning workdir per run) and report/. Kill it
anywhere and rerun the same command: finished rows are kept, a run that was in flight is taken
over (its worker is dead) and redone, nothing runs twice. Run keys hold paths relative to the
study directory, so a copied or moved directory resumes where it was. The spec is checked
(study.preflight) before anything is recorded or pretrained.

Parallel workers (`--worker=i --num_workers=n`, e.g. a SLURM array or a Kubernetes indexed
job) take every n-th grid point from index i; they share the study directory, so the
filesystem must give atomic rename and O_EXCL create (POSIX; NFSv3+ does) and, for the
SQLite store, working POSIX locks; WAL mode (the default) needs all workers on one host,
otherwise pass --journal_mode=delete.
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from checkpoints.atomic import write_json_atomic
from finetune.config import FinetuneConfig
from finetune.result import RunResult, run_key
from finetune.run import run_finetune
from study.locks import default_worker_id
from study.pretraining import PretrainFn, ensure_pretrained, is_pretrained, pretrain_dir, pretrain_in_process
from study.preflight import check_study
from study.relocate import adopt_absolute_keys, run_dir
from study.report import write_report
from study.results import DB_FILENAME, ResultsStore
from study.spec import GridPoint, StudySpec, partition

SPEC_FILENAME = "study.json"
RunFn = Callable[..., RunResult]  # run_fn(config, workdir, *, progress) -> RunResult
Say = Callable[[str], None]


def finetune_config(kwargs: dict[str, Any]) -> FinetuneConfig:
    """A grid point's FinetuneConfig, checked as far as possible before its checkpoint exists."""
    config = FinetuneConfig(**kwargs)
    config.validate_fields()
    return config


def _read_spec_file(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} (the study's recorded spec) is unreadable: {error}; restore it from a copy of the "
                         f"study directory, or use a new --workdir") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} (the study's recorded spec) holds {type(values).__name__}, not a spec; restore it "
                         f"from a copy of the study directory, or use a new --workdir")
    return values


def save_spec(spec: StudySpec, study_dir: Path) -> None:
    """Record the spec in the study directory; a different spec already there is an error."""
    if study_dir.exists() and not study_dir.is_dir():
        raise ValueError(f"--workdir {study_dir} is a file, not a directory; give a new or existing study directory")
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / SPEC_FILENAME
    new = spec.to_dict()
    if path.exists():
        old = _read_spec_file(path)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise ValueError(f"{study_dir} holds study {old.get('name')!r} with a different spec (fields {changed} differ); "
                             f"rerun with the same gin files, or use a new --workdir")
        return
    write_json_atomic(path, new, indent=1, sort_keys=True)


def read_spec(study_dir: str | Path) -> StudySpec:
    """The spec recorded in a study directory."""
    path = Path(study_dir) / SPEC_FILENAME
    if not path.is_file():
        raise ValueError(f"{study_dir} is not a study directory (no {SPEC_FILENAME}); run the study first")
    values = _read_spec_file(path)
    try:
        return StudySpec.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


class Grid:
    """The grid's points with their finetuning configs, the configs as the store records them
    (pretraining workdir relative to the study directory: the directory can move) and run keys."""

    def __init__(self, spec: StudySpec, study_dir: Path, config_factory: Callable[[dict], Any]):
        self.points: list[GridPoint] = spec.grid()
        self.configs = {p: config_factory(spec.finetune_kwargs(p, pretrain_dir(study_dir, p.size, p.corpus)))
                        for p in self.points}
        self.records = {p: c.to_dict(relative_to=study_dir) for p, c in self.configs.items()}
        self.keys = {p: run_key(r) for p, r in self.records.items()}


def run_in_study(config: FinetuneConfig, workdir: Path, *, progress: bool) -> RunResult:
    """run_finetune in runs/<key>, which the run's claim owns: anything else found there (an
    attempt recorded under another path, by older code) is replaced."""
    return run_finetune(config, workdir, progress=progress, overwrite=True)


def _result_line(point: GridPoint, result: RunResult, index: int, total: int) -> str:
    bits = [f"log-PPL {result.test_log_ppl:.3f}"]
    for name in ("bleu", "chrf", "rouge_l"):
        value = getattr(result, name)
        if value is not None:
            bits.append(f"{name.upper().replace('_', '-')} {value:.1f}")
    return f"[{index}/{total}] {point.label()}: {', '.join(bits)} ({result.wall_time_s:.1f} s)"


def _run_claimed(store: ResultsStore, grid: Grid, mine: list[GridPoint], study_dir: Path, run_fn: RunFn,
                 *, started: float, done_before: int, progress: bool, say: Say) -> dict[str, int]:
    """Claim and run this worker's unfinished points one by one until none is left."""
    by_key = {grid.keys[p]: p for p in mine}
    worker_id = default_worker_id()
    counts = {"finished": 0, "failed": 0, "skipped_done": done_before}
    bar = tqdm(total=len(mine), initial=done_before, desc="study", unit="run", disable=not progress,
               dynamic_ncols=True)
    write = bar.write if progress else say
    try:
        while (claimed := store.claim_next(list(by_key), worker_id=worker_id, retry_failed_before=started)) is not None:
            key, point = claimed[0], by_key[claimed[0]]
            try:
                with store.keep_alive(key, worker_id=worker_id) as lost:
                    result = run_fn(grid.configs[point], run_dir(study_dir, key), progress=False)
                    if lost.is_set():
                        raise RuntimeError("lost the claim on this run (heartbeat failed); another worker may redo it")
                store.finish(key, result, worker_id=worker_id)
            except KeyboardInterrupt:
                store.release(key, worker_id=worker_id)
                raise
            except Exception as error:  # noqa: BLE001  (any failure of one run is recorded, the study goes on)
                store.fail(key, traceback.format_exc(), worker_id=worker_id)
                counts["failed"] += 1
                write(f"FAILED {point.label()}: {type(error).__name__}: {error} (retried on the next invocation)")
            else:
                counts["finished"] += 1
                write(_result_line(point, result, counts["finished"] + done_before, len(mine)))
            bar.update(1)
    finally:
        bar.close()
    return counts


def _report_if_complete(spec: StudySpec, study_dir: Path, store: ResultsStore, say: Say) -> None:
    totals = store.counts()
    if totals["done"] == totals["total"]:
        say(f"report: {write_report(spec, study_dir, store)}")
    elif totals["running"] + totals["pending"] + totals["stale"] == 0:
        say(f"report (without {totals['failed']} failed run(s); rerun to retry them): "
            f"{write_report(spec, study_dir, store)}")
    else:
        say(f"other workers still have runs; when they finish: python -m study report --workdir={study_dir}")


def run_study(spec: StudySpec, study_dir: str | Path, *, worker: int = 0, num_workers: int = 1,
              run_fn: RunFn = run_in_study, pretrain_fn: PretrainFn = pretrain_in_process,
              config_factory: Callable[[dict], Any] = finetune_config, progress: bool = True, report: bool = True,
              journal_mode: str = "wal", say: Say = print) -> dict[str, int]:
    """Pretrain, then run this worker's share of the grid (each run through run_fn), then report.

    Returns this invocation's counts: {"finished", "failed", "skipped_done"}; failures are in
    the store (retried by the next invocation), never dropped.
    """
    study_dir = Path(study_dir)
    partition([], worker, num_workers)  # validates worker / num_workers before any work
    check_study(spec, study_dir, parse_pretrain_gin=pretrain_fn is pretrain_in_process)  # before anything is recorded
    grid = Grid(spec, study_dir, config_factory)
    save_spec(spec, study_dir)
    started = time.time()
    store = ResultsStore(study_dir, journal_mode=journal_mode)
    try:
        adopt_absolute_keys(store, study_dir, say)
        store.add_many([grid.records[p] for p in grid.points])
        mine = partition(grid.points, worker, num_workers)
        done_before = sum(store.has_result(grid.keys[p]) for p in mine)
        say(f"study {spec.name!r} in {study_dir}: {len(grid.points)} runs, worker {worker}/{num_workers} has "
            f"{len(mine)} ({done_before} done)")
        needed = [(p.size, p.corpus) for p in mine if not store.has_result(grid.keys[p])]
        ensure_pretrained(spec, study_dir, needed, worker=worker, pretrain_fn=pretrain_fn, progress=progress, say=say)
        counts = _run_claimed(store, grid, mine, study_dir, run_fn, started=started, done_before=done_before,
                              progress=progress, say=say)
        totals = store.counts()
        say(f"worker {worker}: {counts['finished']} finished, {counts['failed']} failed this time; study: "
            + ", ".join(f"{k} {totals[k]}" for k in ("done", "running", "stale", "failed", "pending")))
        if report:
            _report_if_complete(spec, study_dir, store, say)
    finally:
        store.close()
    return counts


def status_text(study_dir: str | Path) -> str:
    """Counts (done / running / stale / failed / pending), pretraining state and every failure."""
    study_dir = Path(study_dir)
    spec = read_spec(study_dir)
    lines = [f"study {spec.name!r} in {study_dir}: {len(spec.grid())} runs in the grid"]
    for size, corpus in spec.pretrain_runs():
        workdir = pretrain_dir(study_dir, size, corpus)
        lock = workdir.parent / f"{workdir.name}.lock"
        state = "done" if is_pretrained(workdir) else "running" if lock.exists() else "pending"
        lines.append(f"pretraining {workdir.name}: {state}")
    if not (study_dir / DB_FILENAME).exists():
        return "\n".join(lines + ["no finetuning runs registered yet"])
    store = ResultsStore(study_dir, create=False)
    lines.append(store.summary())
    store.close()
    return "\n".join(lines)


def report_study(study_dir: str | Path) -> Path:
    """Fit the laws on the finished rows of a study directory and write its report."""
    study_dir = Path(study_dir)
    spec = read_spec(study_dir)
    store = ResultsStore(study_dir, create=False)
    try:
        return write_report(spec, study_dir, store)
    finally:
        store.close()
