"""Pretraining entry point.

  python -m train.pretrain --gin_file=gin_configs/pretrain/m_aligned.gin \
      [--gin_param='TrainConfig.token_budget=1000000'] --workdir=runs/m_aligned

The gin file includes its model (gin_configs/models/<size>.gin, which defines MODEL) and binds
`pretrain.model = %MODEL`. The workdir gets config.gin (what was asked), operative_config.gin
(what was used), checkpoints/ (intermediate, kept), latest/ (rolling, for resume),
tensorboard/, metrics.jsonl and summary.json. Re-running the same command resumes exactly.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import gin
import jax

from checkpoints.atomic import write_text_atomic
from model.config import ModelConfig
from model.sizes import count_params
from model.methods import model_factory
from train import data_source, optimizer, synthetic  # noqa: F401  (gin configurables the job files bind)
from train.gin_setup import add_gin_flags, one_line, parse_gin
from train.metrics import flops_per_token_from_config
from train.partitioning import make_mesh
from train.trainer import RunInputs, TrainConfig, TrainingDivergedError, train
from train.workdir_lock import hold_workdir


@gin.configurable
def pretrain(
    workdir: str | Path,
    model: ModelConfig = gin.REQUIRED,
    batch_source: Callable[..., Any] | None = None,
    dev_batches: int = 8,
    distributed: bool = False,
    progress: bool = True,
    expected_model: str | None = None,
    on_start: Callable[[], None] | None = None,
) -> dict:
    """Build everything from gin, check it (before any compute), then train in `workdir`.

    batch_source: a gin reference, e.g. `@CorpusBatches` (the real UL2 corpus) or
    `@SyntheticBatches` (tests/benchmarks only). It is required: no silent default.
    expected_model: the model name the caller expects the gin files to configure (the study
    checks that each size's pretraining file builds that size).
    on_start: called once the workdir is accepted, before anything is written (train.trainer.train).
    """
    if distributed:
        jax.distributed.initialize()
    if not isinstance(model, ModelConfig):
        raise ValueError(f"pretrain.model must be a ModelConfig (bind `pretrain.model = %MODEL` after including "
                         f"gin_configs/models/<size>.gin), got {model!r}")
    if expected_model is not None and model.name != expected_model:
        raise ValueError(f"the gin files configure model {model.name!r}, expected {expected_model!r}; "
                         "include the size's gin_configs/models/<size>.gin")
    if batch_source is None:
        raise ValueError("no batch source configured: bind `pretrain.batch_source = @CorpusBatches` "
                         "(the UL2 corpus; see gin_configs/pretrain/*.gin) or `@SyntheticBatches` (tests only)")
    config = TrainConfig()
    mesh = make_mesh()
    config.validate(mesh, max_len=model.max_len)
    source = batch_source(batch_size=config.batch_size, seq_len=config.seq_len, seed=config.seed,
                          shard_index=jax.process_index(), num_shards=jax.process_count())
    if source.vocab_size != model.vocab_size:
        raise ValueError(f"model {model.name!r} has vocab_size={model.vocab_size} but the data's vocabulary has "
                         f"{source.vocab_size} ids; bind model.config.ModelConfig.vocab_size = {source.vocab_size}")
    counts = count_params(model)
    inputs = RunInputs(
        model_factory=model_factory(model),
        model_config=model.to_dict(),
        flops_per_token=flops_per_token_from_config(model.to_dict(), counts["non_embedding"], config.seq_len),
        batches=source,
        dev_batches=source.dev_batches(dev_batches) if dev_batches else (),
        data_description=source.description,
    )
    logging.info("model %s: %s params (%s non-embedding), mesh %s, %d steps",
                 model.name, f"{counts['total']:,}", f"{counts['non_embedding']:,}", dict(mesh.shape),
                 config.total_steps())
    return train(config, inputs, mesh, workdir, progress=progress, on_start=on_start)


def configured_model() -> ModelConfig:
    """The ModelConfig the parsed gin files bind to `pretrain.model` (for tools that inspect a job)."""
    return gin.query_parameter("pretrain.model").scoped_configurable_fn()


def run_job(gin_files: list[str], gin_params: list[str], workdir: Path, **kwargs: Any) -> dict:
    """Parse gin, hold the workdir (one job at a time), record what was asked and what was used
    next to the outputs, pretrain."""
    parse_gin(gin_files, gin_params)
    asked = gin.config_str()
    started = []

    def record_config() -> None:  # once the trainer accepted the workdir: a refused one keeps its files
        started.append(True)
        write_text_atomic(workdir / "config.gin", asked)

    with hold_workdir(workdir, "pretraining"):
        if not (workdir / "config.gin").exists():  # a new workdir records what was asked even if it fails
            write_text_atomic(workdir / "config.gin", asked)
        try:
            return pretrain(workdir, on_start=record_config, **kwargs)
        finally:
            if started:
                write_text_atomic(workdir / "operative_config.gin", gin.operative_config_str())


def _format(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.pretrain", description=__doc__.split("\n")[0])
    add_gin_flags(parser)
    parser.add_argument("--workdir", required=True, help="output directory (resumes if it has checkpoints)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if not args.gin_file:
        parser.error("give at least one --gin_file (e.g. gin_configs/pretrain/smoke.gin)")
    try:
        summary = run_job(args.gin_file, args.gin_param, Path(args.workdir), progress=not args.no_progress)
    except (ValueError, SyntaxError) as error:  # bad config values / gin syntax
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 3
    mfu = summary["mfu"] and 100 * summary["mfu"]
    print(f"done: step {summary['final_step']}, {summary['tokens_seen']:,} tokens, "
          f"train loss {_format(summary['final_train_loss'], '.4f')}, dev loss {_format(summary['final_dev_loss'], '.4f')}, "
          f"{_format(summary['tokens_per_s'], ',.0f')} tokens/s, MFU {_format(mfu, '.1f')}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
