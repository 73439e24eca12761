"""What `python -m study` checks before it records the spec or pretrains anything: the checks of
`python -m study plan` (study.plan: every pretraining's gin files and model, every finetuning
configuration against its model: task, method sizes, Df against the train split, vocabulary).
A mistake found here costs seconds; found by the first finetuning run, it cost every pretraining
(and the spec was already recorded, so the fixed spec was refused as a different one). Checks
that need data this machine does not have are deferred, as in the plan.
"""
from __future__ import annotations

from pathlib import Path

from data import tasks
from data.vocab import vocab_path
from finetune.config import FinetuneConfig
from model.sizes import get_config
from study.plan import plan_study
from study.pretraining import pretrain_bindings, pretrain_dir
from study.spec import StudySpec
from train.gin_setup import find_gin_file, one_line


def check_study(spec: StudySpec, study_dir: str | Path, *, parse_pretrain_gin: bool = True) -> None:
    """ValueError naming the first failed check (and how many more `python -m study plan` lists).
    `parse_pretrain_gin=False` (stand-in pretraining functions that never read the gin files): the
    files must exist, and each run is checked against its size's default model."""
    if parse_pretrain_gin:
        errors = plan_study(spec, study_dir).errors
        if errors:
            more = f" ({len(errors) - 1} more: python -m study plan lists them)" if len(errors) > 1 else ""
            raise ValueError(f"{errors[0].subject}: {errors[0].detail}{more}")
        return
    for size, corpus in spec.pretrain_runs():
        find_gin_file(pretrain_bindings(spec, size, corpus)[0])
    for point in spec.grid():
        config = FinetuneConfig(**spec.finetune_kwargs(point, pretrain_dir(study_dir, point.size, point.corpus)))
        try:
            config.validate_fields()
            if config.task not in tasks.FINETUNE_EXAMPLES:
                raise ValueError(f"unknown finetuning task {config.task!r}; valid: {sorted(tasks.FINETUNE_EXAMPLES)}")
            config.validate_for_model(get_config(point.size), str(vocab_path(spec.pair)))
        except tasks.DataUnavailableError:
            continue  # deferred, as in the plan
        except ValueError as error:
            raise ValueError(f"finetuning run {point.label()}: {one_line(error)}") from None
