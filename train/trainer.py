"""The pretraining loop: validate, build the sharded state (or resume it), run jitted steps,
log, evaluate on the dev set, checkpoint, stop on NaN, and write summary.json."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import gin
import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from checkpoints.atomic import write_json_atomic
from checkpoints.store import CheckpointStore
from eval.scoring import likelihood_of_batches
from model.compute import ComputeConfig
from model.functional import PRNG_IMPLS
from model.sharding import data_ways
from train import state as state_lib
from train.loop import run_steps
from train.metrics import MetricsWriter, measure_matmul_peak
from train.optimizer import (learning_rate_in_state, learning_rate_schedule, make_optimizer,
                             schedule_in_state_optimizer)
from train.step import jit_eval_step, jit_train_step, make_train_step, shard_batch

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


class BatchSource(Protocol):
    """Deterministic, resumable batches: `source(start_position)` yields this process's rows
    of every global batch from batch number `start_position` on. An iterator with a
    `save(directory)` method has its position saved with every checkpoint, and the resumed run
    gets it back as `source(start_position, state=directory)` (no replay)."""

    def __call__(self, start_position: int, state: Path | None = None) -> Iterator[Batch]: ...


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What the loop needs besides the model and data (all gin-bindable as TrainConfig.x)."""
    batch_size: int = 8                       # global, split over data x fsdp
    seq_len: int = 128
    token_budget: int | None = None           # one epoch: steps = budget // (batch x seq_len)
    num_steps: int | None = None              # instead of token_budget
    z_loss: float = 0.0
    seed: int = 0
    checkpoint_tokens: Sequence[int] = ()     # intermediate checkpoints (kept forever) ...
    checkpoint_every_tokens: int | None = None  # ... or every N tokens
    latest_every_steps: int = 100             # rolling checkpoint for resume
    keep_latest: int = 2
    eval_every_steps: int = 100
    log_every_steps: int = 10
    peak_flops: float | None = None           # None: measure a float32 matmul at start
    prng_impl: str = "threefry2x32"           # init / dropout keys; "rbg" compiles faster on CPU
    # How the step computes, never what (model.compute; a resumed run may change them):
    remat: str = "none"                       # per layer: none / full / save_matmuls
    attention: str = "auto"                   # auto / einsum (reference) / blockwise / dot_product / fused_cpu
    attention_block: int = 512                # query rows per block (blockwise)
    loss_chunk: int = 0                       # cross-entropy over chunks of this many positions (0: whole)
    loss_positions: str = "auto"              # logits at: auto / all (reference) / weighted
    # ("auto": the fused CPU attention and weighted positions on one CPU device; ComputeConfig.for_devices)
    microbatches: int = 1                     # gradient accumulation: one update per global batch

    @property
    def compute(self) -> ComputeConfig:
        return ComputeConfig(remat=self.remat, attention=self.attention, attention_block=self.attention_block,
                             loss_chunk=self.loss_chunk, loss_positions=self.loss_positions)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def total_steps(self) -> int:
        if (self.token_budget is None) == (self.num_steps is None):
            raise ValueError(f"set exactly one of TrainConfig.token_budget ({self.token_budget}) "
                             f"and TrainConfig.num_steps ({self.num_steps})")
        if self.num_steps is not None:
            return self.num_steps
        return self.token_budget // self.tokens_per_step

    def run_identity(self) -> dict:
        """The settings a checkpoint's step and token counts depend on (recorded in every
        checkpoint; a resume with other values is refused): the tokens of one step, the schedule's
        length and the run's randomness. Mesh-independent: a run may resume on another mesh."""
        return {"batch_size": self.batch_size, "seq_len": self.seq_len, "total_steps": self.total_steps(),
                "seed": self.seed, "z_loss": self.z_loss, "prng_impl": self.prng_impl}

    def checkpoint_steps(self) -> list[int]:
        """Steps of the intermediate checkpoints: the first step whose tokens reach each target."""
        total = self.total_steps()
        targets = list(self.checkpoint_tokens)
        if self.checkpoint_every_tokens:
            targets += list(range(self.checkpoint_every_tokens, total * self.tokens_per_step + 1,
                                  self.checkpoint_every_tokens))
        return sorted({min(total, math.ceil(t / self.tokens_per_step)) for t in targets} | {total})

    def validate(self, mesh: Mesh, *, max_len: int | None = None) -> None:
        """Raise ValueError for anything that would fail (or silently misbehave) later."""
        for name in ("batch_size", "seq_len", "latest_every_steps", "keep_latest", "eval_every_steps",
                     "log_every_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if self.prng_impl not in PRNG_IMPLS:
            raise ValueError(f"TrainConfig.prng_impl={self.prng_impl!r}; valid: {', '.join(PRNG_IMPLS)}")
        try:
            self.compute
        except ValueError as error:
            raise ValueError(f"TrainConfig.{error}") from None
        if isinstance(self.microbatches, bool) or not isinstance(self.microbatches, int) or self.microbatches < 1:
            raise ValueError(f"TrainConfig.microbatches must be a positive int, got {self.microbatches!r}")
        ways = data_ways(mesh)
        if self.batch_size % (ways * self.microbatches):
            raise ValueError(
                f"TrainConfig.batch_size={self.batch_size} is not divisible by the data axes "
                f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} = {ways}) x "
                f"TrainConfig.microbatches={self.microbatches}; use a multiple of {ways * self.microbatches}")
        if self.batch_size % jax.process_count():
            raise ValueError(f"batch_size={self.batch_size} not divisible by {jax.process_count()} processes")
        if self.token_budget is not None and self.token_budget < self.tokens_per_step:
            raise ValueError(
                f"TrainConfig.token_budget={self.token_budget} is smaller than one batch "
                f"(batch_size {self.batch_size} x seq_len {self.seq_len} = {self.tokens_per_step} tokens)")
        if self.total_steps() < 1:
            raise ValueError(f"TrainConfig.num_steps must be >= 1, got {self.num_steps}")
        budget = self.total_steps() * self.tokens_per_step
        for tokens in self.checkpoint_tokens:
            if not 0 < tokens <= budget:
                raise ValueError(f"checkpoint_tokens entry {tokens} is outside (0, {budget}] "
                                 f"(the run's token budget)")
        if self.checkpoint_every_tokens is not None and self.checkpoint_every_tokens < 1:
            raise ValueError(f"checkpoint_every_tokens must be >= 1, got {self.checkpoint_every_tokens}")
        if max_len is not None and self.seq_len > max_len:
            raise ValueError(f"TrainConfig.seq_len={self.seq_len} exceeds the model's max_len={max_len}")


