"""The data position as a checkpoint item: each process's batch iterator writes its own state
(its shard's position, e.g. a tf.data iterator checkpoint) into the checkpoint, so a resumed run
continues from there in O(1) instead of replaying every earlier batch.

The item is written inside orbax's temporary step directory, so it is as atomic as the arrays
and covered by the step's checksums. What the state is belongs to the batch source; this module
only gives each process a directory: `data_position/process_<index>/`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

ITEM = "data_position"


def process_dir(item_dir: str | Path) -> Path:
    return Path(item_dir) / f"process_{jax.process_index()}"


class DataPositionHandler(ocp.CheckpointHandler):
    """Saves by calling the iterator's writer on this process's directory; restoring reads
    nothing (the batch source reads its state from `process_dir`)."""

    def save(self, directory: Any, args: "DataPositionSave") -> None:
        target = process_dir(directory)
        target.mkdir(parents=True, exist_ok=True)
        args.write(target)

    def restore(self, directory: Any, args: Any = None) -> Path:
        return process_dir(directory)


@ocp.args.register_with_handler(DataPositionHandler, for_save=True)
@dataclasses.dataclass
class DataPositionSave(ocp.args.CheckpointArgs):
    write: Callable[[Path], None]  # writes the position (the next batch to come) into a directory


@ocp.args.register_with_handler(DataPositionHandler, for_restore=True)
@dataclasses.dataclass
class DataPositionRestore(ocp.args.CheckpointArgs):
    pass
