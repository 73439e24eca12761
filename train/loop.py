"""The one step loop of every training job (pretraining and finetuning): dispatch a jitted step,
read the previous step's metrics while this one runs (no host sync per step), and hand the
job's hooks the steps they asked for (dev evaluation, model selection, checkpoints, stopping)."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import numpy as np


class StepHooks(Protocol):
    """What a job does around its steps; the loop only orders the calls."""

    def dispatched(self, step: int) -> None:
        """`step` was dispatched (progress bars)."""

    def consume(self, step: int, device_metrics: Any) -> None:
        """The metrics of `step`, read one step late (or at once before a due step); raise to stop
        (a NaN loss)."""

    def is_due(self, step: int) -> bool:
        """Whether `due` must run after `step` (its metrics are consumed first)."""

    def due(self, step: int, train_state: Any, rest: Any) -> bool:
        """Evaluate / select / checkpoint at `step`; True stops the run after it."""


def run_steps(step_fn: Callable, train_state: Any, rest: Any, batches: Iterator[Any], *, start_step: int,
              total_steps: int, hooks: StepHooks) -> tuple[Any, int]:
    """Steps start_step + 1 .. total_steps (or until a hook stops the run) on device batches;
    `step_fn(state, rest, batch, step - 1)` -> (state, metrics). Returns (state, last step run)."""
    pending: tuple[int, Any] | None = None  # (step, device metrics), read one step late
    step = start_step
    for step in range(start_step + 1, total_steps + 1):
        train_state, device_metrics = step_fn(train_state, rest, next(batches), np.asarray(step - 1, np.int32))
        if pending is not None:
            hooks.consume(*pending)
        pending = (step, device_metrics)
        hooks.dispatched(step)
        if hooks.is_due(step):
            hooks.consume(*pending)  # never evaluate or checkpoint a diverged state
            pending = None
            if hooks.due(step, train_state, rest):
                return train_state, step
    if pending is not None:
        hooks.consume(*pending)
    return train_state, step
