"""Training metrics: metrics.jsonl + TensorBoard, model FLOPs per token, and the float32
matmul peak of this machine (measured, the denominator of MFU)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from tensorboardX import SummaryWriter

from checkpoints.atomic import write_text_atomic


def training_flops_per_token(*, num_layers: int, d_model: int, num_heads: int, head_dim: int,
                             non_embedding_params: int, vocab_size: int, seq_len: int) -> float:
    """PaLM-style model FLOPs (forward + backward) per token: 6 x (non-embedding params +
    the vocab projection) + 12 x layers x heads x head_dim x seq_len for attention scores."""
    matmul_params = non_embedding_params + vocab_size * d_model
    return 6.0 * matmul_params + 12.0 * num_layers * num_heads * head_dim * seq_len


def flops_per_token_from_config(config: Mapping[str, Any], non_embedding_params: int, seq_len: int) -> float:
    """Same, reading a ModelConfig dict (to_dict())."""
    return training_flops_per_token(
        num_layers=int(config["num_layers"]), d_model=int(config["d_model"]),
        num_heads=int(config["num_heads"]), head_dim=int(config["head_dim"]),
        non_embedding_params=non_embedding_params, vocab_size=int(config["vocab_size"]), seq_len=seq_len)


def measure_matmul_peak(size: int = 1024, repeats: int = 5, devices: list | None = None) -> float:
    """Sustained float32 FLOP/s of a size x size matmul on each device (summed over devices),
    best of `repeats`: the machine's practical peak for MFU."""
    devices = devices or jax.local_devices()
    device = devices[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32) / size, device)
    b = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(lambda x, y: (x @ y) @ y)
    matmul(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * 2 * size**3 / best * len(devices)


class MetricsWriter:
    """Appends one JSON object per record to metrics.jsonl and mirrors scalars to
    TensorBoard. On resume, records after the restored step are dropped first so the file
    holds exactly one history."""

    def __init__(self, workdir: str | Path, *, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self.truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            # on resume, purge_step drops events a killed run wrote after the restored step
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def truncate_after(self, step: int) -> None:
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        write_text_atomic(self.path, "".join(kept))

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v)
                                      for k, v in record.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
