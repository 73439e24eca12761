"""Evaluate any pretrained or finetuned checkpoint on a task and print the metrics as JSON.

  python -m eval.run --checkpoint=PRETRAIN_WORKDIR [--step=N | --tokens=T] --task=mt_en_de
  python -m eval.run --checkpoint=EXPORT_DIR --task=mt_en_de --adapter=FINETUNE_ADAPTER_DIR --zero_shot

--checkpoint is a training workdir (checkpoints/, latest/; default: its last checkpoint) or an
export directory (`python -m checkpoints export`: config.json + params/). --adapter loads a
finetuning adapter (LoRA / soft prompt) onto it, so a base model's zero-shot quality and a
finetuned one's are measured by the same code.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from flax import nnx

from checkpoints.adapters import load_adapter
from checkpoints.atomic import write_text_atomic
from checkpoints.exports import CONFIG_FILE, PARAMS_DIR, is_export, load_exported_model
from checkpoints.load import load_checkpoint_model
from checkpoints.store import INTERMEDIATE_DIR, LATEST_DIR, last_checkpoint
from eval import evaluate
from model.sharding import data_parallel


def load_model(checkpoint: str | Path, *, step: int | None = None,
               tokens: int | None = None) -> tuple[nnx.Module, dict[str, Any]]:
    """(model, provenance) from a training workdir (by step / tokens, default last) or an export."""
    path = Path(checkpoint)
    if not path.exists():
        raise ValueError(f"--checkpoint {checkpoint} does not exist; give a training workdir or an export directory")
    if is_export(path):
        if step is not None or tokens is not None:
            raise ValueError(f"--checkpoint {checkpoint} is an export (one checkpoint): drop --step/--tokens")
        return load_exported_model(path), {"checkpoint": str(path), "kind": "export"}
    if (path / INTERMEDIATE_DIR).is_dir() or (path / LATEST_DIR).is_dir():
        if step is None and tokens is None:
            step = last_checkpoint(path)["step"]
        model, meta = load_checkpoint_model(path, step=step, tokens=tokens)
        return model, {"checkpoint": str(path), "kind": "workdir", "step": meta.get("step"),
                       "tokens_seen": meta.get("tokens_seen"),
                       "pair": (meta.get("data_position") or {}).get("pair")}
    raise ValueError(
        f"--checkpoint {checkpoint} is neither a training workdir ({INTERMEDIATE_DIR}/ or {LATEST_DIR}/) nor an "
        f"export directory ({CONFIG_FILE} + {PARAMS_DIR}/)"
    )


def with_adapter(model: nnx.Module, adapter_dir: str | Path) -> nnx.Module:
    """The base model with a finetuning run's adapter (LoRA / soft prompt) on top."""
    if not Path(adapter_dir).is_dir():
        raise ValueError(f"--adapter {adapter_dir} is not a directory (a finetuning run's saved adapter)")
    return load_adapter(model, adapter_dir)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, check, evaluate; the JSON-able report."""
    evaluate.check_task(args.task)
    model, provenance = load_model(args.checkpoint, step=args.step, tokens=args.tokens)
    evaluate.check_vocabulary(model, args.task, pair=provenance.get("pair"))
    if args.adapter:
        model = with_adapter(model, args.adapter)
        provenance["adapter"] = str(args.adapter)
    options = dict(batch_size=args.batch_size, seq_len=args.seq_len, max_examples=args.max_examples,
                   decode=not args.no_decode, max_new_tokens=args.max_new_tokens)
    if args.learned_metrics is not None:
        options["learned_metrics"] = [m for m in args.learned_metrics.split(",") if m]
    report: dict[str, Any] = {**provenance, "task": args.task, "split": args.split, **options}
    mesh = data_parallel(model) if args.data_parallel else None
    report["devices"] = mesh.size if mesh is not None else 1
    report["metrics"] = evaluate.evaluate_task(model, args.task, split=args.split, mesh=mesh, **options)
    if args.zero_shot:
        report["zero_shot"] = evaluate.evaluate_zero_shot(model, args.task, mesh=mesh, **options)
    return _finite(report)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="training workdir or export directory")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="checkpoint step (workdir only; default: the last)")
    which.add_argument("--tokens", type=int, help="checkpoint by tokens seen (workdir only)")
    parser.add_argument("--task", required=True, help="e.g. mt_en_de, mt_de_en, summarize_en_de")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--adapter", default=None, help="finetuning adapter directory (LoRA / prompt)")
    parser.add_argument("--zero_shot", action="store_true", help="also evaluate the zero-shot targets")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--no_decode", action="store_true", help="PPL only (no BLEU/chrF/ROUGE-L)")
    parser.add_argument("--data_parallel", action="store_true",
                        help="replicate the model on this host's devices and split the rows over them")
    parser.add_argument("--learned_metrics", default=None, help="comma list, e.g. comet,bleurt ('' = none)")
    parser.add_argument("--output", default=None, help="also write the JSON to this file (atomically)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only restore notices
    try:
        report = run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.output:
        write_text_atomic(args.output, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
