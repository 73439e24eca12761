"""Training trajectories across scales (Xia et al. 2023) of one pretraining workdir or a study of them.

  python -m study.trajectories --workdir=STUDY_OR_PRETRAIN_DIR [--out=DIR] [limits]

--workdir is a pretraining workdir (it has checkpoints/<step>/) or any directory with such
workdirs below it (e.g. a study's pretrain/<size>_<corpus>/). Writes trajectories.md, PNGs and
npz (per-size scores, resumable: rerunning scores only what is new) under --out
(default WORKDIR/trajectories).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from checkpoints.store import intermediate_checkpoints
from eval.trajectory_scoring import discover_workdirs
from study.trajectories.section import REPORT_FILE, TrajectoryLimits, trajectory_section


def size_labels(workdirs: dict[str, Path]) -> dict[str, Path]:
    """Label each workdir by its model size name when those are unique, else by its relative path."""
    names = {}
    for label, workdir in workdirs.items():
        names[label] = intermediate_checkpoints(workdir)[-1].get("model") or label
    if len(set(names.values())) == len(names):
        return {names[label]: workdir for label, workdir in workdirs.items()}
    return dict(workdirs)


def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stagnation_band must be LOW,HIGH (e.g. 0.95,1.05), got {text!r}") from None
    return low, high


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.trajectories", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="pretraining workdir, or a directory of them")
    parser.add_argument("--out", default=None, help="output directory (default WORKDIR/trajectories)")
    defaults = TrajectoryLimits()
    for field in ("num_sequences", "prefix_tokens", "target_tokens", "corrupt_sequences", "contrastive_prompts",
                  "contrastive_tokens", "mc_questions", "num_shots", "max_checkpoints", "batch_size",
                  "bigbench_max_examples"):
        parser.add_argument(f"--{field}", type=int, default=getattr(defaults, field))
    parser.add_argument("--start_fraction", type=float, default=defaults.start_fraction,
                        help="trend window starts at this fraction of training")
    parser.add_argument("--end_fraction", type=float, default=defaults.end_fraction)
    parser.add_argument("--stagnation_band", type=_band, default=defaults.stagnation_band,
                        help="LOW,HIGH: stagnated if the window's first and last ppl are within this of its geometric mean")
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--regressor", choices=("index", "log_step"), default=defaults.regressor)
    parser.add_argument("--bigbench", default=None, help="a BIG-bench multiple-choice task.json (or its directory)")
    parser.add_argument("--pair", default=None, help="language pair of the held-out text (default: from checkpoints)")
    parser.add_argument("--corpus", default=None, choices=("aligned", "misaligned"))
    parser.add_argument("--no_opt_check", action="store_true", help="skip the bundled OPT real-data check")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only notices
    root = Path(args.workdir)
    try:
        workdirs = size_labels(discover_workdirs(root))
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out) if args.out else root / "trajectories"
    limits = {k: v for k, v in vars(args).items() if k in {f for f in TrajectoryLimits.__dataclass_fields__}}
    trajectory_section(workdirs, out, **limits, opt_check=not args.no_opt_check, progress=not args.no_progress)
    print(f"wrote {out / REPORT_FILE} ({len(workdirs)} size(s): {', '.join(workdirs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
