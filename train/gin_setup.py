"""Gin for every entry point: parse files (found relative to the working directory or the
repository root) and bindings. ModelConfig is configured by gin's dynamic registration inside
gin_configs/models/*.gin (`model.config.ModelConfig.d_model = 192`), so `model` needs no gin;
a job includes its model's file first, then overrides its fields."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterable

import gin

REPO_ROOT = Path(__file__).resolve().parent.parent


def find_gin_file(name: str) -> Path:
    """The gin file `name` relative to the working directory or the repository root; ValueError if neither has it."""
    for candidate in (Path(name), REPO_ROOT / name):
        if candidate.is_file():
            return candidate
    where = " and ".join(dict.fromkeys(str(p) for p in (Path.cwd(), REPO_ROOT)))
    raise ValueError(f"gin file {name!r} not found (looked in {where}); "
                     "give a path such as gin_configs/pretrain/smoke.gin")


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    """--gin_file (repeatable, later files win) and --gin_param (one binding each, after the files)."""
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_param", action="append", default=[], help="gin binding, e.g. TrainConfig.seed=1 (repeatable)")


_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.MULTILINE)


def _check_includes(path: Path, seen: set[Path]) -> None:
    """ValueError naming the file and line of an `include` whose file does not exist (gin itself
    fails there with a TypeError about None)."""
    if path in seen:
        return
    seen.add(path)
    text = path.read_text(encoding="utf-8")
    for match in _INCLUDE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        try:
            included = find_gin_file(match.group(1))
        except ValueError as error:
            raise ValueError(f"gin file {path}, line {line} (include): {error}") from None
        _check_includes(included.resolve(), seen)


def parse_gin(gin_files: Iterable[str], gin_params: Iterable[str], *, finalize: bool = True) -> None:
    """Parse gin files and bindings (later bindings win). `finalize=False` leaves the config open
    for modules that register configurables on first import (the data pipeline)."""
    files = [find_gin_file(name) for name in gin_files]
    seen: set[Path] = set()
    for path in files:
        _check_includes(path.resolve(), seen)
    gin.add_config_file_search_path(str(REPO_ROOT))
    gin.parse_config_files_and_bindings([str(f) for f in files], list(gin_params), finalize_config=finalize)


def one_line(error: BaseException) -> str:
    """An error's message on one line: gin appends "In call to configurable ..." (dropped: the
    message names the value) and "In file ..., line N" (kept: it says where) to exceptions."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("In call to configurable"))