@dataclasses.dataclass
class TrainProgram:
    """The jitted train step of a run and what it was built from (train() runs it, train.compile
    compiles it for a target topology)."""
    schedule: Any
    optimizer: Any
    parts: state_lib.ModelParts
    step_fn: Callable


def build_train_step(config: TrainConfig, model_factory: Callable, mesh: Mesh, *, dropout: bool,
                     method: str = "fmt", schedule_in_state: bool = False,
                     parameter_scale: bool = True) -> TrainProgram:
    """Schedule, optimizer (gin), shardings and the jitted step for `config` on `mesh`; only the
    params `method`'s filter selects train (pretraining: "fmt" on a plain model). With
    `schedule_in_state` (finetuning) the cosine schedule's peak, final rate and length live in the
    optimizer state (train.optimizer.with_schedule sets them), so the program does not depend on
    them or on the run's length; `parameter_scale` is Adafactor's multiply_by_parameter_scale there."""
    if schedule_in_state:
        schedule = None
        optimizer = schedule_in_state_optimizer(multiply_by_parameter_scale=parameter_scale)
        learning_rate = learning_rate_in_state
    else:
        schedule = learning_rate_schedule(config.total_steps())
        optimizer = make_optimizer(schedule)
        learning_rate = lambda opt_state, step: schedule(step)  # noqa: E731
    parts = state_lib.plan(model_factory, optimizer, mesh, config.seed, config.prng_impl, method)
    step = make_train_step(parts.graphdef, optimizer, learning_rate=learning_rate, z_loss=config.z_loss,
                           dropout=dropout, seed=config.seed, prng_impl=config.prng_impl,
                           compute=config.compute.for_devices(list(mesh.devices.flat)),
                           microbatches=config.microbatches, mesh=mesh)
    return TrainProgram(schedule, optimizer, parts, jit_train_step(step, parts.state_shardings,
                                                                   parts.rest_shardings, mesh))


