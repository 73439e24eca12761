"""Ahead-of-time compilation of a job's train step for a TPU slice, from this CPU host.

  python -m train.compile --gin_file=gin_configs/pretrain/16b.gin [--topology=v5p:8x8x4 | cpu:8]
      [--gin_param=...] [--finetune=fmt|lora|prompt [--lora_rank=4] [--prompt_length=100]] [--json]

The step is the one train.pretrain runs (gin parsed by train.gin_setup, the model of
train.pretrain.configured_model(), TrainConfig(), make_mesh over the target's devices,
train.trainer.build_train_step), lowered with abstract arrays only and compiled by the target's
compiler (libtpu for TPU topologies: the `tpu` extra). It prints the per-chip memory the
compiler plans against the chip's HBM, the matmul FLOPs of the compiled program against the
model's FLOPs, and the compile time. Exit code 0: fits; 1: does not fit; 2: bad input.
Without --topology the job's own slice (`slice_topology.topology` in its gin file) is used.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

import gin
import jax
from jax.experimental import topologies

from data.rows import empty_rows
from model.config import ModelConfig
from model.methods import MethodSpec, model_factory
from model.sharding import data_ways
from model.sizes import count_params
from train.gin_setup import add_gin_flags, parse_gin
from train.hlo_flops import matmul_flops
from train.metrics import flops_per_token_from_config
from train.partitioning import batch_sharding, make_mesh, replicated, slice_topology
from train.pretrain import configured_model
from train.trainer import TrainConfig, build_train_step

GiB = 1024**3
# HBM per chip by TPU generation (the public figures). For v5p the compiler's own limit is
# 95.74 GiB; we judge against 95 GiB, a little margin on the safe side.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# TPU_ACCELERATOR_TYPE for a slice of N chips (only silences libtpu's start-up warnings here).
_ACCELERATOR_TYPE = {"v4": "v4-{cores}", "v5p": "v5p-{cores}", "v5e": "v5litepod-{chips}", "v6e": "v6e-{chips}"}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Target:
    """A compile target: `generation:AxB[xC]` of a TPU slice, or `cpu:N` simulated CPU devices."""
    name: str
    generation: str  # "cpu" or a key of HBM_GIB
    chips: int

    @property
    def hbm_bytes(self) -> int | None:
        return HBM_GIB[self.generation] * GiB if self.generation in HBM_GIB else None


def parse_target(name: str) -> Target:
    """The Target named `name`; ValueError naming it and what is valid."""
    cpu = re.fullmatch(r"cpu:(\d+)", name or "")
    if cpu and int(cpu.group(1)) >= 1:
        return Target(name, "cpu", int(cpu.group(1)))
    tpu = _TOPOLOGY.fullmatch(name or "")
    if tpu:
        return Target(name, tpu.group(1), math.prod(int(d) for d in tpu.group(2).split("x")))
    raise ValueError(f"unknown topology {name!r}; give GENERATION:AxBxC with GENERATION one of "
                     f"{sorted(HBM_GIB)} (e.g. v5p:4x4x8, v5e:2x2) or cpu:N")


def target_devices(target: Target) -> list:
    """The target's devices: a TPU topology from libtpu (no TPU needed), or this host's CPU devices."""
    if target.generation == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < target.chips:
            raise ValueError(f"topology {target.name!r} needs {target.chips} CPU devices, this process has "
                             f"{len(devices)} (run from `python -m train.compile`, which sets them up, or set "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={target.chips})")
        return devices[:target.chips]
    # libtpu on a host without TPUs: let several processes load it, name the slice, skip metadata queries.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", _ACCELERATOR_TYPE[target.generation].format(
        chips=target.chips, cores=2 * target.chips))
    try:
        devices = topologies.get_topology_desc(platform="tpu", topology_name=target.name).devices
    except Exception as error:  # libtpu missing, or a shape it does not know
        raise ValueError(f"cannot get TPU topology {target.name!r}: {str(error).splitlines()[0]} "
                         "(install the `tpu` extra: pip install -e '.[tpu]')") from error
    if len(devices) != target.chips:
        raise ValueError(f"topology {target.name!r} has {len(devices)} devices, expected {target.chips}")
    return list(devices)


def _simulate_cpu_devices(count: int) -> None:
    """Ask for `count` CPU devices; possible only before the CPU backend starts (target_devices
    then says how many there are)."""
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backend is up already (e.g. under pytest's 8 simulated devices)
        pass


def abstract_batch(config: TrainConfig, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of one global batch (data.rows' keys and dtypes), split over data x fsdp."""
    rows = empty_rows(1, config.seq_len)
    sharding = batch_sharding(mesh)
    return {key: jax.ShapeDtypeStruct((config.batch_size, config.seq_len), value.dtype, sharding=sharding)
            for key, value in rows.items()}


def _oom_bytes(message: str) -> int | None:
    """The per-chip bytes an out-of-memory compile error reports ("Used 655.3G of 95.74G hbm")."""
    match = re.search(r"Used ([\d.]+)([KMGT])i?B? of", message)
    if not match:
        return None
    return int(float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)) + 1))


