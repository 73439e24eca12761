"""Run keys that survive moving a study directory: a run's config is recorded with its
pretraining workdir relative to the study directory (FinetuneConfig.to_dict(relative_to=...)),
so `cp -a D D2` and a rerun on D2 find every finished run. Stores written by older code keyed
runs by the absolute path; `adopt_absolute_keys` rewrites those rows once, keeping one row
per run, and renames their run directories to match.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from study.results import ResultsStore
from study.spec import PRETRAIN_DIRNAME

RUNS_DIRNAME = "runs"


def run_dir(study_dir: str | Path, key: str) -> Path:
    """The finetuning workdir of the run with this key."""
    return Path(study_dir) / RUNS_DIRNAME / key[:16]


def adopt_absolute_keys(store: ResultsStore, study_dir: Path, say: Callable[[str], None] = print) -> int:
    """Rekey rows whose config names an absolute `.../pretrain/<size>_<corpus>`; returns how many."""
    adopted = 0
    for row in store.rows(None):
        path = row["config"].get("pretrain_workdir") or ""
        if not os.path.isabs(path) or Path(path).parent.name != PRETRAIN_DIRNAME:
            continue
        relative = dict(row["config"], pretrain_workdir=f"{PRETRAIN_DIRNAME}/{Path(path).name}")
        new_key = store.rekey(row["run_key"], relative)
        old_dir, new_dir = run_dir(study_dir, row["run_key"]), run_dir(study_dir, new_key)
        if old_dir.is_dir() and not new_dir.exists():
            os.rename(old_dir, new_dir)
        adopted += 1
    if adopted:
        say(f"rekeyed {adopted} run(s) recorded by older code with absolute paths; keys are now relative to "
            f"{study_dir}")
    return adopted