@dataclasses.dataclass
class RunInputs:
    """The model and data a run trains on (built by train.pretrain from gin)."""
    model_factory: Callable  # nnx.Rngs -> nnx.Module
    model_config: dict       # JSON-able, recorded in every checkpoint
    flops_per_token: float
    batches: BatchSource
    dev_batches: Sequence[Batch] = ()
    data_description: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _check_batch(batch: Batch, config: TrainConfig, step: int) -> None:
    rows = config.batch_size // jax.process_count()
    shape = batch["decoder_target_tokens"].shape
    if shape != (rows, config.seq_len):
        raise ValueError(f"batch at step {step} has shape {shape}, expected ({rows}, {config.seq_len}) "
                         f"(per-process rows x TrainConfig.seq_len)")


def dev_loss(eval_fn: Callable, params: Any, rest: Any, dev_batches: Sequence[Batch], mesh: Mesh) -> float | None:
    """Token-weighted mean dev cross-entropy (None without a dev set); each host feeds its rows."""
    if not dev_batches:
        return None

    def sums(batch: Batch):
        rows = len(batch["decoder_target_tokens"]) // jax.process_count()
        first = jax.process_index() * rows
        return eval_fn(params, rest, shard_batch({k: v[first:first + rows] for k, v in batch.items()}, mesh))

    return likelihood_of_batches(sums, dev_batches).log_ppl


