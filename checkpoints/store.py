"""Orbax training checkpoints: intermediate ones at token counts (kept forever: the
pretraining-data axis of the study) and a rolling latest for resume. Each holds the items
`params`, `opt_state` (separate, so a model loads without knowing the optimizer), any others the
run needs to resume (a finetuning run's `best_params`), `meta` (step, tokens seen, model config,
data position, RNG) and, when the batch source can save where it is, `data_position`
(checkpoints.data_position). Saves are atomic (orbax writes a tmp dir and
renames it) and leave checksums of every file (checkpoints.checksums), checked before each
restore; a partial or corrupt directory is skipped with a warning naming it, and set aside
(renamed, never deleted) when a run resumes.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import orbax.checkpoint as ocp

from checkpoints.checksums import CorruptCheckpointError, verify_checksums, write_checksums
from checkpoints.data_position import ITEM as DATA_POSITION, DataPositionSave, process_dir

INTERMEDIATE_DIR = "checkpoints"
LATEST_DIR = "latest"


class CheckpointWarning(UserWarning):
    """A checkpoint directory was skipped (partial write or unreadable)."""


def _partial_dirs(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_dir() and ("tmp" in p.name or not p.name.isdigit()))


class CheckpointStore:
    """Two orbax CheckpointManagers under one workdir: `checkpoints/` (intermediate, never
    deleted) and `latest/` (rolling, `keep_latest` kept)."""

    def __init__(self, workdir: str | Path, *, keep_latest: int = 2, read_only: bool = False):
        self.workdir = Path(workdir).absolute()
        self.read_only = read_only
        self.dirs = {"intermediate": self.workdir / INTERMEDIATE_DIR, "latest": self.workdir / LATEST_DIR}
        for kind, directory in self.dirs.items():
            for partial in _partial_dirs(directory):
                reason = ("set aside as corrupt by an earlier run" if ".corrupt-" in partial.name
                          else "incomplete write, e.g. the process died while saving")
                warnings.warn(f"skipping partial {kind} checkpoint directory {partial} ({reason})",
                              CheckpointWarning)
        common = dict(enable_async_checkpointing=False, create=not read_only, read_only=read_only,
                      cleanup_tmp_directories=not read_only)
        self.managers = {
            "intermediate": ocp.CheckpointManager(
                self.dirs["intermediate"], options=ocp.CheckpointManagerOptions(max_to_keep=None, **common)),
            "latest": ocp.CheckpointManager(
                self.dirs["latest"], options=ocp.CheckpointManagerOptions(max_to_keep=keep_latest, **common)),
        }

    def save(self, step: int, state: dict, meta: dict, *, kind: str,
             data_position: Callable[[Path], None] | None = None) -> None:
        """Write `state` (named pytrees of arrays: {"params", "opt_state"}, and whatever else a run
        must resume, e.g. a finetuning run's best params) and `meta` (JSON) as checkpoint `step`;
        `data_position(directory)`, if given, writes this process's batch position there."""
        reserved = {"meta", DATA_POSITION} & set(state)
        if reserved:
            raise ValueError(f"a checkpoint's state may not have an item named {sorted(reserved)} "
                             "(the JSON record and the data position)")
        meta = dict(meta, step=int(step), kind=kind)
        items = {name: ocp.args.StandardSave(tree) for name, tree in state.items()}
        if data_position is not None:
            items[DATA_POSITION] = DataPositionSave(data_position)
        self.managers[kind].save(step, args=ocp.args.Composite(**items, meta=ocp.args.JsonSave(meta)), force=True)
        self.managers[kind].wait_until_finished()
        if jax.process_index() == 0:
            write_checksums(self.step_dir(kind, step))

    def steps(self, kind: str) -> list[int]:
        self.managers[kind].reload()
        return sorted(self.managers[kind].all_steps())

    def step_dir(self, kind: str, step: int) -> Path:
        return self.dirs[kind] / str(step)

    def data_position_dir(self, directory: Path) -> Path | None:
        """This process's saved batch position in the checkpoint at `directory` (None if it has none:
        a source without one, or older code)."""
        position = process_dir(Path(directory) / DATA_POSITION)
        return position if position.is_dir() else None

    def read_meta(self, kind: str, step: int) -> dict:
        """The JSON record of one checkpoint (no arrays are read)."""
        restored = self.managers[kind].restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def verify(self, kind: str, step: int, items: Sequence[str] | None = None) -> bool:
        """Check one checkpoint's files (of `items` only, if given) against its checksums: True if
        verified, False if it has none (older code); CorruptCheckpointError naming the file that
        does not match."""
        return verify_checksums(self.step_dir(kind, step), items)

    def _restore_verified(self, kind: str, step: int, items: dict) -> dict:
        """orbax's restore of `items` after their checksums are checked; any failure to read is a
        CorruptCheckpointError naming the directory (orbax / tensorstore raise many types)."""
        self.verify(kind, step, list(items))
        try:
            return self.managers[kind].restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # noqa: BLE001
            raise CorruptCheckpointError(f"checkpoint {self.step_dir(kind, step)} cannot be read: "
                                         f"{type(error).__name__}: {str(error)[:300]}") from error

    def restore(self, kind: str, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """(state, meta) of one checkpoint: every item `abstract_state` names ({"params",
        "opt_state"}, ...), placed as its shardings say."""
        restored = self._restore_verified(kind, step, dict(
            **{name: ocp.args.StandardRestore(tree) for name, tree in abstract_state.items()},
            meta=ocp.args.JsonRestore()))
        return {name: restored[name] for name in abstract_state}, dict(restored["meta"])

    def restore_params(self, kind: str, step: int, abstract_params: Any) -> tuple[Any, dict]:
        """(params, meta) of one checkpoint; the optimizer state is not read (its checksums are checked)."""
        restored = self._restore_verified(kind, step, dict(
            params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
        return restored["params"], dict(restored["meta"])

    def candidates(self) -> list[tuple[int, str]]:
        """(step, kind) newest first; at equal steps prefer the rolling latest."""
        items = [(s, "latest") for s in self.steps("latest")] + [(s, "intermediate") for s in self.steps("intermediate")]
        return sorted(items, key=lambda x: (x[0], x[1] == "latest"), reverse=True)

    def restore_newest(self, abstract_state: Any,
                       accept: Callable[[dict, Path], None] = lambda meta, directory: None,
                       ) -> tuple[Any, dict, Path] | None:
        """Restore the newest intact checkpoint; corrupt ones (checksums, unreadable files) are
        set aside with a warning naming the directory. `accept(meta, directory)` raises ValueError
        for a checkpoint of another run, before any array is read (a refusal, not a corruption).
        None when there is nothing to resume from."""
        for step, kind in self.candidates():
            directory = self.step_dir(kind, step)
            try:
                self.verify(kind, step)
                meta = self.read_meta(kind, step)
            except Exception as error:  # noqa: BLE001  (corrupt files: orbax raises many types)
                self._skip_corrupt(kind, step, error)
                continue
            accept(meta, directory)
            try:
                state, meta = self.restore(kind, step, abstract_state)
            except CorruptCheckpointError as error:
                self._skip_corrupt(kind, step, error)
                continue
            return state, meta, directory
        return None

    def _skip_corrupt(self, kind: str, step: int, error: BaseException) -> None:
        directory = self.step_dir(kind, step)
        aside = self._set_aside(kind, step)
        warnings.warn(f"skipping corrupt {kind} checkpoint directory {directory}"
                      f"{f' (moved to {aside.name})' if aside else ''}: "
                      f"{type(error).__name__}: {str(error)[:300]}", CheckpointWarning)

    def _set_aside(self, kind: str, step: int) -> Path | None:
        """Rename a corrupt step directory (kept for inspection, never deleted) so that the
        resumed run can write that step again."""
        if self.read_only:
            return None
        directory = self.step_dir(kind, step)
        aside = directory.with_name(f"{step}.corrupt-{int(time.time())}")
        os.rename(directory, aside)
        self.managers[kind].reload()
        return aside

    def newest_good(self) -> Path | None:
        """Directory of the newest checkpoint whose files match their checksums and whose
        metadata reads (for error messages)."""
        for step, kind in self.candidates():
            try:
                self.verify(kind, step)
                self.read_meta(kind, step)
                return self.step_dir(kind, step)
            except Exception:
                continue
        return None

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()


def list_checkpoints(workdir: str | Path, *, verify: bool = False) -> list[dict]:
    """One record per checkpoint: kind, step, tokens, dev loss, directory; with `verify`, also
    "checksums" ("ok", or "none" for a checkpoint written without them), and a corrupt one gets
    an "error" naming the file that does not match."""
    store = CheckpointStore(workdir, read_only=True)
    rows = []
    for kind in ("intermediate", "latest"):
        for step in store.steps(kind):
            try:
                verified = store.verify(kind, step) if verify else None
                meta = store.read_meta(kind, step)
            except Exception as error:  # noqa: BLE001  (listed as unreadable, with the reason)
                rows.append({"kind": kind, "step": step, "error": f"{type(error).__name__}: {error}",
                             "path": str(store.step_dir(kind, step))})
                continue
            rows.append({"kind": kind, "step": step, "tokens": meta.get("tokens_seen"),
                         "dev_loss": meta.get("dev_loss"), "train_loss": meta.get("train_loss"),
                         "model": (meta.get("model_config") or {}).get("name"),
                         "path": str(store.step_dir(kind, step))})
            if verify:
                rows[-1]["checksums"] = "ok" if verified else "none"
    store.close()
    return rows


def matching_checkpoints(workdir: str | Path, *, step: int | None = None,
                         tokens: int | None = None) -> list[tuple[str, int]]:
    """(kind, step) of every readable checkpoint with that step or token count, intermediate
    first (the latest of the same step holds the same state: a fallback when one is corrupt)."""
    if (step is None) == (tokens is None):
        raise ValueError("give exactly one of step or tokens")
    rows = [r for r in list_checkpoints(workdir) if "error" not in r]
    found = [(row["kind"], row["step"]) for row in sorted(rows, key=lambda r: r["kind"] != "intermediate")
             if (step is not None and row["step"] == step) or (tokens is not None and row["tokens"] == tokens)]
    if not found:
        available = ", ".join(f"step {r['step']} ({r['tokens']} tokens)" for r in rows) or "none"
        wanted = f"step {step}" if step is not None else f"{tokens} tokens"
        raise ValueError(f"no checkpoint with {wanted} in {workdir}; available: {available}")
    return found


def find_checkpoint(workdir: str | Path, *, step: int | None = None, tokens: int | None = None) -> tuple[str, int]:
    """(kind, step) for `--step=N` or `--tokens=T` (the checkpoint with exactly T tokens seen)."""
    return matching_checkpoints(workdir, step=step, tokens=tokens)[0]


def intermediate_checkpoints(workdir: str | Path) -> list[dict]:
    """Readable intermediate checkpoints of a workdir (step, tokens, dev_loss, model, path), by step;
    ValueError if there is none."""
    rows = [r for r in list_checkpoints(workdir) if r["kind"] == "intermediate" and "error" not in r]
    if not rows:
        raise ValueError(f"{workdir} has no readable intermediate checkpoints")
    return sorted(rows, key=lambda r: r["step"])


def last_checkpoint(workdir: str | Path) -> dict:
    """The newest readable checkpoint (intermediate preferred at equal steps); ValueError if none."""
    rows = [r for r in list_checkpoints(workdir) if "error" not in r]
    if not rows:
        raise ValueError(f"{workdir} is a training workdir without readable checkpoints")
    return max(rows, key=lambda r: (r["step"], r["kind"] == "intermediate"))