def compile_job(model: ModelConfig, config: TrainConfig, target: Target, spec: MethodSpec) -> dict[str, Any]:
    """Compile the job's train step for `target`: the report (see module docstring) as a dict."""
    mesh = make_mesh(devices=target_devices(target))
    config.validate(mesh, max_len=model.max_len - spec.soft_prompt_length)
    program = build_train_step(config, model_factory(model, spec), mesh, dropout=model.dropout_rate > 0,
                               method=spec.method)
    parts = program.parts
    step = jax.ShapeDtypeStruct((), jax.numpy.int32, sharding=replicated(mesh))
    counts = count_params(model)
    tokens = config.batch_size * config.seq_len
    ways = config.batch_size // data_ways(mesh)
    report: dict[str, Any] = {
        "topology": target.name, "chips": target.chips, "mesh": dict(mesh.shape),
        "device_kind": mesh.devices.flat[0].device_kind, "model": model.name, "params": counts["total"],
        "method": spec.method, "trainable_params": parts.num_params,
        "global_batch": [config.batch_size, config.seq_len], "sequences_per_chip": ways,
        "microbatches": config.microbatches, "remat": config.remat, "attention": config.attention,
        "loss_chunk": config.loss_chunk, "scan_layers": model.scan_layers, "dtype": model.dtype,
        "hbm_bytes": target.hbm_bytes,
        "model_flops": flops_per_token_from_config(model.to_dict(), counts["non_embedding"], config.seq_len) * tokens,
    }
    started, cpu_started = time.perf_counter(), time.process_time()
    lowered = program.step_fn.lower(parts.abstract_state, parts.abstract_rest, abstract_batch(config, mesh), step)
    report["lower_s"] = time.perf_counter() - started  # tracing + lowering; compile_s includes it
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        message = str(error)
        if "RESOURCE_EXHAUSTED" not in message and "memory" not in message.lower():
            raise
        report.update(fits=False, compile_s=time.perf_counter() - started, per_chip_bytes=_oom_bytes(message),
                      compiled_flops=None, error=message.strip().splitlines()[0][:500])
        return report
    # Wall time, and this process's CPU time (all threads): on a shared machine the second says
    # what the compile costs, the first what it took.
    report["compile_s"], report["compile_cpu_s"] = time.perf_counter() - started, time.process_time() - cpu_started
    memory = compiled.memory_analysis()
    sizes = {"arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
             "temporaries": memory.temp_size_in_bytes, "aliased": memory.alias_size_in_bytes,
             "code": memory.generated_code_size_in_bytes}
    per_chip = sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"] + sizes["code"]
    flops = matmul_flops(compiled.as_text())
    report.update(memory=sizes, per_chip_bytes=per_chip,
                  fits=target.hbm_bytes is None or per_chip <= target.hbm_bytes,
                  compiled_flops=flops["flops"] * target.chips, unknown_trip_counts=flops["unknown_trip_counts"])
    return report


def _bytes(count: int | None) -> str:
    if count is None:
        return "-"
    for unit, scale in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned lines for a person."""
    gib = _bytes
    mesh = " x ".join(f"{axis} {size}" for axis, size in report["mesh"].items())
    batch, seq = report["global_batch"]
    lines = [
        f"target     {report['topology']}: {report['chips']} x {report['device_kind']}, HBM "
        f"{gib(report['hbm_bytes'])} per chip" + (" (the compiler allows 95.74 GiB)" if report['topology'].startswith("v5p") else ""),
        f"mesh       {mesh}",
        f"model      {report['model']}: {report['params'] / 1e9:.2f}B params, method {report['method']} trains "
        f"{report['trainable_params']:,}; scan_layers {report['scan_layers']}, dtype {report['dtype']}",
        f"batch      {batch} x {seq} tokens global, {report['sequences_per_chip']} sequences per chip, "
        f"{report['microbatches']} microbatch(es)",
        f"compute    remat {report['remat']}, attention {report['attention']}, loss chunk {report['loss_chunk'] or 'none'}",
    ]
    if "memory" in report:
        parts = ", ".join(f"{k} {gib(v)}" for k, v in report["memory"].items())
        lines.append(f"memory     per chip: {parts}")
    share = "" if not report["hbm_bytes"] or report["per_chip_bytes"] is None else \
        f" = {100 * report['per_chip_bytes'] / report['hbm_bytes']:.0f}% of HBM"
    lines.append(f"total      {gib(report['per_chip_bytes'])} per chip{share}: "
                 + ("fits" if report["fits"] else "DOES NOT FIT"))
    if report.get("error"):
        lines.append(f"compiler   {report['error']}")
    if report.get("compiled_flops"):
        lines.append(f"flops      compiled {report['compiled_flops']:.3e} (matmuls, all chips) vs model "
                     f"{report['model_flops']:.3e} per step: ratio {report['compiled_flops'] / report['model_flops']:.2f}")
    cpu = f", {report['compile_cpu_s']:.1f} s of CPU" if "compile_cpu_s" in report else ""
    lines.append(f"compile    {report['compile_s']:.1f} s (tracing and lowering {report['lower_s']:.1f} s{cpu})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.compile", description=__doc__.split("\n")[0])
    add_gin_flags(parser)
    parser.add_argument("--topology", default=None, help="e.g. v5p:4x4x8, v5e:2x2 or cpu:8 (default: the job's slice)")
    parser.add_argument("--finetune", default=None, help="compile the finetuning step of fmt, lora or prompt")
    parser.add_argument("--lora_rank", type=int, default=4)
    parser.add_argument("--prompt_length", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    try:
        if not args.gin_file:
            raise ValueError("give at least one --gin_file (e.g. gin_configs/pretrain/16b.gin)")
        parse_gin(args.gin_file, args.gin_param)
        target = parse_target(args.topology or slice_topology() or "")
        if target.generation == "cpu":
            _simulate_cpu_devices(target.chips)
        spec = MethodSpec(args.finetune, lora_rank=args.lora_rank, prompt_length=args.prompt_length) \
            if args.finetune else MethodSpec("fmt")
        report = compile_job(configured_model(), TrainConfig(), target, spec)
    except (ValueError, SyntaxError) as error:  # bad flags, gin, topology, mesh or config values
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]  # gin appends "In call to ..."
        print(f"error: {first}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