def _resume_refusal(meta: dict, inputs: RunInputs, config: TrainConfig) -> str | None:
    """Why the checkpoint with `meta` is not this run's (None when it is): another model,
    data source, or a setting that changes what its step and token counts mean."""
    if meta.get("model_config") != inputs.model_config:
        return f"was written for model {meta.get('model_config')}, but this run configures {inputs.model_config}"
    recorded_data = {k: v for k, v in (meta.get("data_position") or {}).items() if k != "batches_consumed"}
    if recorded_data != dict(inputs.data_description):
        return f"was trained on data {recorded_data}, but this run configures {dict(inputs.data_description)}"
    wanted = config.run_identity()
    recorded = meta.get("train_config")
    if recorded is None:  # written before train_config was recorded: tokens per step still tell
        recorded = {"batch_size x seq_len": meta["tokens_seen"] // max(int(meta["step"]), 1)}
        wanted = {"batch_size x seq_len": config.tokens_per_step}
    changed = [f"{k}={recorded.get(k)!r} (now {wanted.get(k)!r})" for k in sorted(set(recorded) | set(wanted))
               if recorded.get(k) != wanted.get(k)]
    if changed:
        return (f"was written with TrainConfig {', '.join(changed)}; resuming would make its step and token "
                f"counts mean something else (step {meta['step']} = {meta['tokens_seen']:,} tokens)")
    return None


def _restore_or_init(store: CheckpointStore, parts: state_lib.ModelParts, optimizer: Any, inputs: RunInputs,
                     config: TrainConfig) -> tuple[dict, Any, int, dict, Path | None]:
    """(train state, rest, start step, checkpoint meta, its directory): the newest intact checkpoint
    of this very run, or a fresh state. A checkpoint of another run is refused before it is read."""
    def accept(meta: dict, directory: Path) -> None:
        refusal = _resume_refusal(meta, inputs, config)
        if refusal:
            raise ValueError(f"checkpoint {directory} {refusal}; use the same settings, or a fresh --workdir")

    restored = store.restore_newest(parts.abstract_state, accept)
    if restored is None:
        train_state, rest = state_lib.init_state(inputs.model_factory, optimizer, parts, config.seed, config.prng_impl)
        return train_state, rest, 0, {}, None
    train_state, meta, directory = restored
    log.info("resuming from %s (step %d, %d tokens)", directory, meta["step"], meta["tokens_seen"])
    rest = state_lib.init_rest(inputs.model_factory, parts, config.seed, config.prng_impl)
    return train_state, rest, int(meta["step"]), meta, directory


def train(config: TrainConfig, inputs: RunInputs, mesh: Mesh, workdir: str | Path,
          *, progress: bool = True, on_start: Callable[[], None] | None = None) -> dict:
    """Run (or resume) the job in `workdir`; returns the summary also written to summary.json.
    `on_start` is called once the workdir is accepted (fresh, or a checkpoint of this run), before
    anything is written: a refused workdir is left byte-identical."""
    workdir = Path(workdir)
    config.validate(mesh, max_len=inputs.model_config.get("max_len"))
    total_steps = config.total_steps()
    workdir.mkdir(parents=True, exist_ok=True)
    dropout = float(inputs.model_config.get("dropout_rate", 0.0) or 0.0) > 0
    program = build_train_step(config, inputs.model_factory, mesh, dropout=dropout)
    parts, optimizer = program.parts, program.optimizer
    log.info("planned shardings for %s params", f"{parts.num_params:,}")
    store = CheckpointStore(workdir, keep_latest=config.keep_latest)
    try:
        train_state, rest, start_step, meta, last_good = _restore_or_init(store, parts, optimizer, inputs, config)
    except BaseException:
        store.close()
        raise
    if start_step >= total_steps and (workdir / "summary.json").is_file():  # a finished run: keep its summary
        store.close()
        log.info("the run is already complete at step %d (%s)", start_step, last_good)
        return json.loads((workdir / "summary.json").read_text(encoding="utf-8"))
    if on_start is not None:
        on_start()
    loop = _Loop(
        config=config, inputs=inputs, mesh=mesh, store=store, total_steps=total_steps,
        step_fn=program.step_fn,
        eval_fn=jit_eval_step(parts.graphdef, parts.param_shardings, parts.rest_shardings, mesh),
        peak=config.peak_flops or measure_matmul_peak(devices=list(mesh.devices.flat)),
        writer=MetricsWriter(workdir, resume_step=start_step if last_good else None),
        start_step=start_step, last_loss=meta.get("train_loss"), last_dev_loss=meta.get("dev_loss"),
        resumed_from=last_good)
    log.info("state ready (step %d); float32 matmul peak %.3g FLOP/s", start_step, loop.peak)
    if start_step >= total_steps:
        log.info("the run is already complete at step %d (%s)", start_step, last_good)
    started = time.time()
    try:
        loop.run(train_state, rest, progress=progress)
    finally:
        loop.writer.close()
        store.close()
    summary = loop.summary(wall_time_s=time.time() - started, num_params=parts.num_params)
    if jax.process_index() == 0:
        write_json_atomic(workdir / "summary.json", summary)
    return summary


class _Loop:
    """The hooks of a pretraining run in the one step loop (train.loop.run_steps): metrics logged
    one step late, dev loss and checkpoints at their steps, NaN stops naming the last good checkpoint."""

    def __init__(self, *, config: TrainConfig, inputs: RunInputs, mesh: Mesh, store: CheckpointStore,
                 total_steps: int, step_fn: Callable, eval_fn: Callable, peak: float, writer: MetricsWriter,
                 start_step: int, last_loss: float | None, last_dev_loss: float | None,
                 resumed_from: Path | None = None):
        self.config, self.inputs, self.mesh, self.store = config, inputs, mesh, store
        self.resumed_from = resumed_from  # cleared at the first save: a NaN before it is blamed on it
        self.total_steps, self.step_fn, self.eval_fn = total_steps, step_fn, eval_fn
        self.peak, self.writer, self.start_step = peak, writer, start_step
        self.last_loss, self.dev_loss = last_loss, last_dev_loss
        self.checkpoint_steps = set(config.checkpoint_steps())
        self.dev_batches = list(inputs.dev_batches)
        self.clock = _Clock(config, inputs.flops_per_token, peak, start_step, total_steps)
        self.bar = None
        self.batches: Iterator[Batch] | None = None

    def meta_for(self, step: int, dev_loss: float | None) -> dict:
        seed = self.config.seed
        return {"step": step, "tokens_seen": step * self.config.tokens_per_step,
                "model_config": self.inputs.model_config,
                "data_position": {"batches_consumed": step, **self.inputs.data_description},
                "train_config": self.config.run_identity(),
                "rng": {"seed": seed, "dropout_key": f"fold_in(key({seed}), step)"},
                "train_loss": self.last_loss, "dev_loss": dev_loss, "time": time.time()}

    def consume(self, step: int, device_metrics: Any) -> None:
        """Fetch a step's metrics, stop on NaN/inf, log at the configured interval."""
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if not math.isfinite(values["loss"]):
            if self.resumed_from is not None:
                raise TrainingDivergedError(
                    f"loss is {values['loss']} at step {step}, {step - self.start_step} step(s) after resuming from "
                    f"checkpoint {self.resumed_from} with nothing saved since: that checkpoint may hold bad values "
                    f"(its files match their checksums, if it has them); move it aside to resume from an older one")
            good = self.store.newest_good()
            raise TrainingDivergedError(
                f"loss is {values['loss']} at step {step}; stopping. Last good checkpoint: "
                f"{good or 'none (no checkpoint written yet)'} (left intact)")
        record = self.clock.tick(step, values)
        if record is not None:
            self.writer.write(step, record)
            self.bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
        self.last_loss = values["loss"]

    def evaluate_and_save(self, step: int, train_state: dict, rest: Any) -> None:
        """Dev loss and checkpoints due at `step` (the metrics of `step` are consumed first)."""
        is_intermediate = step in self.checkpoint_steps
        is_latest = step % self.config.latest_every_steps == 0
        is_eval = step % self.config.eval_every_steps == 0 or is_intermediate
        if is_eval and self.dev_batches:
            self.dev_loss = dev_loss(self.eval_fn, train_state["params"], rest, self.dev_batches, self.mesh)
            self.writer.write(step, {"dev_loss": self.dev_loss, "dev_ppl": math.exp(min(self.dev_loss, 50))})
        for kind, wanted in (("intermediate", is_intermediate), ("latest", is_latest)):
            if wanted:
                save_start = time.perf_counter()
                self.store.save(step, train_state, self.meta_for(step, self.dev_loss if is_eval else None), kind=kind,
                                data_position=getattr(self.batches, "save", None))
                self.resumed_from = None
                self.writer.write(step, {f"checkpoint_save_s_{kind}": time.perf_counter() - save_start})
        self.clock.pause()  # evaluation and saving stay out of tokens/s

    def is_due(self, step: int) -> bool:
        return (step in self.checkpoint_steps or step % self.config.latest_every_steps == 0
                or step % self.config.eval_every_steps == 0)

    def _open_batches(self) -> Iterator[Batch]:
        """The batches from the start step on: continued from the data position saved with the
        checkpoint resumed from (O(1)) when it has one, else the source replays to the step."""
        position = self.store.data_position_dir(self.resumed_from) if self.resumed_from else None
        if position is not None:
            log.info("continuing the data from the position saved at step %d (%s)", self.start_step, position)
            return self.inputs.batches(self.start_step, state=position)
        if self.start_step:
            log.info("no saved data position: the batch source skips to step %d", self.start_step)
        return self.inputs.batches(self.start_step)

    def dispatched(self, step: int) -> None:
        self.bar.update(self.config.tokens_per_step)

    def due(self, step: int, train_state: dict, rest: Any) -> bool:
        self.evaluate_and_save(step, train_state, rest)
        return False  # a pretraining run always runs to its last step

    def device_batches(self) -> Iterator[Any]:
        """The source's batches from the start step on, checked and sharded over the mesh."""
        batches = self.batches = self._open_batches()
        for step in range(self.start_step + 1, self.total_steps + 1):
            batch = next(batches, None)
            if batch is None:
                raise ValueError(f"the batch source ran out at step {step} of {self.total_steps}; "
                                 f"lower the token budget or use a larger corpus")
            _check_batch(batch, self.config, step)
            yield shard_batch(batch, self.mesh)

    def run(self, train_state: dict, rest: Any, *, progress: bool) -> None:
        config = self.config
        self.bar = tqdm(total=self.total_steps * config.tokens_per_step, initial=self.start_step * config.tokens_per_step,
                        unit="tok", unit_scale=True, disable=not progress, desc="pretrain", dynamic_ncols=True)
        try:
            run_steps(self.step_fn, train_state, rest, self.device_batches(), start_step=self.start_step,
                      total_steps=self.total_steps, hooks=self)
        finally:
            self.bar.close()

    def summary(self, *, wall_time_s: float, num_params: int) -> dict:
        tokens_per_s = self.clock.mean_tokens_per_s()
        flops_per_token = self.inputs.flops_per_token
        return {
            "final_step": self.total_steps, "tokens_seen": self.total_steps * self.config.tokens_per_step,
            "final_train_loss": self.last_loss, "final_dev_loss": self.dev_loss,
            "final_dev_ppl": math.exp(min(self.dev_loss, 50)) if self.dev_loss is not None else None,
            "wall_time_s": wall_time_s, "resumed_from_step": self.start_step, "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / self.peak if tokens_per_s else None,
            "matmul_peak_flops": self.peak, "flops_per_token": flops_per_token, "num_params": num_params,
            "model": self.inputs.model_config.get("name"), "mesh": dict(self.mesh.shape),
        }


class _Clock:
    """Throughput between log records; the first interval (compilation) and pauses for
    evaluation / checkpointing are excluded from the run's mean tokens/s."""

    def __init__(self, config: TrainConfig, flops_per_token: float, peak: float, start_step: int, total_steps: int):
        self.config, self.flops_per_token, self.peak = config, flops_per_token, peak
        self.start_step, self.total_steps = start_step, total_steps
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        self.measured_time, self.measured_steps = 0.0, 0

    def tick(self, step: int, values: dict) -> dict | None:
        self.interval_steps += 1
        first = step == self.start_step + 1
        if not (first or step % self.config.log_every_steps == 0 or step == self.total_steps):
            return None
        now = time.perf_counter()
        elapsed = max(now - self.interval_start, 1e-9)
        tokens_per_s = self.interval_steps * self.config.tokens_per_step / elapsed
        if not first:
            self.measured_time += elapsed
            self.measured_steps += self.interval_steps
        self.interval_start, self.interval_steps = now, 0
        return {**values, "tokens_seen": step * self.config.tokens_per_step, "tokens_per_s": tokens_per_s,
                "mfu": tokens_per_s * self.flops_per_token / self.peak}

    def pause(self) -> None:
        """Restart the interval after non-training work (the steps counted so far are dropped)."""
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def mean_tokens_per_s(self) -> float | None:
        if not self.measured_time:
            return None
        return self.measured_steps * self.config.tokens_per_step / self.measured_time
