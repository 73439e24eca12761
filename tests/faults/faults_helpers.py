"""Helpers of the fault-injection tests: directory snapshots, one-line error checks, corruption."""
import hashlib
import shutil
from pathlib import Path

# Files that are not outputs: the pretraining workdir's lock records its current holder.
NOT_OUTPUTS = (".job-",)


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (lock files excepted)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.name.startswith(NOT_OUTPUTS):
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_error_line(stderr: str, *needles: str) -> str:
    """The single `error:` line of a CLI's stderr, checked to contain every needle."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert not any("Traceback" in line for line in lines), stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def copy_tree(source: Path, target: Path) -> Path:
    """`cp -a`: a copy that keeps symlinks and times."""
    shutil.copytree(source, target, symlinks=True)
    return target


def scribble(path: Path, offset: int = 64, length: int = 256, seed: int = 0) -> None:
    """Random bytes written into a file in place (size unchanged), as a failing disk would."""
    data = bytearray(path.read_bytes())
    noise = hashlib.sha256(str(seed).encode()).digest() * (length // 32 + 1)
    start = min(offset, max(len(data) - length, 0))
    data[start:start + length] = noise[:min(length, len(data) - start)]
    path.write_bytes(bytes(data))


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
