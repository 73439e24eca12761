"""Compile a C++ XLA FFI kernel of this package on first use and load it.

The shared library is built for this host (-march=native) into a per-user cache, keyed by the
source, the compiler flags, jaxlib's FFI headers and the host CPU's features, so a changed source
or a different machine sharing the cache never loads a stale or foreign build. A compile goes to
a temporary file renamed into place, so processes building at once (test workers) never load a
half-written library.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import jax

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")


class KernelUnavailable(RuntimeError):
    """A kernel cannot be built here (no compiler, or the compile failed); the message says why."""


def cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "ftscale", "kernels")


def _host_features() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


@functools.cache
def load(name: str) -> ctypes.CDLL:
    """The compiled `name`.cc of this directory (built now if not cached); KernelUnavailable if
    it cannot be built."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"no C++ compiler {compiler!r} on PATH (set CXX to one) to build {name}.cc")
    with open(os.path.join(SOURCE_DIR, f"{name}.cc"), "rb") as source:
        text = source.read()
    key = hashlib.sha256(b"\0".join([text, " ".join(FLAGS).encode(), compiler.encode(),
                                     jax.ffi.include_dir().encode(), jax.__version__.encode(),
                                     _host_features().encode()])).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"{name}-{key}.so")
    try:
        if not os.path.exists(path):
            _compile(compiler, name, path)
        return ctypes.cdll.LoadLibrary(path)
    except OSError as error:  # an unwritable cache, a library the loader refuses
        raise KernelUnavailable(f"cannot build or load {path}: {error}") from None


def _compile(compiler: str, name: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    command = [compiler, *FLAGS, "-isystem", jax.ffi.include_dir(), os.path.join(SOURCE_DIR, f"{name}.cc"),
               "-o", partial]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        os.unlink(partial)
        raise KernelUnavailable(f"building {name}.cc failed ({' '.join(command)}):\n{result.stderr[-4000:]}")
    os.replace(partial, path)


if __name__ == "__main__":  # `python -m model.kernels.build`: build every kernel now (make install)
    for file in sorted(os.listdir(SOURCE_DIR)):
        if file.endswith(".cc"):
            try:
                print(f"{file}: {load(file[:-3])._name}")
            except KernelUnavailable as error:  # the jobs run without it (attention='auto' says so)
                print(f"{file}: not built, the XLA path is used instead: {error}")
