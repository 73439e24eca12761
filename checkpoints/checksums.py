"""Checksums of a checkpoint's files: orbax checks no array bytes on restore (its zarr3 crc32c
covers only the shard index), so random bytes in an array file load as wrong numbers. Every
saved step directory gets CHECKSUMS_FILE (the sha256 and size of each file in it), written
after orbax has finished the directory; `verify` checks it before anything is read.

A step directory without the file (written by older code, or its writer died between orbax's
rename and this file) is "unverified": accepted, since orbax only renames a complete directory.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from checkpoints.atomic import write_json_atomic

CHECKSUMS_FILE = "checksums.json"
ALGORITHM = "sha256"


class CorruptCheckpointError(ValueError):
    """A checkpoint's file is missing, changed size or no longer matches its checksum."""


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, ALGORITHM).hexdigest()


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*")
                  if p.is_file() and p.name != CHECKSUMS_FILE and ".tmp-" not in p.name)


def write_checksums(step_dir: str | Path) -> Path:
    """Record the checksum of every file of a finished step directory (atomically)."""
    step_dir = Path(step_dir)
    files = {p.relative_to(step_dir).as_posix(): {ALGORITHM: _digest(p), "bytes": p.stat().st_size}
             for p in _files(step_dir)}
    return write_json_atomic(step_dir / CHECKSUMS_FILE, {"algorithm": ALGORITHM, "files": files},
                             indent=1, sort_keys=True)


def verify_checksums(step_dir: str | Path, items: Iterable[str] | None = None) -> bool:
    """True when every recorded file matches, False when the directory has no checksums
    (unverified); CorruptCheckpointError naming the first file that does not match. `items`:
    check only the files of these item directories (and the step's own files), e.g. a load of
    the params alone does not read, or hash, the optimizer state."""
    step_dir = Path(step_dir)
    record_path = step_dir / CHECKSUMS_FILE
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        files = record["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptCheckpointError(f"checkpoint {step_dir}: its {CHECKSUMS_FILE} is unreadable ({error}); "
                                     "the checkpoint cannot be verified") from None
    wanted = None if items is None else set(items)
    for name, expected in sorted(files.items()):
        if wanted is not None and "/" in name and name.split("/", 1)[0] not in wanted:
            continue
        path = step_dir / name
        if not path.is_file():
            raise CorruptCheckpointError(f"checkpoint {step_dir}: file {name} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CorruptCheckpointError(f"checkpoint {step_dir}: file {name} has {size} bytes, "
                                         f"{expected['bytes']} were written")
        if _digest(path) != expected[ALGORITHM]:
            raise CorruptCheckpointError(f"checkpoint {step_dir}: file {name} does not match its "
                                         f"{ALGORITHM} checksum (its bytes changed after it was written)")
    return True
