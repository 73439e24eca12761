"""Finetuning entry point: one run from a pretraining checkpoint to its result.

  python -m finetune.run --gin_file=gin_configs/finetune/lora.gin \
      --gin_param='FinetuneConfig.pretrain_workdir="runs/smoke"' \
      --gin_param='FinetuneConfig.checkpoint_step=16' --workdir=runs/ft_lora

The workdir gets config.gin / operative_config.gin (CLI), config.json (the run's config, its
pretrain_workdir relative to the workdir), metrics.jsonl (one line per step, dev PPL every K
steps), train_state/ (a rolling checkpoint written at a dev evaluation every
`finetune_checkpoints.every_seconds`, from which a killed run resumes; removed once the result is
written), the adapter (LoRA A/B or the prompt: adapter.safetensors; FMT: the whole model in
model/, an export directory) and result.json (written last, atomically). A workdir whose
result.json holds this very configuration is a finished run: a no-op; one holding a different
run is refused (`--overwrite` replaces it). The study runner (`python -m study`) runs many of
these into one results store.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import gin
import jax
from jax.sharding import Mesh

from checkpoints.adapters import ADAPTER_FILE, export_finetuned, load_adapter_model, save_adapter
from checkpoints.atomic import write_json_atomic, write_text_atomic
from checkpoints.load import load_checkpoint_params
from data import pipeline, tasks
from data.finetune_rows import finetune_batches, split_batches
from eval.evaluate import evaluate_task, evaluate_zero_shot
from finetune.config import CheckpointInfo, FinetuneConfig
from finetune.result import RunResult, code_version, run_key
from finetune.stopping import STOP_REASONS, StoppingRule
from finetune.training import LoopResult, MetricsLog, finetune
from finetune.workdir import (CONFIG_FILE, EXPORT_DIR, METRICS_FILE, RESULT_FILE, TRAIN_STATE_DIR, claim_workdir,
                              identity)
from model.functional import make_rngs
from model.methods import base_params_of, build_model
from model.transformer import Transformer
from model.sizes import count_params
from train import optimizer  # noqa: F401  (make_optimizer's gin settings)
from train.gin_setup import add_gin_flags, one_line, parse_gin
from train.partitioning import make_mesh

# Test-set numbers kept as result columns; the rest of the evaluation goes to extra_metrics.
STANDARD_KEYS = {"ppl", "log_ppl", "mean_log_likelihood", "target_tokens", "bleu", "chrf", "rouge_l", "signatures",
                 "examples"}

log = logging.getLogger(__name__)


def train_batches(config: FinetuneConfig, task: str) -> tuple[list[dict], int]:
    """(the run's training batches in order, batches per epoch): `epochs` passes over the Df
    subset, or exactly `num_steps` / `max_steps` batches (as many passes as that takes). In-memory
    tasks build them in numpy from cached ids (data.finetune_rows: a study's many runs skip a
    tf.data pipeline each); streamed (TFDS) tasks read their subset through data.pipeline.
    `task`: config.data_task(...)."""
    batches = pipeline.finetune_batches if task in tasks.STREAMED else finetune_batches

    def passes(epochs: int) -> list[dict]:
        return list(batches(task, finetune_examples=config.finetune_examples,
                            subset_seed=config.subset_seed, batch_size=config.batch_size,
                            seq_len=config.seq_len, epochs=epochs, seed=config.seed))

    one = passes(1)
    if config.epochs is not None:
        return passes(config.epochs), len(one)
    steps = config.num_steps if config.num_steps is not None else config.max_steps
    return passes(math.ceil(steps / max(len(one), 1)))[:steps], len(one)


def stopping_rule(config: FinetuneConfig, num_batches: int, steps_per_epoch: int) -> StoppingRule:
    """The run's StoppingRule: fixed length (epochs / num_steps, cut by patience if set) or
    train-until-converged within [max(min_steps, min_epochs epochs), max_steps]."""
    if config.max_steps is None:
        return StoppingRule.fixed(num_batches, config.patience)
    return StoppingRule.until_converged(max_steps=config.max_steps, patience=config.patience,
                                        min_steps=config.min_steps or 0, min_epochs=config.min_epochs or 0,
                                        steps_per_epoch=max(steps_per_epoch, 1))


def dev_batches(config: FinetuneConfig, task: str) -> list[dict]:
    """Fixed validation batches for dev token PPL (model selection)."""
    return split_batches(task, "validation", batch_size=config.eval_batch_size, seq_len=config.seq_len,
                         max_batches=config.dev_max_batches)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


@gin.configurable
def finetune_checkpoints(every_seconds: float = 60.0) -> float:
    """How often a finetuning run checkpoints for resume: at its next dev evaluation once this many
    seconds have passed since the last checkpoint (0: at every evaluation). A study's short runs
    then write none, and a killed long run loses at most this much training."""
    if not every_seconds >= 0:
        raise ValueError(f"finetune_checkpoints.every_seconds={every_seconds!r} must be >= 0")
    return float(every_seconds)


def job_mesh() -> Mesh:
    """The mesh a finetuning job runs on: make_mesh's gin bindings (`make_mesh.data = 8`, as a
    pretraining job binds them), or this process's first device when none are bound (a study's
    runs each take one device, and a CPU host with simulated devices still runs on one)."""
    try:
        bound = bool(gin.get_bindings("make_mesh"))
    except (ValueError, KeyError):  # make_mesh has no bindings
        bound = False
    return make_mesh() if bound else make_mesh(devices=jax.local_devices()[:1])


def _train(config: FinetuneConfig, info: CheckpointInfo, workdir: Path, progress: bool,
           mesh: Mesh | None = None) -> tuple[LoopResult, int]:
    """Build the method's model on the checkpoint and finetune it on `mesh` (best params by dev
    PPL), resuming from the run's own checkpoint in workdir/train_state when a killed attempt left
    one; returns the loop's result and the batches per epoch."""
    mesh = mesh if mesh is not None else job_mesh()
    model_config, base_params, _ = load_checkpoint_params(info.workdir, step=info.step)
    if config.from_scratch:  # the checkpoint gave the model config; its weights are replaced by an initialisation
        base_params = base_params_of(Transformer(model_config, rngs=make_rngs(config.seed)))
    spec = config.method_spec
    model = build_model(model_config, base_params, spec, seed=config.seed)
    task = config.data_task(info.vocabulary)
    batches, per_epoch = train_batches(config, task)
    rule = stopping_rule(config, len(batches), per_epoch)
    log.info("finetuning %s (%s) from %s step %d on %s, mesh %s: %s", model_config.name, spec, info.workdir,
             info.step, config.task, dict(mesh.shape), rule)
    metrics = MetricsLog(workdir / METRICS_FILE)
    try:
        return finetune(model, spec, batches, dev_batches(config, task), mesh=mesh,
                        peak_learning_rate=config.peak_learning_rate,
                        final_learning_fraction=config.final_learning_fraction,
                        parameter_scale=config.use_parameter_scale, eval_every_steps=config.eval_every_steps,
                        stopping=rule, seed=config.seed, checkpoint_dir=workdir / TRAIN_STATE_DIR,
                        identity=identity(config, workdir), checkpoint_every_seconds=finetune_checkpoints(),
                        progress=progress, log_fn=metrics), per_epoch
    finally:
        metrics.close()


