"""Gin for every entry point: parse files (found relative to the working directory or the
repository root) and bindings. ModelConfig is configured by gin's dynamic registration inside
gin_configs/models/*.gin (`model.config.ModelConfig.d_model = 192`), so `model` needs no gin;
a job includes its model's file first, then overrides its fields."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

import gin

REPO_ROOT = Path(__file__).resolve().parent.parent


def find_gin_file(name: str) -> Path:
    """The gin file `name` relative to the working directory or the repository root; ValueError if neither has it."""
    for candidate in (Path(name), REPO_ROOT / name):
        if candidate.is_file():
            return candidate
    raise ValueError(f"gin file {name!r} not found (looked in {Path.cwd()} and {REPO_ROOT}); "
                     "give a path such as gin_configs/pretrain/smoke.gin")


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    """--gin_file (repeatable, later files win) and --gin_param (one binding each, after the files)."""
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_param", action="append", default=[], help="gin binding, e.g. TrainConfig.seed=1 (repeatable)")


def parse_gin(gin_files: Iterable[str], gin_params: Iterable[str], *, finalize: bool = True) -> None:
    """Parse gin files and bindings (later bindings win). `finalize=False` leaves the config open
    for modules that register configurables on first import (the data pipeline)."""
    files = [str(find_gin_file(name)) for name in gin_files]
    gin.add_config_file_search_path(str(REPO_ROOT))
    gin.parse_config_files_and_bindings(files, list(gin_params), finalize_config=finalize)
