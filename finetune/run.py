"""Finetuning entry point: one run from a pretraining checkpoint to a results-store row.

  python -m finetune.run --gin_file=gin_configs/finetune/lora.gin \
      --gin_param='FinetuneConfig.pretrain_workdir="runs/smoke"' \
      --gin_param='FinetuneConfig.checkpoint_step=16' --workdir=runs/ft_lora [--study_dir=DIR]

The workdir gets config.gin / operative_config.gin (CLI), config.json, metrics.jsonl (one line
per step, dev PPL every K steps), the adapter (LoRA A/B or the prompt: adapter.safetensors; FMT:
the whole model in model/, train.export's format) and result.json (written last, atomically).
With a results store, a finished configuration is a no-op and a run that dies leaves no done row.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "model"

log = logging.getLogger(__name__)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def train_batches(config: Any) -> list[dict]:
    """The run's training batches, in order: `epochs` passes over the Df subset, or exactly
    `num_steps` batches (as many passes as that takes). Built in numpy from cached ids
    (data.rows): a study's many runs skip a tf.data pipeline each."""
    from data.rows import finetune_batches

    def passes(epochs: int) -> list[dict]:
        return list(finetune_batches(config.task, finetune_examples=config.finetune_examples,
                                     subset_seed=config.subset_seed, batch_size=config.batch_size,
                                     seq_len=config.seq_len, epochs=epochs, seed=config.seed))

    if config.epochs is not None:
        return passes(config.epochs)
    one = passes(1)
    return passes(math.ceil(config.num_steps / max(len(one), 1)))[: config.num_steps]


def dev_batches(config: Any) -> list[dict]:
    """Fixed validation batches for dev token PPL (model selection)."""
    from data.rows import split_batches
    return split_batches(config.task, "validation", batch_size=config.eval_batch_size, seq_len=config.seq_len,
                         max_batches=config.dev_max_batches)


def evaluate_model(model: Any, config: Any) -> tuple[dict, dict[str, float]]:
    """(test metrics, zero-shot metrics) of the selected model, by eval.evaluate."""
    from eval.evaluate import evaluate_task, evaluate_zero_shot

    kwargs = dict(batch_size=config.eval_batch_size, seq_len=config.seq_len, max_examples=config.eval_max_examples,
                  decode=config.decode, max_new_tokens=config.max_new_tokens)
    return evaluate_task(model, config.task, split="test", **kwargs), evaluate_zero_shot(model, config.task, **kwargs)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def result_from_row(row: dict) -> Any:
    """A RunResult back from a results-store row (what a no-op re-run returns)."""
    from finetune.results import RESULT_COLUMNS, RunResult

    fields = {name: row[name] for name, _ in RESULT_COLUMNS if not name.endswith("_json")}
    return RunResult(**fields, zero_shot=json.loads(row["zero_shot_json"] or "{}"),
                     extra_metrics=json.loads(row["extra_metrics_json"] or "{}"),
                     metric_signatures=json.loads(row["metric_signatures_json"] or "{}"))


class _MetricsFile:
    """metrics.jsonl of this attempt (started fresh: a rerun trains from scratch)."""

    def __init__(self, path: Path):
        self.handle = open(path, "w", encoding="utf-8")

    def __call__(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _train_and_evaluate(config: Any, info: Any, workdir: Path, progress: bool) -> Any:
    from finetune.adapters import export_model, save_adapter
    from finetune.loop import finetune_loop
    from finetune.methods import MethodSpec, build_model
    from finetune.results import RunResult, code_version, run_key
    from model.sizes import count_params
    from train.export import load_checkpoint_params

    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    _write_atomic(workdir / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True))
    model_config, base_params, _ = load_checkpoint_params(info.workdir, step=info.step)
    spec = MethodSpec.from_config(config)
    model = build_model(model_config, base_params, spec, seed=config.seed)
    batches, dev = train_batches(config), dev_batches(config)
    log.info("finetuning %s (%s) from %s step %d on %s: %d steps", model_config.name, spec, info.workdir,
             info.step, config.task, len(batches))
    metrics = _MetricsFile(workdir / METRICS_FILE)
    try:
        loop = finetune_loop(model, spec, batches, dev, peak_learning_rate=config.peak_learning_rate,
                             final_learning_fraction=config.final_learning_fraction,
                             parameter_scale=config.use_parameter_scale,
                             eval_every_steps=config.eval_every_steps, patience=config.patience,
                             seed=config.seed, progress=progress, log=metrics)
    finally:
        metrics.close()
    base = {"workdir": info.workdir, "step": info.step, "tokens_seen": info.tokens_seen}
    if spec.method == "fmt":
        export_dir = workdir / EXPORT_DIR
        if export_dir.exists():  # an earlier attempt that died after exporting
            import shutil
            shutil.rmtree(export_dir)
        export_model(loop.model, export_dir, provenance={**base, "finetune_run": run_key(config.to_dict())})
    else:
        save_adapter(loop.model, spec, workdir / "adapter.safetensors", base=base)
    test, zero_shot = evaluate_model(loop.model, config)
    counts = count_params(model_config)
    log_ppl = float(test["log_ppl"])
    extra = {"test_mean_log_likelihood": test.get("mean_log_likelihood"), "test_target_tokens": test.get("target_tokens"),
             "test_examples": test.get("examples"), "optimizer_state_bytes": loop.optimizer_state_bytes,
             "steps_run": loop.steps_run, "total_steps": loop.total_steps, "stopped_early": int(loop.stopped_early),
             "final_train_loss": loop.train_losses[-1], "seconds_per_step": loop.seconds_per_step,
             "checkpoint_step": info.step, "peak_learning_rate": config.peak_learning_rate}
    standard = {"ppl", "log_ppl", "mean_log_likelihood", "target_tokens", "bleu", "chrf", "rouge_l", "signatures", "examples"}
    extra.update({k: v for k, v in test.items() if k not in standard})  # learned metrics where installed
    extra = {k: float(v) for k, v in extra.items() if _number(v) is not None}
    result = RunResult(
        task=config.task, model_name=model_config.name, total_params=counts["total"],
        non_embedding_params=counts["non_embedding"], pretrain_corpus=info.corpus, pretrain_tokens=info.tokens_seen,
        method=spec.method, pet_size=spec.pet_size, trainable_params=loop.trainable_params,
        finetune_examples=config.finetune_examples, seed=config.seed, best_step=loop.best_step,
        dev_ppl=loop.best_dev_ppl, test_ppl=math.exp(log_ppl), test_log_ppl=log_ppl,
        bleu=_number(test.get("bleu")), chrf=_number(test.get("chrf")), rouge_l=_number(test.get("rouge_l")),
        zero_shot={k: float(v) for k, v in zero_shot.items() if _number(v) is not None},
        wall_time_s=time.time() - started, code_version=code_version(),
        metric_signatures={k: str(v) for k, v in (test.get("signatures") or {}).items()}, extra_metrics=extra)
    result.to_row()  # validate every field before anything claims the run is finished
    record = {"run_key": run_key(config.to_dict()), "config": config.to_dict(), "result": dataclasses.asdict(result),
              "history": loop.history}
    _write_atomic(workdir / RESULT_FILE, json.dumps(record, indent=2, sort_keys=True))
    return result