def _save_finetuned(loop: LoopResult, config: FinetuneConfig, info: CheckpointInfo, workdir: Path) -> None:
    """The adapter (LoRA / prompt) or, for FMT, the whole model as an export directory."""
    base = {"workdir": info.workdir, "step": info.step, "tokens_seen": info.tokens_seen}
    if config.method == "fmt":
        export_dir = workdir / EXPORT_DIR
        shutil.rmtree(export_dir, ignore_errors=True)  # an earlier attempt that died after exporting
        export_finetuned(loop.model, export_dir, provenance={**base, "finetune_run": run_key(config.to_dict())})
    else:
        save_adapter(loop.model, config.method_spec, workdir / ADAPTER_FILE, base=base)


def _result(loop: LoopResult, config: FinetuneConfig, info: CheckpointInfo, started: float,
            steps_per_epoch: int, mesh: Mesh | None = None) -> RunResult:
    """Evaluate the selected model (test PPL, decoding metrics, zero-shot) on the run's mesh into a
    validated RunResult."""
    options = dict(batch_size=config.eval_batch_size, seq_len=config.seq_len, max_examples=config.eval_max_examples,
                   decode=config.decode, max_new_tokens=config.max_new_tokens, mesh=mesh)
    task = config.data_task(info.vocabulary)
    test = evaluate_task(loop.model, task, split="test", **options)
    zero_shot = evaluate_zero_shot(loop.model, task, **options)
    counts = count_params(info.model_config)
    log_ppl = float(test["log_ppl"])
    extra = {"test_mean_log_likelihood": test.get("mean_log_likelihood"), "test_target_tokens": test.get("target_tokens"),
             "test_examples": test.get("examples"), "optimizer_state_bytes": loop.optimizer_state_bytes,
             "steps_run": loop.steps_run, "total_steps": loop.total_steps, "stopped_early": int(loop.stopped_early),
             "epochs_seen": loop.steps_run / max(steps_per_epoch, 1), "steps_per_epoch": steps_per_epoch,
             **{f"stop.{reason}": float(loop.stop_reason == reason) for reason in STOP_REASONS},
             "final_train_loss": loop.train_losses[-1], "seconds_per_step": loop.seconds_per_step,
             "checkpoint_step": info.step, "peak_learning_rate": config.peak_learning_rate}
    extra.update({k: v for k, v in test.items() if k not in STANDARD_KEYS})  # learned metrics where installed
    spec = config.method_spec
    result = RunResult(
        task=config.task, model_name=info.model_config.name, total_params=counts["total"],
        non_embedding_params=counts["non_embedding"], pretrain_corpus=info.corpus,
        pretrain_tokens=0 if config.from_scratch else info.tokens_seen,
        method=spec.method, pet_size=spec.pet_size, trainable_params=loop.trainable_params,
        finetune_examples=config.finetune_examples, seed=config.seed, best_step=loop.best_step,
        dev_ppl=loop.best_dev_ppl, test_ppl=math.exp(log_ppl), test_log_ppl=log_ppl,
        bleu=_number(test.get("bleu")), chrf=_number(test.get("chrf")), rouge_l=_number(test.get("rouge_l")),
        zero_shot={k: float(v) for k, v in zero_shot.items() if _number(v) is not None},
        wall_time_s=time.time() - started, code_version=code_version(),
        metric_signatures={k: str(v) for k, v in (test.get("signatures") or {}).items()},
        extra_metrics={k: float(v) for k, v in extra.items() if _number(v) is not None})
    result.to_row()  # validate every field before anything claims the run is finished
    return result


