"""Which run a finetuning workdir holds, so that a run never lands on another one's outputs.

A run writes CONFIG_FILE first (its config, the pretraining workdir relative to the run's own
workdir, so a study or a workdir tree moved as a whole is still the same run) and RESULT_FILE
last. Running into a workdir that holds a different run is refused; `overwrite` removes that
run's outputs first (result first, so a run killed half-way through the removal is never taken
for a finished one).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from checkpoints.adapters import ADAPTER_FILE
from finetune.config import FinetuneConfig
from finetune.result import canonical_config_json

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "model"
TRAIN_STATE_DIR = "train_state"  # the rolling checkpoint a killed run resumes from (finetune.training)
OUTPUTS = (RESULT_FILE, CONFIG_FILE, METRICS_FILE, ADAPTER_FILE, EXPORT_DIR, TRAIN_STATE_DIR)


def identity(config: FinetuneConfig, workdir: Path) -> dict[str, Any]:
    """The config as the workdir records it (pretraining workdir relative to `workdir`)."""
    return config.to_dict(relative_to=workdir)


def _comparable(recorded: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """A recorded config with its pretraining workdir as a normalised absolute path (older runs
    recorded it absolute; newer ones relative to the run's workdir)."""
    values = json.loads(canonical_config_json(recorded))
    if values.get("pretrain_workdir"):
        values["pretrain_workdir"] = os.path.normpath(workdir.absolute() / values["pretrain_workdir"])
    return values


def _recorded(workdir: Path) -> tuple[dict[str, Any], Path] | None:
    """(config, file) of the run the workdir holds, or None when it holds none."""
    for name, field in ((CONFIG_FILE, None), (RESULT_FILE, "config")):
        path = workdir / name
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                return (record if field is None else record[field]), path
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path} is unreadable ({error}); pass --overwrite to replace the run in "
                                 f"{workdir}, or use another --workdir") from None
    return None


def differences(config: FinetuneConfig, workdir: Path) -> list[str] | None:
    """Fields in which the run held by `workdir` differs from `config` (empty: the same run;
    None: the workdir holds no run)."""
    found = _recorded(workdir)
    if found is None:
        return None
    held, now = _comparable(found[0], workdir), _comparable(identity(config, workdir), workdir)
    return [f"{k}={held.get(k)!r} (now {now.get(k)!r})" for k in sorted(set(held) | set(now))
            if held.get(k) != now.get(k)]


def claim_workdir(config: FinetuneConfig, workdir: Path, *, overwrite: bool = False) -> bool:
    """Make `workdir` ready for `config`'s run; True when it already holds that run, finished
    (result.json present). ValueError when it holds a different run, unless `overwrite`."""
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is a file, not a directory; give a new or existing directory")
    changed = differences(config, workdir) if workdir.is_dir() else None
    if changed is None:
        return False
    if not changed:
        return (workdir / RESULT_FILE).is_file()
    if not overwrite:
        raise ValueError(f"{workdir} holds a different finetuning run ({'; '.join(changed)}); pass --overwrite to "
                         f"replace it, or use another --workdir")
    for name in OUTPUTS:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return False
