"""Throughput of the UL2 pretraining and MT finetuning pipelines vs. the demo models' appetite.

Measures (on this machine): first-batch latency, steady-state batches/s, examples/s (packed
segments) and real tokens/s (non-padding) of `pretrain_batches` and `finetune_batches`, the cost
of resuming at a later step, and, when the `model` package is importable, tokens/s that one
jitted forward+backward step of each demo size consumes (the pipeline must be faster).

  python bench/data_throughput.py                      # committed corpora + vocab when present
  python bench/data_throughput.py --source stdlib      # stdlib docstrings + a temp vocab
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

STDLIB_MODULES = ("json", "collections", "functools", "itertools", "argparse", "logging", "pathlib",
                  "subprocess", "threading", "email", "unittest", "typing", "dataclasses", "re", "os",
                  "shutil", "tarfile", "zipfile", "csv", "decimal", "fractions", "statistics", "asyncio",
                  "http.client", "urllib.request", "xml.etree.ElementTree", "sqlite3", "datetime")


def stdlib_texts() -> list[str]:
    texts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            for _, obj in sorted(vars(importlib.import_module(name)).items()):
                if inspect.isfunction(obj) or inspect.isclass(obj):
                    doc = inspect.getdoc(obj) or ""
                    texts.extend(p.replace("\n", " ") for p in doc.split("\n\n") if len(p) > 40)
    return list(dict.fromkeys(texts))


def setup_sources(source: str) -> tuple[str, str, str]:
    """(pretraining corpus or task name, pair, MT task name) for the chosen source."""
    import seqio

    from data import tasks, vocab

    have_corpora = vocab.vocab_path("en-de").exists()
    if source == "corpora" or (source == "auto" and have_corpora):
        return "aligned", "en-de", "mt_en_de"
    texts = stdlib_texts()
    path = vocab.train_sentencepiece(
        texts, os.path.join(tempfile.mkdtemp(), "bench.model"), vocab_size=2100, extra_ids=100
    )
    vocabulary = seqio.SentencePieceVocabulary(str(path), extra_ids=100)
    tasks.register_ul2_tasks("bench_ul2", lambda: texts, vocabulary)
    tasks.register_ul2_mixture("bench_ul2")

    def mt_examples(split):
        chosen = texts[{"train": 0, "validation": 1, "test": 2}[split]::3]
        return [{"inputs": "translate English to German: " + t, "targets": " ".join(t.split()[::-1]),
                 "source": t, "reference": "", "stratum": ""} for t in chosen]

    tasks.register_finetune_task("bench_mt", mt_examples, vocabulary)
    return "bench_ul2", "en-de", "bench_mt"


def measure(make_iterator, steps: int) -> dict[str, float]:
    start = time.perf_counter()
    iterator = make_iterator()
    first = next(iterator)
    latency = time.perf_counter() - start
    segments = tokens = cells = 0
    start = time.perf_counter()
    done = 0
    for batch in iterator:
        seg = batch["decoder_segment_ids"]
        segments += sum(len(np.unique(row[row > 0])) for row in seg)
        tokens += int((seg > 0).sum())
        cells += seg.size
        done += 1
        if done == steps:
            break
    elapsed = time.perf_counter() - start
    return {
        "first_batch_s": round(latency, 2),
        "batches_per_s": round(done / elapsed, 1),
        "examples_per_s": round(segments / elapsed, 1),
        "tokens_per_s": round(tokens / elapsed),
        "fill_fraction": round(tokens / max(cells, 1), 3),
        "batch_shape": list(first["decoder_target_tokens"].shape),
    }


def model_consumption(sizes: list[str], batch, vocab_size: int) -> dict[str, float]:
    """Tokens/s of one jitted forward+backward step of each demo size (needs `model`)."""
    try:
        import jax
        import optax
        from flax import nnx

        from model import sizes as model_sizes
        from model.transformer import Transformer
    except ImportError as error:  # the model package lands separately
        return {"skipped": f"model package not importable ({error})"}
    out = {}
    for size in sizes:
        config = model_sizes.get_config(size, vocab_size=vocab_size)
        seq_len = min(batch["decoder_input_tokens"].shape[1], config.max_len)
        arrays = {k: jax.numpy.asarray(v[:, :seq_len]) for k, v in batch.items()}
        model = Transformer(config, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)

        @jax.jit
        def step(params, arrays):
            def loss_fn(params):
                logits = nnx.merge(graphdef, params)(
                    arrays["decoder_input_tokens"], segment_ids=arrays["decoder_segment_ids"],
                    positions=arrays["decoder_positions"], causal_attention=arrays["decoder_causal_attention"])
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, arrays["decoder_target_tokens"])
                return (losses * arrays["decoder_loss_weights"]).sum()
            return jax.grad(loss_fn)(params)

        jax.block_until_ready(step(params, arrays))
        start, reps = time.perf_counter(), 5
        for _ in range(reps):
            jax.block_until_ready(step(params, arrays))
        elapsed = (time.perf_counter() - start) / reps
        out[size] = round(arrays["decoder_segment_ids"].size / elapsed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["auto", "corpora", "stdlib"], default="auto")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--resume_step", type=int, default=1000)
    parser.add_argument("--model_sizes", default="xs,s,m")
    args = parser.parse_args()

    from data import pipeline

    corpus, pair, mt_task = setup_sources(args.source)
    common = dict(batch_size=args.batch_size, seq_len=args.seq_len)
    results = {"source": corpus, "batch_size": args.batch_size, "seq_len": args.seq_len}
    results["ul2_pretrain"] = measure(
        lambda: pipeline.pretrain_batches(corpus, pair, seed=0, **common), args.steps)
    start = time.perf_counter()
    next(pipeline.pretrain_batches(corpus, pair, seed=0, start_step=args.resume_step, **common))
    results["ul2_resume"] = {"start_step": args.resume_step,
                             "first_batch_s": round(time.perf_counter() - start, 2)}
    subset = len(pipeline.raw_examples(mt_task, "train"))
    results["mt_finetune"] = measure(lambda: pipeline.finetune_batches(
        mt_task, finetune_examples=subset, subset_seed=0, epochs=100, **common), args.steps)
    batch = next(pipeline.pretrain_batches(corpus, pair, seed=0, **common))
    vocabulary = __import__("seqio").get_mixture_or_task(
        corpus if corpus.startswith("bench") else pipeline.resolve_pretraining(corpus, pair, None)
    ).tasks[0].output_features["targets"].vocabulary
    results["model_train_step_tokens_per_s"] = model_consumption(
        [s for s in args.model_sizes.split(",") if s], batch, max(vocabulary.vocab_size, 8192))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
