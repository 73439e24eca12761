"""The finetuning loop: Adafactor on the method's trainable params only, dev token PPL every K
steps, the best params by dev PPL kept, a StoppingRule that decides how long to train (fixed
length, or until dev PPL stops improving within a step budget that does not shrink with Df),
progress bar with ETA.

Compiled steps are cached per (model config, method and size, dropout, optimizer settings):
the learning rate and step are arguments, not constants, so the many runs of a study that
share those compile once.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from eval.scoring import batch_sums, likelihood_of_batches
from finetune.costs import tree_bytes, tree_size
from data.rows import BATCH_KEYS
from model.functional import apply_model
from model.loss import weighted_cross_entropy
from model.methods import MethodSpec, split_trainable
from train.optimizer import learning_rate_schedule, make_optimizer

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    """The jitted train / eval functions of one model structure and optimizer."""

    optimizer: optax.GradientTransformation
    init_opt: Callable[[dict], Any]
    train_step: Callable[..., tuple[dict, Any, dict]]
    eval_step: Callable[[dict, nnx.State, Batch], dict]


_COMPILED: dict[tuple, CompiledSteps] = {}


def _optimizer_key() -> tuple:
    """The gin bindings of make_optimizer: a change of them must not reuse a cached optimizer."""
    try:
        return tuple(sorted((k, repr(v)) for k, v in gin.get_bindings("make_optimizer").items()))
    except (ValueError, KeyError):
        return ()


def make_finetune_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *, dropout: bool):
    """(params, opt_state, rest, batch, learning_rate, dropout_key) -> (params, opt_state, metrics).

    `optimizer` runs with learning rate 1 and the update is scaled by `learning_rate` here:
    Adafactor's later transforms (parameter-scale multiplication, sign flip) are linear, so this
    equals Adafactor at that learning rate while one program serves every rate and schedule.
    """

    def step(params: dict, opt_state: Any, rest: nnx.State, batch: Batch, learning_rate: jax.Array,
             dropout_key: jax.Array):
        def loss_fn(trainable):
            logits = apply_model(graphdef, trainable, rest, batch, deterministic=not dropout,
                                 dropout_key=dropout_key if dropout else None)
            return weighted_cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: (learning_rate * u).astype(u.dtype), updates)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "target_tokens": parts["weight_sum"],
                                   "grad_norm": optax.tree.norm(grads)}

    return step


def compiled_steps(model: nnx.Module, spec: MethodSpec, *, parameter_scale: bool = True) -> CompiledSteps:
    """The cached jitted steps for `model`'s structure under `spec` (built on first use).

    parameter_scale: Adafactor's multiply_by_parameter_scale (relative steps); False for LoRA,
    whose zero-initialised B would otherwise take steps of ~lr * 1e-3.
    """
    dropout = model.config.dropout_rate > 0
    key = (model.config, spec, dropout, bool(parameter_scale), _optimizer_key())
    if key not in _COMPILED:
        graphdef, _, _ = split_trainable(model, spec.method)
        optimizer = make_optimizer(1.0, multiply_by_parameter_scale=bool(parameter_scale))
        _COMPILED[key] = CompiledSteps(
            optimizer=optimizer,
            init_opt=jax.jit(optimizer.init),
            train_step=jax.jit(make_finetune_step(graphdef, optimizer, dropout=dropout), donate_argnums=(1,)),
            eval_step=jax.jit(functools.partial(batch_sums, graphdef)),
        )
    return _COMPILED[key]


def model_inputs(batch: Batch) -> Batch:
    return {k: batch[k] for k in BATCH_KEYS if k in batch}


def dev_log_ppl(eval_step: Callable, params: dict, rest: nnx.State, batches: Sequence[Batch]) -> float:
    """Token-level mean negative log-likelihood over the target tokens of `batches`."""
    return likelihood_of_batches(lambda batch: eval_step(params, rest, model_inputs(batch)), batches).log_ppl


@dataclasses.dataclass
class LoopResult:
    """What the loop hands back: the model with the best params and the training record."""

    model: nnx.Module
    best_step: int
    best_dev_ppl: float
    history: list[dict]  # one {"step", "dev_log_ppl", "dev_ppl", "train_loss"} per evaluation
    train_losses: list[float]
    steps_run: int
    total_steps: int            # the rule's max_steps (the batches prepared)
    stopped_early: bool         # stopped before total_steps
    stop_reason: str            # one of STOP_REASONS
    trainable_params: int
    optimizer_state_bytes: int
    seconds_per_step: float


def learning_rates(total_steps: int, peak: float, final_fraction: float) -> np.ndarray:
    """Per-step learning rates: cosine decay from `peak` to `peak * final_fraction` (train.optimizer)."""
    schedule = learning_rate_schedule(total_steps, peak_learning_rate=peak,
                                      final_learning_rate=peak * final_fraction, warmup_steps=0)
    return np.asarray([float(schedule(step)) for step in range(total_steps)], np.float32)


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
    """Model selection as Zhang et al. select: the params with the lowest dev log-PPL (ties: the
    earliest); `since_best` counts the evaluations in a row without a new best."""

    best_step: int = 0
    best_log_ppl: float = math.inf
    best_params: Any = None
    since_best: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)

    def observe(self, step: int, log_ppl: float, params: Any, train_loss: float) -> None:
        """Record one evaluation."""
        self.history.append({"step": step, "dev_log_ppl": log_ppl, "dev_ppl": math.exp(min(log_ppl, 700.0)),
                             "train_loss": train_loss})
        if log_ppl < self.best_log_ppl:
            self.best_step, self.best_log_ppl, self.best_params, self.since_best = step, log_ppl, params, 0
        else:
            self.since_best += 1

    @property
    def best_dev_ppl(self) -> float:
        return math.exp(min(self.best_log_ppl, 700.0))


def _check_loop_args(total_steps: int, eval_every_steps: int) -> None:
    if total_steps < 1:
        raise ValueError("no training batches: the finetuning subset produced no batches")
    if eval_every_steps < 1:
        raise ValueError(f"eval_every_steps={eval_every_steps!r} must be >= 1")


def finetune_loop(
    model: nnx.Module,
    spec: MethodSpec,
    train_batches: Sequence[Batch],
    dev_batches: Sequence[Batch],
    *,
    peak_learning_rate: float,
    final_learning_fraction: float = 0.1,
    parameter_scale: bool = True,
    eval_every_steps: int,
    patience: int | None = None,
    stopping: StoppingRule | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
) -> LoopResult:
    """Train `model` (from model.methods.build_model) on `train_batches` (one step each, in order).

    Dev PPL is measured every `eval_every_steps` steps and at the last step; the params with the
    lowest dev PPL are returned (DevSelection). `stopping` decides when to stop (default: every
    batch, cut by `patience` if given); it may not ask for more steps than there are batches.
    The input model is left untouched.
    """
    total_steps = len(train_batches)
    _check_loop_args(total_steps, eval_every_steps)
    rule = stopping if stopping is not None else StoppingRule.fixed(total_steps, patience)
    if rule.max_steps > total_steps:
        raise ValueError(f"the stopping rule allows {rule.max_steps} steps but only {total_steps} batches were given")
    total_steps = rule.max_steps
    steps = compiled_steps(model, spec, parameter_scale=parameter_scale)
    graphdef, params, rest = split_trainable(model, spec.method)
    # One plain device placement for everything: arrays restored on a mesh carry its axes in their
    # sharding, the step's outputs would not match its inputs and the second step would recompile.
    device = jax.local_devices()[0]
    params = jax.tree.map(lambda x: jax.device_put(jnp.array(x), device), params)  # own copies
    rest = jax.tree.map(lambda x: jax.device_put(x, device), rest)
    opt_state = jax.device_put(steps.init_opt(params), device)
    rates = learning_rates(total_steps, peak_learning_rate, final_learning_fraction)
    base_key = jax.random.key(seed)
    selection = DevSelection(best_params=params)
    losses: list[float] = []
    reason, step = None, 0
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"finetune {spec.method}", unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
        for step in range(1, total_steps + 1):
            params, opt_state, metrics = steps.train_step(
                params, opt_state, rest, model_inputs(train_batches[step - 1]), rates[step - 1],
                jax.random.fold_in(base_key, step))
            loss = float(metrics["loss"])
            losses.append(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"finetuning diverged at step {step}: loss {loss}; lower the learning rate "
                                         f"(peak {peak_learning_rate})")
            bar.update(1)
            record = {"step": step, "train_loss": loss, "learning_rate": float(rates[step - 1]),
                      "grad_norm": float(metrics["grad_norm"])}
            if step % eval_every_steps == 0 or step == total_steps:
                log_ppl = dev_log_ppl(steps.eval_step, params, rest, dev_batches)
                selection.observe(step, log_ppl, params, loss)
                record.update(dev_log_ppl=log_ppl, dev_ppl=selection.history[-1]["dev_ppl"])
                bar.set_postfix(loss=f"{loss:.3f}", dev_ppl=f"{record['dev_ppl']:.2f}", best=selection.best_step)
                reason = rule.stop_reason(step, selection.since_best)
            if log is not None:
                log(record)
            if reason is not None:
                break
    finally:
        bar.close()
    return LoopResult(
        model=nnx.merge(graphdef, selection.best_params, rest), best_step=selection.best_step,
        best_dev_ppl=selection.best_dev_ppl, history=selection.history, train_losses=losses, steps_run=step,
        total_steps=total_steps, stopped_early=step < total_steps, stop_reason=str(reason),
        trainable_params=tree_size(params), optimizer_state_bytes=tree_bytes(opt_state), seconds_per_step=(time.perf_counter() - started) / max(step, 1))
