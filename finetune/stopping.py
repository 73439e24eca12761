"""How long a finetuning run trains and which of its steps it keeps: StoppingRule (fixed length,
or until dev PPL stops improving within a step budget that does not shrink with Df) and
DevSelection (best by dev token PPL, as Zhang et al. select). Both are plain state the trainer's
hooks (finetune.training) update and checkpoint, so a resumed run stops exactly where an
uninterrupted one would."""
from __future__ import annotations

import dataclasses
import math


# Why a run stopped (RunResult.extra_metrics carries one "stop.<reason>" flag per run).
STOP_REASONS = ("fixed_length", "patience", "max_steps")


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """How long a finetuning run trains, independent of Df (Zhang et al. select the best
    checkpoint by dev PPL; a budget that shrank with Df would make the Df axis count updates).

    max_steps: the hard cap (the cosine schedule spans it). min_steps: no patience stop before
    it (the smallest Df still trains this long). patience: evaluations in a row without a new
    best dev PPL before stopping; None trains to max_steps. A fixed-length run (epochs or
    num_steps) is StoppingRule.fixed(total): min = max = total.
    """

    max_steps: int
    min_steps: int = 0
    patience: int | None = None
    fixed_length: bool = False

    def __post_init__(self) -> None:
        for name, low in (("max_steps", 1), ("min_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"StoppingRule.{name}={value!r} must be an integer >= {low}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"StoppingRule.min_steps={self.min_steps} exceeds max_steps={self.max_steps}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"StoppingRule.patience={self.patience!r} must be None or an integer >= 1")

    @classmethod
    def fixed(cls, total_steps: int, patience: int | None = None) -> "StoppingRule":
        """A run of exactly total_steps (optionally cut by patience, as before the rule existed)."""
        return cls(max_steps=total_steps, min_steps=0, patience=patience, fixed_length=True)

    @classmethod
    def until_converged(cls, *, max_steps: int, patience: int, min_steps: int = 0, min_epochs: int = 0,
                        steps_per_epoch: int = 1) -> "StoppingRule":
        """Train until dev PPL stops improving: at least max(min_steps, min_epochs epochs), at most max_steps."""
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be an integer >= 1")
        if patience is None:
            raise ValueError("a train-until-converged rule needs a patience (evaluations without a new best dev PPL)")
        floor = max(int(min_steps), int(min_epochs) * steps_per_epoch)
        return cls(max_steps=max_steps, min_steps=min(floor, max_steps), patience=patience)

    def stop_reason(self, step: int, evals_since_best: int) -> str | None:
        """Why to stop after `step` (with the dev evaluations so far), or None to go on."""
        if step >= self.max_steps:
            return "fixed_length" if self.fixed_length else "max_steps"
        if self.patience is not None and step >= self.min_steps and evals_since_best >= self.patience:
            return "patience"
        return None


@dataclasses.dataclass
class DevSelection:
    """Model selection as Zhang et al. select: the step with the lowest dev log-PPL (ties: the
    earliest); `since_best` counts the evaluations in a row without a new best. The params of
    the best step are kept by the caller (on the device, placed like the trained ones)."""

    best_step: int = 0
    best_log_ppl: float = math.inf
    since_best: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)

    def observe(self, step: int, log_ppl: float, train_loss: float) -> bool:
        """Record one evaluation; True when it is a new best (keep its params)."""
        self.history.append({"step": step, "dev_log_ppl": log_ppl, "dev_ppl": math.exp(min(log_ppl, 700.0)),
                             "train_loss": train_loss})
        if log_ppl < self.best_log_ppl:
            self.best_step, self.best_log_ppl, self.since_best = step, log_ppl, 0
            return True
        self.since_best += 1
        return False

    def to_json(self) -> dict:
        """The selection's state for a checkpoint's JSON record (inf as null)."""
        best = None if math.isinf(self.best_log_ppl) else self.best_log_ppl
        return {"best_step": self.best_step, "best_log_ppl": best, "since_best": self.since_best,
                "history": list(self.history)}

    @classmethod
    def from_json(cls, record: dict) -> "DevSelection":
        best = record["best_log_ppl"]
        return cls(best_step=int(record["best_step"]), best_log_ppl=math.inf if best is None else float(best),
                   since_best=int(record["since_best"]), history=list(record["history"]))

    @property
    def best_dev_ppl(self) -> float:
        return math.exp(min(self.best_log_ppl, 700.0))
