"""Plan a study before running it: validate every configuration of its grid without touching an
accelerator, and say what it costs.

For every pretraining run the size's gin file is parsed as train.pretrain would parse it (model,
TrainConfig, mesh axes, data source) and checked; for every finetuning run its FinetuneConfig is
checked against the model it will finetune (LoRA rank, prompt + sequence length, Df against the
task's train split, vocabulary). Checks that need data this machine does not have (a TFDS dataset
not prepared, a vocabulary file elsewhere) are listed as deferred, not failed. Costs are model
FLOPs (train.metrics' PaLM-style count) of pretraining and of the finetuning grid, and
device-hours on a stated chip at a stated MFU.
"""
from __future__ import annotations

import dataclasses
import math
import types
from pathlib import Path
from typing import Any

import gin

from data.tasks import DataUnavailableError
from data.vocab import vocab_path
from finetune.config import FinetuneConfig
from model.config import ModelConfig
from model.sizes import count_params
from study.pretraining import pretrain_bindings, pretrain_dir
from study.spec import GridPoint, StudySpec
from train.gin_setup import parse_gin
from train.metrics import flops_per_token_from_config
from train.pretrain import configured_model
from train.trainer import TrainConfig

# Dense bf16 peak FLOP/s per chip (vendor figures) for the device-hour estimate.
CHIP_PEAK_FLOPS = {"v4": 275e12, "v5e": 197e12, "v5p": 459e12, "v6e": 918e12, "a100": 312e12, "h100": 989e12}
# A PET step skips the weight gradients of the frozen base: forward 2N + activation gradients 2N of FMT's 6N.
PET_FLOPS_FRACTION = 4.0 / 6.0


@dataclasses.dataclass
class Check:
    """One validation: ok, deferred (needs data not on this machine) or error, with its subject."""
    subject: str
    status: str
    detail: str = ""


@dataclasses.dataclass
class Pretraining:
    """What planning learns of one pretraining run from its gin files."""
    size: str
    corpus: str
    model: ModelConfig
    train: TrainConfig
    vocabulary: str | None
    flops: float
    non_embedding_params: int


@dataclasses.dataclass
class Plan:
    spec: StudySpec
    pretraining: list[Pretraining]
    points: list[GridPoint]
    finetune_flops: float
    checks: list[Check]

    @property
    def errors(self) -> list[Check]:
        return [c for c in self.checks if c.status == "error"]

    @property
    def deferred(self) -> list[Check]:
        return [c for c in self.checks if c.status == "deferred"]

    def device_hours(self, flops: float, chip: str, mfu: float) -> float:
        return flops / (CHIP_PEAK_FLOPS[chip] * mfu) / 3600.0


def _first_line(error: Exception) -> str:
    """The error's own message, without the call-site lines gin appends."""
    return str(error).strip().splitlines()[0]


def _gin_value(binding: str) -> Any:
    """A binding's value, following a %MACRO reference (None when unbound)."""
    try:
        value = gin.query_parameter(binding)
    except ValueError:
        return None
    return gin.query_parameter(str(value)) if str(value).startswith("%") else value


def _data_vocabulary() -> str | None:
    """The SentencePiece model the parsed job's batch source tokenizes with."""
    source = str(_gin_value("pretrain.batch_source") or "")
    if "TextCorpusBatches" in source:
        return _gin_value("TextCorpusBatches.vocabulary")
    if "CorpusBatches" in source:
        return str(vocab_path(_gin_value("CorpusBatches.pair") or "en-de"))
    return None


def _check_data_source(model: ModelConfig, train: TrainConfig, checks: list[Check], subject: str) -> None:
    """Build the job's batch source (this registers its tasks and finds missing data); ValueError if
    it does not fit the model."""
    factory = _gin_value("pretrain.batch_source")
    if factory is None:
        raise ValueError("no pretrain.batch_source bound")
    try:
        source = factory.scoped_configurable_fn(batch_size=train.batch_size, seq_len=train.seq_len, seed=train.seed)
    except DataUnavailableError as error:
        checks.append(Check(f"{subject} data", "deferred", _first_line(error)))
        return
    if source.vocab_size != model.vocab_size:
        raise ValueError(f"model vocab_size={model.vocab_size} but the data's vocabulary has {source.vocab_size} ids")


def plan_pretraining(spec: StudySpec, size: str, corpus: str, checks: list[Check]) -> Pretraining | None:
    """Parse and check one pretraining run's gin files (gin is cleared before and after)."""
    subject = f"pretraining {size}_{corpus}"
    gin_file, bindings = pretrain_bindings(spec, size, corpus)
    gin.clear_config()
    try:
        parse_gin([gin_file], bindings)
        model = configured_model()
        if model.name != size:
            raise ValueError(f"{gin_file} configures model {model.name!r}, not size {size!r}")
        train = TrainConfig()
        mesh = {axis: int(_gin_value(f"make_mesh.{axis}") or 1) for axis in ("data", "fsdp", "tensor")}
        train.validate(types.SimpleNamespace(shape=mesh), max_len=model.max_len)
        vocabulary = _data_vocabulary()
        _check_data_source(model, train, checks, subject)
    except ValueError as error:
        checks.append(Check(subject, "error", _first_line(error)))
        return None
    finally:
        gin.clear_config()
    tokens = train.total_steps() * train.tokens_per_step
    params = count_params(model)["non_embedding"]
    flops = tokens * flops_per_token_from_config(model.to_dict(), params, train.seq_len)
    checks.append(Check(subject, "ok", f"{model.name}, {tokens:,} tokens, mesh {mesh}"))
    return Pretraining(size, corpus, model, train, vocabulary, flops, params)


