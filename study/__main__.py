"""The study from the command line: plan it, run it, see where it stands, write its report.

  python -m study plan --gin_file=gin_configs/studies/paper.gin [--chip=v5p --mfu=0.4] [--json]
  python -m study pretrain --gin_file=gin_configs/studies/paper.gin --workdir=DIR --size=16b  (every host)
  python -m study --gin_file=gin_configs/studies/demo.gin --workdir=runs/demo [--worker=i --num_workers=n]
  python -m study status --workdir=runs/demo
  python -m study report --workdir=runs/demo
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow (seqio) loads with the runner

from study.plan import CHIP_PEAK_FLOPS, plan_dict, plan_study, plan_text  # noqa: E402
from study.preflight import check_study  # noqa: E402
from study.pretraining import pretrain_on_every_host  # noqa: E402
from study.runner import report_study, run_study, save_spec, status_text  # noqa: E402
from study.spec import load_spec  # noqa: E402
from train.gin_setup import add_gin_flags, one_line  # noqa: E402

COMMANDS = ("run", "plan", "pretrain", "status", "report")


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m study {command}", description=__doc__.split("\n")[0])
    if command != "plan":
        parser.add_argument("--workdir", required=True, help="the study directory (shared by all workers)")
    if command in ("run", "plan", "pretrain"):
        add_gin_flags(parser)
    if command == "pretrain":
        parser.add_argument("--size", required=True, help="the size to pretrain, as one multi-host job")
        parser.add_argument("--corpus", default=None, help="its corpus (default: the spec's first)")
        parser.add_argument("--distributed", action="store_true",
                            help="one process per host: jax.distributed.initialize() (TPU slice, SLURM)")
        parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    if command == "plan":
        parser.add_argument("--chip", default="v5p", choices=sorted(CHIP_PEAK_FLOPS), help="for device-hours")
        parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation, in (0, 1]")
        parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    if command == "run":
        parser.add_argument("--worker", type=int, default=int(os.environ.get("STUDY_WORKER", 0)))
        parser.add_argument("--num_workers", type=int, default=int(os.environ.get("STUDY_NUM_WORKERS", 1)))
        parser.add_argument("--journal_mode", default="wal", help="'wal' (one host) or 'delete' (network filesystem)")
        parser.add_argument("--no_progress", action="store_true", help="no progress bars")
        parser.add_argument("--no_report", action="store_true", help="skip fitting and the report")
    return parser


def _plan(spec, args: argparse.Namespace) -> int:
    if not 0.0 < args.mfu <= 1.0:
        raise ValueError(f"--mfu={args.mfu} must be in (0, 1]")
    plan = plan_study(spec)
    print(json.dumps(plan_dict(plan, chip=args.chip, mfu=args.mfu), indent=1) if args.json
          else plan_text(plan, chip=args.chip, mfu=args.mfu))
    return 2 if plan.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    parser = _parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only restore notices, one per run
    try:
        if command == "status":
            print(status_text(args.workdir))
            return 0
        if command == "report":
            print(f"report: {report_study(Path(args.workdir))}")
            return 0
        if not args.gin_file:
            parser.error("give --gin_file (e.g. gin_configs/studies/demo.gin)")
        spec = load_spec(args.gin_file, args.gin_param)
        if command == "plan":
            return _plan(spec, args)
        if command == "pretrain":
            check_study(spec, Path(args.workdir), parse_pretrain_gin=True)
            save_spec(spec, Path(args.workdir))
            pretrain_on_every_host(spec, args.workdir, args.size, args.corpus or spec.pretrain_corpora[0],
                                   distributed=args.distributed, progress=not args.no_progress)
            return 0
        start = time.perf_counter()
        counts = run_study(spec, args.workdir, worker=args.worker, num_workers=args.num_workers,
                           progress=not args.no_progress, report=not args.no_report, journal_mode=args.journal_mode)
        print(f"study time {time.perf_counter() - start:.0f} s")
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