def _finished_in_workdir(config: Any, workdir: Path) -> Any | None:
    """The RunResult of result.json when it was written for this very config."""
    from finetune.results import RunResult, run_key

    path = workdir / RESULT_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("run_key") != run_key(config.to_dict()):
        return None
    return RunResult(**record["result"])


def run_finetune(config: Any, workdir: str | os.PathLike, *, store: Any = None, progress: bool = True) -> Any:
    """Train (best by dev PPL, early stopping), evaluate, save the adapter and return the RunResult.

    With `store` (finetune.results.ResultsStore) the run is claimed first and its row written by
    `finish` in one transaction; a finished config returns the stored row without computing, and
    an exception marks the run failed (no done row) and is re-raised. Without a store, a
    result.json of the same config in `workdir` makes the call a no-op.
    """
    workdir = Path(workdir)
    info = config.validate()  # every ValueError before any compute or claim
    key = config.to_dict()
    if store is None:
        done = _finished_in_workdir(config, workdir)
        return done if done is not None else _train_and_evaluate(config, info, workdir, progress)
    if store.has_result(key):
        log.info("run already finished in %s: nothing to do", store.path)
        return result_from_row(store.get(key))
    if not store.claim(key):
        row = store.get(key)
        if row is not None and row["status"] == "done":
            return result_from_row(row)
        raise RuntimeError(f"run {row['run_key'][:12] if row else '?'} is being run by worker "
                           f"{row.get('worker_id') if row else '?'}; not starting it twice")
    try:
        with store.keep_alive(key):
            result = _train_and_evaluate(config, info, workdir, progress)
        store.finish(key, result)
        return result
    except Exception:
        store.fail(key, traceback.format_exc())
        raise
    except BaseException:  # Ctrl-C and friends: give the claim back for the next attempt
        store.release(key)
        raise


def parse_gin(gin_files: Iterable[str], gin_params: Iterable[str]) -> None:
    """Parse gin files (paths relative to cwd or the repo root) and bindings."""
    import gin

    import finetune.config  # noqa: F401  (registers FinetuneConfig)
    import train.optimizer  # noqa: F401  (make_optimizer settings)
    gin.add_config_file_search_path(str(REPO_ROOT))
    # Not finalized (locked): the data pipeline registers its own configurables on first import.
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_params), finalize_config=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.run", description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_param", action="append", default=[], help="gin binding (repeatable)")
    parser.add_argument("--workdir", required=True, help="output directory of this run")
    parser.add_argument("--study_dir", default=None, help="results store directory (one row per run)")
    parser.add_argument("--export_merged", default=None, help="also export the LoRA model merged to this path")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    if not args.gin_file:
        parser.error("give at least one --gin_file (e.g. gin_configs/finetune/lora.gin)")
    import gin

    from finetune.config import FinetuneConfig
    from finetune.results import ResultsStore

    workdir = Path(args.workdir)
    try:
        parse_gin(args.gin_file, args.gin_param)
        config = FinetuneConfig()
        if args.export_merged and config.method != "lora":  # refuse before training, not after
            raise ValueError(f"--export_merged is for LoRA runs; this run's method is {config.method!r} "
                             "(an FMT run exports its whole model to model/ already)")
        workdir.mkdir(parents=True, exist_ok=True)
        _write_atomic(workdir / "config.gin", gin.config_str())
        store = ResultsStore(args.study_dir) if args.study_dir else None
        result = run_finetune(config, workdir, store=store, progress=not args.no_progress)
        if args.export_merged:
            from finetune.adapters import export_model, load_adapter_model
            export_model(load_adapter_model(workdir / "adapter.safetensors"), args.export_merged)
    except (ValueError, SyntaxError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if workdir.is_dir():
            _write_atomic(workdir / "operative_config.gin", gin.operative_config_str())
    print(json.dumps(dataclasses.asdict(result), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