def finetune_steps(config: FinetuneConfig) -> int:
    """Optimizer steps of one run, at most: its step count or cap, or its epochs with one example
    per row (packing only lowers it)."""
    if config.num_steps is not None:
        return config.num_steps
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * math.ceil(config.finetune_examples / config.batch_size)


def plan_study(spec: StudySpec, study_dir: str | Path = "STUDY_DIR") -> Plan:
    """Validate every pretraining and finetuning configuration of the spec's grid and cost it."""
    checks: list[Check] = []
    pretraining = [p for size, corpus in spec.pretrain_runs()
                   if (p := plan_pretraining(spec, size, corpus, checks)) is not None]
    by_run = {(p.size, p.corpus): p for p in pretraining}
    points = spec.grid()
    flops = 0.0
    failures: dict[str, list[str]] = {}
    for point in points:
        run = by_run.get((point.size, point.corpus))
        if run is None:
            continue  # its pretraining already failed
        try:
            config = FinetuneConfig(**spec.finetune_kwargs(point, pretrain_dir(study_dir, point.size, point.corpus)))
            config.validate_fields()
        except ValueError as error:
            failures.setdefault(f"error|{_first_line(error)}", []).append(point.label())
            continue
        try:
            config.validate_for_model(run.model, run.vocabulary)
        except DataUnavailableError as error:
            failures.setdefault(f"deferred|{_first_line(error)}", []).append(point.label())
        except ValueError as error:
            failures.setdefault(f"error|{_first_line(error)}", []).append(point.label())
        per_token = flops_per_token_from_config(run.model.to_dict(), run.non_embedding_params, spec.seq_len)
        tokens = finetune_steps(config) * spec.batch_size * spec.seq_len
        flops += tokens * per_token * (1.0 if point.method == "fmt" else PET_FLOPS_FRACTION)
    for key, labels in failures.items():
        status, message = key.split("|", 1)
        checks.append(Check(f"{len(labels)} finetuning run(s), e.g. {labels[0]}", status, message))
    if not failures:
        checks.append(Check(f"{len(points)} finetuning runs", "ok"))
    return Plan(spec, pretraining, points, flops, checks)


def _axes(spec: StudySpec, points: list[GridPoint]) -> list[str]:
    def values(getter) -> str:
        found = sorted({getter(p) for p in points}, key=lambda v: (str(type(v)), v))
        return f"{len(found)} ({', '.join(f'{v:,}' if isinstance(v, int) else str(v) for v in found)})"

    return [f"  sizes x corpora: {values(lambda p: p.size)} x {values(lambda p: p.corpus)}",
            f"  pretraining checkpoints (Dp): {values(lambda p: p.checkpoint_tokens)}",
            f"  methods: {values(lambda p: p.method)}",
            f"  PET sizes: LoRA ranks {list(spec.lora_ranks)}, prompt lengths {list(spec.prompt_lengths)}",
            f"  Df: {values(lambda p: p.finetune_examples)}",
            f"  seeds: {values(lambda p: p.seed)}",
            f"  axes: model size (every size, final checkpoint), pretraining data "
            f"({', '.join(spec.dp_sweep_sizes) or 'none'}), PET size ({', '.join(spec.pet_sweep_sizes) or 'none'})"]


def plan_text(plan: Plan, *, chip: str, mfu: float) -> str:
    """The plan as the terminal shows it."""
    pre = sum(p.flops for p in plan.pretraining)
    lines = [f"study {plan.spec.name!r}: {len(plan.points)} finetuning runs, {len(plan.pretraining)} pretraining runs",
             "grid:", *_axes(plan.spec, plan.points),
             "pretraining:"]
    for p in plan.pretraining:
        lines.append(f"  {p.size}_{p.corpus}: {count_params(p.model)['total']:,} params, "
                     f"{p.train.total_steps() * p.train.tokens_per_step:,} tokens, {p.flops:.3g} FLOPs, "
                     f"{plan.device_hours(p.flops, chip, mfu):,.1f} {chip}-hours")
    total = pre + plan.finetune_flops
    lines += [f"compute (model FLOPs; finetuning at most, unpacked rows): pretraining {pre:.3g}, finetuning grid "
              f"{plan.finetune_flops:.3g}, total {total:.3g}",
              f"device-hours at {mfu:.0%} MFU on {chip} ({CHIP_PEAK_FLOPS[chip]:.3g} FLOP/s bf16 peak per chip): "
              f"pretraining {plan.device_hours(pre, chip, mfu):,.1f}, finetuning {plan.device_hours(plan.finetune_flops, chip, mfu):,.1f}, "
              f"total {plan.device_hours(total, chip, mfu):,.1f}",
              "checks:"]
    lines += [f"  {c.status.upper():8} {c.subject}{': ' + c.detail if c.detail else ''}" for c in plan.checks]
    verdict = (f"INVALID: {len(plan.errors)} check(s) failed" if plan.errors else
               f"valid ({len(plan.deferred)} check(s) need data that is not on this machine)" if plan.deferred else "valid")
    return "\n".join(lines + [verdict])


def plan_dict(plan: Plan, *, chip: str, mfu: float) -> dict:
    pre = sum(p.flops for p in plan.pretraining)
    return {"name": plan.spec.name, "runs": len(plan.points), "pretraining_runs": len(plan.pretraining),
            "pretraining_flops": pre, "finetuning_flops": plan.finetune_flops, "chip": chip, "mfu": mfu,
            "device_hours": plan.device_hours(pre + plan.finetune_flops, chip, mfu),
            "valid": not plan.errors, "checks": [dataclasses.asdict(c) for c in plan.checks]}