def run_finetune(config: FinetuneConfig, workdir: str | Path, *, progress: bool = True,
                 overwrite: bool = False) -> RunResult:
    """Train (best by dev PPL, early stopping), save the adapter, evaluate and return the RunResult.
    A workdir holding this very run, finished, makes the call a no-op; unfinished, the run resumes
    from its last checkpoint (train_state/); one holding a different run
    is refused (ValueError) unless `overwrite`, which replaces it."""
    workdir = Path(workdir)
    info = config.validate()  # every ValueError before any compute
    if claim_workdir(config, workdir, overwrite=overwrite):
        return RunResult(**json.loads((workdir / RESULT_FILE).read_text(encoding="utf-8"))["result"])
    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    recorded = identity(config, workdir)
    write_json_atomic(workdir / CONFIG_FILE, recorded, sort_keys=True)
    mesh = job_mesh()
    loop, per_epoch = _train(config, info, workdir, progress, mesh)
    _save_finetuned(loop, config, info, workdir)
    result = _result(loop, config, info, started, per_epoch, mesh)
    write_json_atomic(workdir / RESULT_FILE, {"run_key": run_key(recorded), "config": recorded,
                                              "result": dataclasses.asdict(result), "history": loop.history,
                                              "stop_reason": loop.stop_reason},
                      sort_keys=True)
    shutil.rmtree(workdir / TRAIN_STATE_DIR, ignore_errors=True)  # only for resuming; the result is final now
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.run", description=__doc__.split("\n")[0])
    add_gin_flags(parser)
    parser.add_argument("--workdir", required=True, help="output directory of this run")
    parser.add_argument("--export_merged", default=None, help="also export the LoRA model merged to this path")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run the workdir holds when it is a different one (refused otherwise)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    if not args.gin_file:
        parser.error("give at least one --gin_file (e.g. gin_configs/finetune/lora.gin)")
    workdir = Path(args.workdir)
    started = False  # the gin files are written only once this run owns the workdir
    try:
        parse_gin(args.gin_file, args.gin_param)
        config = FinetuneConfig()
        if args.export_merged and config.method != "lora":  # refuse before training, not after
            raise ValueError(f"--export_merged is for LoRA runs; this run's method is {config.method!r} "
                             "(an FMT run exports its whole model to model/ already)")
        config.validate()
        finished = claim_workdir(config, workdir, overwrite=args.overwrite)
        if not finished:
            started = True
            workdir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(workdir / "config.gin", gin.config_str())
        result = run_finetune(config, workdir, progress=not args.no_progress)
        if args.export_merged:
            export_finetuned(load_adapter_model(workdir / ADAPTER_FILE), args.export_merged)
    except (ValueError, SyntaxError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    finally:
        if started and workdir.is_dir():
            write_text_atomic(workdir / "operative_config.gin", gin.operative_config_str())
    print(json.dumps(dataclasses.asdict(result), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
