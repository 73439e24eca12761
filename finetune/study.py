"""The study runner: pretrain every size, run the finetuning grid resumably and in parallel, fit, report.

  python -m finetune.study --gin_file=gin_configs/studies/demo.gin --workdir=runs/demo [--worker=i --num_workers=n]
  python -m finetune.study status --workdir=runs/demo
  python -m finetune.study report --workdir=runs/demo

The study directory holds study.json (the spec; a rerun must use the same one),
results.sqlite (one row per run, finetune.results), pretrain/<size>_<corpus>/ (pretraining
workdirs with their intermediate checkpoints), runs/<key>/ (one finetuning workdir per run)
and report/. Kill it anywhere and rerun the same command: finished rows are kept, a run
that was in flight is taken over (its worker is dead) and redone, nothing runs twice.

Parallel workers (`--worker=i --num_workers=n`, e.g. a SLURM array or a Kubernetes indexed
job) take every n-th grid point from index i; they share the study directory, so the
filesystem must give atomic rename and O_EXCL create (POSIX; NFSv3+ does) and, for the
SQLite store, working POSIX locks; WAL mode (the default) needs all workers on one host,
otherwise pass --journal_mode=delete.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from finetune.results import ResultsStore, RunResult, default_worker_id, run_key
from finetune.study_pretrain import PretrainFn, ensure_pretrained, is_pretrained, pretrain_dir, pretrain_in_process
from finetune.study_spec import GridPoint, StudySpec, load_spec, partition

SPEC_FILENAME = "study.json"
RunFn = Callable[..., RunResult]  # run_fn(config, workdir, *, store, progress) -> RunResult


def _default_config_factory(kwargs: dict[str, Any]) -> Any:
    from finetune.config import FinetuneConfig

    config = FinetuneConfig(**kwargs)
    config.validate_fields()  # the full validate() needs the checkpoint, which may not exist yet
    return config


def _default_run_fn(config: Any, workdir: Path, *, store: ResultsStore | None = None, progress: bool = True) -> RunResult:
    from finetune.run import run_finetune

    return run_finetune(config, workdir, store=store, progress=progress)


def save_spec(spec: StudySpec, study_dir: Path) -> None:
    """Record the spec in the study directory; a different spec already there is an error."""
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / SPEC_FILENAME
    new = spec.to_dict()
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise ValueError(f"{study_dir} holds study {old.get('name')!r} with a different spec (fields {changed} differ); "
                             f"rerun with the same gin files, or use a new --workdir")
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(new, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def read_spec(study_dir: str | Path) -> StudySpec:
    """The spec recorded in a study directory."""
    path = Path(study_dir) / SPEC_FILENAME
    if not path.is_file():
        raise ValueError(f"{study_dir} is not a study directory (no {SPEC_FILENAME}); run the study first")
    return StudySpec.from_dict(json.loads(path.read_text(encoding="utf-8")))


class Grid:
    """The grid's points with their finetuning configs and run keys (built once)."""

    def __init__(self, spec: StudySpec, study_dir: Path, config_factory: Callable[[dict], Any]):
        self.points: list[GridPoint] = spec.grid()
        self.configs = {p: config_factory(spec.finetune_kwargs(p, pretrain_dir(study_dir, p.size, p.corpus)))
                        for p in self.points}
        self.keys = {p: run_key(c.to_dict()) for p, c in self.configs.items()}


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="study", unit="run", disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def _result_line(point: GridPoint, result: RunResult, index: int, total: int) -> str:
    bits = [f"log-PPL {result.test_log_ppl:.3f}"]
    for name in ("bleu", "chrf", "rouge_l"):
        value = getattr(result, name)
        if value is not None:
            bits.append(f"{name.upper().replace('_', '-')} {value:.1f}")
    return f"[{index}/{total}] {point.label()}: {', '.join(bits)} ({result.wall_time_s:.1f} s)"


