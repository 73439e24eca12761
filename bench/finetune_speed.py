"""Finetuning cost per method: step time, trainable parameters and optimizer-state bytes for
FMT vs LoRA vs prompt tuning on one model size (random weights and tokens: cost, not quality).

  python bench/finetune_speed.py [--size=m] [--steps=10] [--batch_size=8] [--seq_len=128]
      [--lora_rank=8] [--prompt_length=50] [--json]

Steps run the exact jitted step of finetune.training (train.step on a one-device mesh, Adafactor on
the trainable subset only).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def random_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict:
    """A prefix-LM batch: first half bidirectional inputs, loss on the second half."""
    import numpy as np
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab_size, (batch_size, seq_len)).astype(np.int32)
    prefix = np.zeros((batch_size, seq_len), np.int32)
    prefix[:, : seq_len // 2] = 1
    return {"decoder_input_tokens": np.roll(tokens, 1, axis=1), "decoder_target_tokens": tokens,
            "decoder_loss_weights": (1 - prefix).astype(np.float32), "decoder_causal_attention": prefix,
            "decoder_segment_ids": np.ones((batch_size, seq_len), np.int32),
            "decoder_positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1))}


def measure(size: str, method: str, *, steps: int, batch_size: int, seq_len: int, lora_rank: int,
            prompt_length: int) -> dict:
    import numpy as np
    import jax
    from flax import nnx

    from finetune.config import DEFAULT_LEARNING_RATES, DEFAULT_PARAMETER_SCALE
    from finetune.costs import tree_bytes, tree_size
    from finetune.training import TrainConfig, finetune_program, model_inputs
    from model.methods import MethodSpec, base_params_of, build_model, split_trainable
    from model.sharding import shard_rows
    from model.sizes import get_config
    from model.transformer import Transformer
    from train.optimizer import with_schedule
    from train.partitioning import make_mesh

    config = get_config(size)
    spec = MethodSpec(method, lora_rank=lora_rank if method == "lora" else 0,
                      prompt_length=prompt_length if method == "prompt" else 0)
    base = base_params_of(Transformer(config, rngs=nnx.Rngs(0)))
    model = build_model(config, base, spec, seed=0)
    mesh = make_mesh(devices=jax.local_devices()[:1])
    device = jax.local_devices()[0]
    program = finetune_program(config, spec, mesh, TrainConfig(batch_size=batch_size, seq_len=seq_len, num_steps=1),
                               parameter_scale=DEFAULT_PARAMETER_SCALE[method])
    parts = program.train.parts
    _, params, rest = split_trainable(model, method)
    params = jax.device_put(params, parts.param_shardings)
    rest = jax.device_put(rest, parts.rest_shardings)
    lr = DEFAULT_LEARNING_RATES[method]
    opt_state = with_schedule(jax.jit(program.train.optimizer.init, out_shardings=parts.state_shardings["opt_state"])(
        params), peak_learning_rate=lr, final_learning_rate=lr / 10, decay_steps=steps + 1)
    state = {"params": params, "opt_state": opt_state}
    batch = shard_rows(model_inputs(random_batch(batch_size, seq_len, config.vocab_size)), mesh)
    started = time.perf_counter()
    state, metrics = program.train.step_fn(state, rest, batch, np.int32(0))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - started
    times = []
    for step in range(1, steps + 1):
        started = time.perf_counter()
        state, metrics = program.train.step_fn(state, rest, batch, np.int32(step))
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - started)
    params, opt_state = state["params"], state["opt_state"]
    total = tree_size(base)
    return {"size": size, "method": method, "pet_size": spec.pet_size, "trainable_params": tree_size(params),
            "base_params": total, "trainable_fraction": tree_size(params) / total,
            "optimizer_state_bytes": tree_bytes(opt_state), "trainable_bytes": tree_bytes(params),
            "step_s_median": statistics.median(times), "step_s_min": min(times), "first_step_s": compile_s,
            "tokens_per_s": batch_size * seq_len / statistics.median(times), "batch": [batch_size, seq_len],
            "final_loss": float(metrics["loss"]), "device": str(device.platform)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="m")
    parser.add_argument("--methods", default="fmt,lora,prompt")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--prompt_length", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="one JSON object per method")
    args = parser.parse_args(argv)
    rows = [measure(args.size, method, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                    lora_rank=args.lora_rank, prompt_length=args.prompt_length)
            for method in args.methods.split(",")]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    fmt = next((r for r in rows if r["method"] == "fmt"), None)
    print(f"size {args.size}, batch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed steps, "
          f"device {rows[0]['device']}")
    print(f"{'method':<8}{'size':>6}{'trainable':>12}{'% of base':>11}{'opt state':>12}{'vs FMT':>9}"
          f"{'step ms':>10}{'tokens/s':>11}{'1st step s':>12}")
    for r in rows:
        ratio = f"{r['optimizer_state_bytes'] / fmt['optimizer_state_bytes']:.2%}" if fmt else "-"
        print(f"{r['method']:<8}{r['pet_size']:>6}{r['trainable_params']:>12,}{r['trainable_fraction']:>11.3%}"
              f"{r['optimizer_state_bytes']:>12,}{ratio:>9}{1000 * r['step_s_median']:>10.1f}"
              f"{r['tokens_per_s']:>11,.0f}{r['first_step_s']:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
