"""Finetuning on the sharded trainer: the method's trainable params (train.state.plan with its
filter) and their optimizer state only, the jitted step of train.step on the job's mesh, the one
step loop (train.loop.run_steps) with finetuning's hooks: dev PPL every K steps, best-by-dev-PPL
selection, the StoppingRule, and a rolling checkpoint of everything a resume needs (trainable
state, best params, selection and stopping state; the step is the data position of the
in-memory batches), so a killed run continues bit-identically.

Programs are cached per (model config, method and size, dropout, optimizer settings, mesh,
compute options): the schedule's peak, final rate and length live in the optimizer state, so the
many runs of a study that share those compile once.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from checkpoints.store import CheckpointStore
from data.rows import BATCH_KEYS
from eval.scoring import likelihood_of_batches
from finetune.costs import tree_bytes
from finetune.stopping import DevSelection, StoppingRule
from model.methods import MethodSpec, model_factory, split_trainable
from model.sharding import data_ways, shard_rows
from train.loop import run_steps
from train.optimizer import with_schedule
from train.step import jit_eval_step
from train.trainer import TrainConfig, TrainProgram, build_train_step

Batch = dict[str, np.ndarray]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FinetuneProgram:
    """The jitted train and dev-loss steps of one model structure, method, optimizer and mesh."""

    train: TrainProgram
    init_opt: Callable  # params -> optimizer state, placed by the plan
    eval_fn: Callable  # (params, rest, sharded batch) -> sums


_PROGRAMS: dict[tuple, FinetuneProgram] = {}


def _optimizer_key() -> tuple:
    """The gin bindings of make_optimizer: a change of them must not reuse a cached program."""
    try:
        return tuple(sorted((k, repr(v)) for k, v in gin.get_bindings("make_optimizer").items()))
    except (ValueError, KeyError):
        return ()


def finetune_program(model_config: Any, spec: MethodSpec, mesh: Mesh, train_config: TrainConfig, *,
                     parameter_scale: bool) -> FinetuneProgram:
    """The cached program for this structure on `mesh` (built on first use). `train_config` gives
    the compute options (remat, attention, loss chunks, microbatches) and, with dropout, the seed."""
    dropout = model_config.dropout_rate > 0
    key = (model_config, spec, dropout, bool(parameter_scale), _optimizer_key(), mesh, train_config.compute,
           train_config.microbatches, train_config.z_loss, train_config.prng_impl,
           train_config.seed if dropout else None)  # the seed only enters the program through dropout
    if key not in _PROGRAMS:
        program = build_train_step(train_config, model_factory(model_config, spec), mesh, dropout=dropout,
                                   method=spec.method, schedule_in_state=True, parameter_scale=parameter_scale)
        parts = program.parts
        _PROGRAMS[key] = FinetuneProgram(
            program, jax.jit(program.optimizer.init, out_shardings=parts.state_shardings["opt_state"]),
            jit_eval_step(parts.graphdef, parts.param_shardings, parts.rest_shardings, mesh))
    return _PROGRAMS[key]


def model_inputs(batch: Batch) -> Batch:
    return {k: batch[k] for k in BATCH_KEYS if k in batch}


def dev_log_ppl(eval_fn: Callable, params: Any, rest: Any, batches: Sequence[Batch], mesh: Mesh) -> float:
    """Token-level mean negative log-likelihood over the target tokens of `batches` (rows padded
    to the mesh's data ways carry no weight)."""
    return likelihood_of_batches(lambda batch: eval_fn(params, rest, shard_rows(model_inputs(batch), mesh)),
                                 batches).log_ppl


@dataclasses.dataclass
class LoopResult:
    """What a finetuning run hands back: the model with the best params and the training record."""

    model: nnx.Module
    best_step: int
    best_dev_ppl: float
    history: list[dict]  # one {"step", "dev_log_ppl", "dev_ppl", "train_loss"} per evaluation
    train_losses: list[float]
    steps_run: int
    total_steps: int            # the rule's max_steps (the batches prepared)
    stopped_early: bool         # stopped before total_steps
    stop_reason: str            # one of finetune.stopping.STOP_REASONS
    trainable_params: int
    optimizer_state_bytes: int
    seconds_per_step: float
    resumed_from_step: int = 0  # the step a resumed run continued from (0: a fresh run)


class MetricsLog:
    """metrics.jsonl of a run: one record per step; a resumed run keeps the records up to its
    checkpoint's step and appends (so the file reads as one uninterrupted run)."""

    def __init__(self, path: Path):
        self.path, self.handle = Path(path), None

    def start(self, step: int) -> None:
        kept = []
        if step and self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
        self.handle = open(self.path, "w", encoding="utf-8")
        self.handle.writelines(line + "\n" for line in kept)
        self.handle.flush()

    def __call__(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


@dataclasses.dataclass
class _RunState:
    """The host-side state of a run that a checkpoint records next to the arrays."""

    selection: DevSelection
    train_losses: list[float]
    stop_reason: str | None = None


class _FinetuneHooks:
    """Finetuning's hooks in the one step loop: metrics one step late (NaN stops), dev PPL,
    selection, stopping and the rolling checkpoint at every evaluation."""

    def __init__(self, *, program: FinetuneProgram, mesh: Mesh, dev_batches: Sequence[Batch], rule: StoppingRule,
                 eval_every_steps: int, run: _RunState, best: dict, checkpoints: "_Checkpoints | None",
                 log_fn: Callable[[dict], None] | None, bar: Any, peak_learning_rate: float):
        self.program, self.mesh, self.dev_batches, self.rule = program, mesh, dev_batches, rule
        self.eval_every_steps, self.run, self.best, self.checkpoints = eval_every_steps, run, best, checkpoints
        self.log_fn, self.bar, self.peak = log_fn, bar, peak_learning_rate
        self.record: dict | None = None  # the due step's record, completed by `due`

    def dispatched(self, step: int) -> None:
        self.bar.update(1)

    def is_due(self, step: int) -> bool:
        return step % self.eval_every_steps == 0 or step == self.rule.max_steps

    def consume(self, step: int, device_metrics: Any) -> None:
        values = jax.device_get(device_metrics)
        loss = float(values["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"finetuning diverged at step {step}: loss {loss}; lower the learning rate "
                                     f"(peak {self.peak})")
        self.run.train_losses.append(loss)
        record = {"step": step, "train_loss": loss, "learning_rate": float(values["learning_rate"]),
                  "grad_norm": float(values["grad_norm"])}
        if self.is_due(step):
            self.record = record
        elif self.log_fn is not None:
            self.log_fn(record)

    def due(self, step: int, train_state: dict, rest: Any) -> bool:
        params = train_state["params"]
        log_ppl = dev_log_ppl(self.program.eval_fn, params, rest, self.dev_batches, self.mesh)
        selection = self.run.selection
        if selection.observe(step, log_ppl, self.run.train_losses[-1]):
            self.best["params"] = jax.tree.map(jnp.copy, params)  # the step's state is donated to the next one
        record = dict(self.record or {"step": step}, dev_log_ppl=log_ppl, dev_ppl=selection.history[-1]["dev_ppl"])
        self.bar.set_postfix(loss=f"{record.get('train_loss', math.nan):.3f}", dev_ppl=f"{record['dev_ppl']:.2f}",
                             best=selection.best_step)
        self.run.stop_reason = self.rule.stop_reason(step, selection.since_best)
        if self.log_fn is not None:
            self.log_fn(record)
        if self.checkpoints is not None:
            best = self.best["params"] if self.best["params"] is not None else params
            self.checkpoints.maybe_save(step, {"params": params, "opt_state": train_state["opt_state"],
                                               "best_params": best}, self.run)
        return self.run.stop_reason is not None


def checkpoint_meta(identity: dict, step: int, run: _RunState) -> dict:
    """The JSON record of a finetuning checkpoint: the run it belongs to and its host-side state."""
    return {"step": step, "tokens_seen": 0, "finetune_run": identity, "data_position": {"batches_consumed": step},
            "selection": run.selection.to_json(), "train_losses": run.train_losses, "stop_reason": run.stop_reason,
            "time": time.time()}


class _Checkpoints:
    """The run's rolling checkpoint (one kept): written at a dev evaluation once `every_seconds`
    have passed since the last one (0: at every evaluation), so the many short runs of a study
    spend no time on it while a long run loses at most that much work when killed."""

    def __init__(self, directory: str | Path, identity: dict, every_seconds: float):
        self.directory, self.identity, self.every_seconds = Path(directory), identity, float(every_seconds)
        self.store: CheckpointStore | None = None
        self.last_save = time.monotonic()

    def _open(self) -> CheckpointStore:
        if self.store is None:
            self.store = CheckpointStore(self.directory, keep_latest=1)
        return self.store

    def restore(self, abstract: dict) -> tuple[dict, dict] | None:
        """(state, meta) of the newest intact checkpoint of this very run; another run's is refused."""
        if not self.directory.is_dir():
            return None

        def accept(meta: dict, directory: Path) -> None:
            if meta.get("finetune_run") != self.identity:
                raise ValueError(f"checkpoint {directory} was written for finetuning run {meta.get('finetune_run')}, "
                                 f"but this run is {self.identity}; use the same settings, or a fresh --workdir")

        restored = self._open().restore_newest(abstract, accept)
        if restored is None:
            return None
        state, meta, directory = restored
        log.info("resuming finetuning from %s (step %d)", directory, meta["step"])
        return state, meta

    def maybe_save(self, step: int, state: dict, run: _RunState) -> None:
        if time.monotonic() - self.last_save < self.every_seconds:
            return
        self._open().save(step, state, checkpoint_meta(self.identity, step, run), kind="latest")
        self.last_save = time.monotonic()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _placed_copy(tree: Any, shardings: Any) -> Any:
    """`tree` on `shardings`, never aliasing the caller's arrays (the step donates its state)."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s, may_alias=False), tree, shardings)


def _device_batches(batches: Sequence[Batch], start: int, total: int, mesh: Mesh) -> Iterator[dict]:
    for index in range(start, total):
        yield shard_rows(model_inputs(batches[index]), mesh)


def finetune(
    model: nnx.Module,
    spec: MethodSpec,
    train_batches: Sequence[Batch],
    dev_batches: Sequence[Batch],
    *,
    mesh: Mesh,
    peak_learning_rate: float,
    final_learning_fraction: float = 0.1,
    parameter_scale: bool = True,
    eval_every_steps: int,
    stopping: StoppingRule | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    identity: dict | None = None,
    checkpoint_every_seconds: float = 0.0,
    progress: bool = True,
    log_fn: MetricsLog | Callable[[dict], None] | None = None,
) -> LoopResult:
    """Train `model` (from model.methods.build_model) on `train_batches` (one step each, in order)
    on `mesh`. Dev PPL is measured every `eval_every_steps` steps and at the rule's last step; the
    params with the lowest dev PPL are returned. `stopping` decides when to stop (default: every
    batch); it may not ask for more steps than there are batches. With `checkpoint_dir`, every
    evaluation leaves a checkpoint there and a run that finds one of the same `identity` resumes
    from it. The input model is left untouched."""
    if eval_every_steps < 1:
        raise ValueError(f"eval_every_steps={eval_every_steps!r} must be >= 1")
    if not train_batches:
        raise ValueError("no training batches: the finetuning subset produced no batches")
    rule = stopping if stopping is not None else StoppingRule.fixed(len(train_batches))
    if rule.max_steps > len(train_batches):
        raise ValueError(f"the stopping rule allows {rule.max_steps} steps but only {len(train_batches)} batches "
                         "were given")
    total_steps = rule.max_steps
    rows, seq_len = np.shape(train_batches[0]["decoder_target_tokens"])
    ways = data_ways(mesh)
    if rows % ways:
        raise ValueError(f"FinetuneConfig.batch_size={rows} is not divisible by the mesh's data axes (data "
                         f"{mesh.shape['data']} x fsdp {mesh.shape['fsdp']} = {ways}); use a multiple of {ways}, "
                         "or bind make_mesh with fewer data ways")
    train_config = TrainConfig(batch_size=int(rows), seq_len=int(seq_len), num_steps=total_steps, seed=seed,
                               checkpoint_tokens=(), checkpoint_every_tokens=None)
    train_config.validate(mesh, max_len=model.config.max_len - model.prompt_length)
    program = finetune_program(model.config, spec, mesh, train_config, parameter_scale=parameter_scale)
    parts = program.train.parts
    graphdef, params, rest = split_trainable(model, spec.method)
    params = _placed_copy(params, parts.param_shardings)
    rest = _placed_copy(rest, parts.rest_shardings)
    opt_state = with_schedule(program.init_opt(params), peak_learning_rate=peak_learning_rate,
                              final_learning_rate=peak_learning_rate * final_learning_fraction, decay_steps=total_steps)
    train_state = {"params": params, "opt_state": opt_state}
    run = _RunState(DevSelection(), [])
    best = {"params": None}  # set at the first evaluation (the fresh params are donated to the first step)
    start_step = 0
    checkpoints = (_Checkpoints(checkpoint_dir, dict(identity or {}), checkpoint_every_seconds)
                   if checkpoint_dir is not None else None)
    try:
        if checkpoints is not None:
            restored = checkpoints.restore(dict(parts.abstract_state, best_params=parts.abstract_state["params"]))
            if restored is not None:
                state, meta = restored
                train_state = {"params": state["params"], "opt_state": state["opt_state"]}
                best = {"params": state["best_params"]}
                run = _RunState(DevSelection.from_json(meta["selection"]), list(meta["train_losses"]),
                                meta.get("stop_reason"))
                start_step = int(meta["step"])
        if isinstance(log_fn, MetricsLog):
            log_fn.start(start_step)
        bar = tqdm(total=total_steps, initial=start_step, desc=f"finetune {spec.method}", unit="step",
                   disable=not progress, dynamic_ncols=True)
        hooks = _FinetuneHooks(program=program, mesh=mesh, dev_batches=dev_batches, rule=rule,
                               eval_every_steps=eval_every_steps, run=run, best=best, checkpoints=checkpoints,
                               log_fn=log_fn, bar=bar, peak_learning_rate=peak_learning_rate)
        started = time.perf_counter()
        steps_run = start_step
        try:
            if run.stop_reason is None:  # a checkpoint written where the run stopped has nothing left to train
                train_state, steps_run = run_steps(program.train.step_fn, train_state, rest,
                                                   _device_batches(train_batches, start_step, total_steps, mesh),
                                                   start_step=start_step, total_steps=total_steps, hooks=hooks)
        finally:
            bar.close()
    finally:
        if checkpoints is not None:
            checkpoints.close()
    seconds = time.perf_counter() - started
    selection = run.selection
    best_params = best["params"] if best["params"] is not None else train_state["params"]  # no finite dev PPL
    return LoopResult(
        model=nnx.merge(graphdef, best_params, rest), best_step=selection.best_step,
        best_dev_ppl=selection.best_dev_ppl, history=selection.history, train_losses=run.train_losses,
        steps_run=steps_run, total_steps=total_steps, stopped_early=steps_run < total_steps,
        stop_reason=str(run.stop_reason), trainable_params=parts.num_params,
        optimizer_state_bytes=tree_bytes(train_state["opt_state"]),
        seconds_per_step=seconds / max(steps_run - start_step, 1), resumed_from_step=start_step)