def run_study(spec: StudySpec, study_dir: str | Path, *, worker: int = 0, num_workers: int = 1,
              run_fn: RunFn | None = None, pretrain_fn: PretrainFn = pretrain_in_process,
              config_factory: Callable[[dict], Any] | None = None, progress: bool = True, report: bool = True,
              journal_mode: str = "wal", say: Callable[[str], None] | None = None) -> dict[str, int]:
    """Pretrain, then run this worker's share of the grid (each run through run_fn), then report.

    Returns this invocation's counts: {"finished", "failed", "skipped_done"}; failures are in
    the store (retried by the next invocation), never dropped.
    """
    study_dir = Path(study_dir)
    partition([], worker, num_workers)  # validates worker / num_workers before any work
    run_fn = run_fn or _default_run_fn
    config_factory = config_factory or _default_config_factory
    say = say or print
    save_spec(spec, study_dir)
    started = time.time()
    grid = Grid(spec, study_dir, config_factory)
    store = ResultsStore(study_dir, journal_mode=journal_mode)
    store.add_many([grid.configs[p].to_dict() for p in grid.points])
    mine = partition(grid.points, worker, num_workers)
    worker_id = default_worker_id()
    done_before = sum(store.has_result(grid.keys[p]) for p in mine)
    say(f"study {spec.name!r} in {study_dir}: {len(grid.points)} runs, worker {worker}/{num_workers} has "
        f"{len(mine)} ({done_before} done)")
    needed = [(p.size, p.corpus) for p in mine if not store.has_result(grid.keys[p])]
    ensure_pretrained(spec, study_dir, needed, worker=worker, pretrain_fn=pretrain_fn, progress=progress, say=say)

    by_key = {grid.keys[p]: p for p in mine}
    order = [grid.keys[p] for p in mine]
    counts = {"finished": 0, "failed": 0, "skipped_done": done_before}
    bar = _progress_bar(len(mine), done_before, progress)
    write = bar.write if progress else say
    try:
        while True:
            claimed = store.claim_next(order, worker_id=worker_id, retry_failed_before=started)
            if claimed is None:
                break
            key, _ = claimed
            point = by_key[key]
            run_dir = study_dir / "runs" / key[:16]
            try:
                with store.keep_alive(key, worker_id=worker_id) as lost:
                    result = run_fn(grid.configs[point], run_dir, store=store, progress=False)
                    if lost.is_set():
                        raise RuntimeError("lost the claim on this run (heartbeat failed); another worker may redo it")
                store.finish(key, result, worker_id=worker_id)  # no-op if run_fn already wrote the row
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
    totals = store.counts()
    say(f"worker {worker}: {counts['finished']} finished, {counts['failed']} failed this time; study: "
        + ", ".join(f"{k} {totals[k]}" for k in ("done", "running", "stale", "failed", "pending")))
    if report:
        if totals["done"] == totals["total"]:
            path = write_report(study_dir, spec=spec, store=store)
            say(f"report: {path}")
        elif totals["running"] + totals["pending"] + totals["stale"] == 0:
            path = write_report(study_dir, spec=spec, store=store)
            say(f"report (without {totals['failed']} failed run(s); rerun to retry them): {path}")
        else:
            say(f"other workers still have runs; when they finish: python -m finetune.study report --workdir={study_dir}")
    store.close()
    return counts


def write_report(study_dir: Path, *, spec: StudySpec | None = None, store: ResultsStore | None = None) -> Path:
    """Fit the laws on the finished rows and write DIR/report/ (markdown, PNGs, results CSV)."""
    from finetune.report import write_report as _write

    spec = spec or read_spec(study_dir)
    own = store is None
    store = store or ResultsStore(study_dir)
    try:
        return _write(spec, study_dir, store)
    finally:
        if own:
            store.close()


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
    if not (study_dir / "results.sqlite").exists():
        return "\n".join(lines + ["no finetuning runs registered yet"])
    store = ResultsStore(study_dir)
    lines.append(store.summary())
    store.close()
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("run", "status", "report") else "run"
    parser = argparse.ArgumentParser(prog=f"python -m finetune.study {command}", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="the study directory (shared by all workers)")
    if command == "run":
        parser.add_argument("--gin_file", action="append", default=[], help="study gin file (repeatable)")
        parser.add_argument("--gin_param", action="append", default=[], help="gin binding, e.g. StudySpec.seeds=[0]")
        parser.add_argument("--worker", type=int, default=int(os.environ.get("STUDY_WORKER", 0)))
        parser.add_argument("--num_workers", type=int, default=int(os.environ.get("STUDY_NUM_WORKERS", 1)))
        parser.add_argument("--journal_mode", default="wal", help="'wal' (one host) or 'delete' (network filesystem)")
        parser.add_argument("--no_progress", action="store_true", help="no progress bars")
        parser.add_argument("--no_report", action="store_true", help="skip fitting and the report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only restore notices, one per run
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (seqio) loads lazily, after this
    try:
        if command == "status":
            print(status_text(args.workdir))
            return 0
        if command == "report":
            print(f"report: {write_report(Path(args.workdir))}")
            return 0
        if not args.gin_file:
            parser.error("give --gin_file (e.g. gin_configs/studies/demo.gin)")
        spec = load_spec(args.gin_file, args.gin_param)
        start = time.perf_counter()
        counts = run_study(spec, args.workdir, worker=args.worker, num_workers=args.num_workers,
                           progress=not args.no_progress, report=not args.no_report, journal_mode=args.journal_mode)
        print(f"study time {time.perf_counter() - start:.0f} s")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
