"""Atomic file writes: write a temporary file in the same directory, then os.replace it onto the
target, so a reader (or a writer killed half-way) never sees half a file.

The packages below this leaf keep their own few lines for the same thing: `model` and `laws`
import nothing of this project, `data` builds the corpora before any of it exists.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path` to write to; renamed onto `path` when the block succeeds,
    removed when it fails (the directory must exist)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, value: Any, **dumps_kwargs: Any) -> Path:
    """JSON of `value` (indent 2 unless told otherwise) written atomically."""
    dumps_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(value, **dumps_kwargs) + "\n")
