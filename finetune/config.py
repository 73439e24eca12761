"""FinetuneConfig: one finetuning run (checkpoint, task, method and its size, Df, seed, schedule).

Gin-configurable (`FinetuneConfig.method = "lora"`) and JSON-able: `to_dict()` is the run's
results-store key, so every field that changes a result lives here.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import gin

from checkpoints.load import read_checkpoint_meta
from data import tasks
from data.vocab import PAIRS, vocab_path
from model.config import ModelConfig
from model.methods import MethodSpec
from model.variables import METHODS

# Method default peak learning rates (ours: Zhang et al.'s appendix values could not be checked
# here, so none is claimed to be theirs). FMT and prompt use Adafactor's parameter-scale
# multiplication (relative steps: 1e-3 as t5x finetuning; 0.3 for the prompt as Lester et al.
# 2021); LoRA does not, because B starts at zero, where a parameter-scaled step is ~lr * 1e-3
# and LoRA would barely move, so its rate is an absolute step size (3e-3: ours).
DEFAULT_LEARNING_RATES = {"fmt": 1e-3, "lora": 3e-3, "prompt": 0.3}
DEFAULT_PARAMETER_SCALE = {"fmt": True, "lora": False, "prompt": True}


# Fields added after results existed (the train-until-converged rule, the from-scratch baseline):
# left out of a run's key while at their default, so earlier run keys do not change.
KEY_DEFAULTS = {"max_steps": None, "min_steps": None, "min_epochs": None, "from_scratch": False}


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """The pretraining checkpoint a config resolves to (read from its metadata, no arrays)."""

    workdir: str
    kind: str
    step: int
    tokens_seen: int
    model_config: ModelConfig
    corpus: str
    pair: str | None
    vocabulary: str | None  # the SentencePiece model it was pretrained with, where the data record says


@gin.configurable(module="finetune")
@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """All settings of one finetuning run; `validate()` checks them against the data and checkpoint.

    Exactly one of checkpoint_step / checkpoint_tokens picks the intermediate checkpoint, and
    exactly one of epochs / num_steps / max_steps sets the run length (max_steps: train until dev
    PPL stops improving for `patience` evaluations, after at least min_steps and min_epochs). learning_rate None = the method's
    default (DEFAULT_LEARNING_RATES), decayed by cosine to final_learning_fraction of it;
    parameter_scale None = the method's default use of Adafactor's parameter-scale multiplication.
    """

    pretrain_workdir: str = ""
    checkpoint_step: int | None = None
    checkpoint_tokens: int | None = None
    task: str = "mt_en_de"
    method: str = "fmt"
    lora_rank: int = 4
    lora_alpha: float = 8.0
    prompt_length: int = 0
    finetune_examples: int = 256
    subset_seed: int = 0
    seed: int = 0
    batch_size: int = 8
    seq_len: int = 128
    epochs: int | None = 1
    num_steps: int | None = None
    # Train until dev PPL stops improving (finetune.stopping.StoppingRule): set max_steps (and
    # patience), with epochs and num_steps None; min_steps / min_epochs keep small Df training.
    max_steps: int | None = None
    min_steps: int | None = None
    min_epochs: int | None = None
    # Isik et al.'s baseline: the same model finetuned from its random initialisation (the
    # checkpoint only supplies the model config); the result records 0 pretraining tokens.
    from_scratch: bool = False
    learning_rate: float | None = None
    parameter_scale: bool | None = None
    final_learning_fraction: float = 0.1
    eval_every_steps: int = 50
    patience: int | None = None
    dev_max_batches: int | None = 8
    eval_batch_size: int = 8
    eval_max_examples: int | None = None
    decode: bool = True
    max_new_tokens: int = 64

    # ---- derived -------------------------------------------------------------------------
    @property
    def peak_learning_rate(self) -> float:
        return float(self.learning_rate) if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    @property
    def use_parameter_scale(self) -> bool:
        return bool(self.parameter_scale) if self.parameter_scale is not None else DEFAULT_PARAMETER_SCALE[self.method]

    @property
    def method_spec(self) -> MethodSpec:
        """The method and its size (sizes of other methods are ignored): what decides the model structure."""
        return MethodSpec(method=self.method,
                          lora_rank=self.lora_rank if self.method == "lora" else 0,
                          lora_alpha=float(self.lora_alpha) if self.method == "lora" else 8.0,
                          prompt_length=self.prompt_length if self.method == "prompt" else 0)

    def to_dict(self, relative_to: str | os.PathLike | None = None) -> dict[str, Any]:
        """JSON-able dict: the run's identity (irrelevant sizes dropped). The pretraining workdir is
        absolute, or relative to `relative_to` (a study directory, a run's workdir), so the identity
        survives moving that directory together with the pretraining."""
        values = dataclasses.asdict(self)
        for name, default in KEY_DEFAULTS.items():
            if values[name] == default:
                values.pop(name)
        if self.pretrain_workdir:
            workdir = Path(self.pretrain_workdir).absolute()
            values["pretrain_workdir"] = (str(workdir) if relative_to is None else
                                          Path(os.path.relpath(workdir, Path(relative_to).absolute())).as_posix())
        if self.method != "lora":
            values.pop("lora_rank")
            values.pop("lora_alpha")
        if self.method != "prompt":
            values.pop("prompt_length")
        return values

    def replace(self, **changes: Any) -> "FinetuneConfig":
        return dataclasses.replace(self, **changes)

    # ---- validation ----------------------------------------------------------------------
    def validate_fields(self) -> None:
        """Checks that need no files: types, ranges and exclusive choices."""
        if self.method not in METHODS:
            raise ValueError(f"unknown finetuning method {self.method!r}; valid: {list(METHODS)}")
        ints = {"batch_size": 1, "seq_len": 8, "finetune_examples": 1, "eval_every_steps": 1,
                "eval_batch_size": 1, "max_new_tokens": 1, "subset_seed": 0, "seed": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"FinetuneConfig.{name}={value!r} must be an integer >= {low}")
        optional_ints = {"epochs": 1, "num_steps": 1, "max_steps": 1, "min_steps": 0, "min_epochs": 0, "patience": 1,
                         "dev_max_batches": 1, "eval_max_examples": 1,
                         "checkpoint_step": 0, "checkpoint_tokens": 0}
        for name, low in optional_ints.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"FinetuneConfig.{name}={value!r} must be None or an integer >= {low}")
        lengths = {"epochs": self.epochs, "num_steps": self.num_steps, "max_steps": self.max_steps}
        if sum(v is not None for v in lengths.values()) != 1:
            raise ValueError(f"give exactly one of FinetuneConfig.epochs / num_steps / max_steps (got {lengths}); "
                             "set the others to None")
        if self.max_steps is None and (self.min_steps is not None or self.min_epochs is not None):
            raise ValueError(f"FinetuneConfig.min_steps ({self.min_steps!r}) and min_epochs ({self.min_epochs!r}) "
                             "belong to the train-until-converged rule: set max_steps (and patience) too")
        if self.max_steps is not None and self.patience is None:
            raise ValueError(f"FinetuneConfig.max_steps={self.max_steps} trains until dev PPL stops improving: "
                             "set patience (evaluations without a new best) too")
        if self.max_steps is not None and (self.min_steps or 0) > self.max_steps:
            raise ValueError(f"FinetuneConfig.min_steps={self.min_steps} exceeds max_steps={self.max_steps}")
        if (self.checkpoint_step is None) == (self.checkpoint_tokens is None):
            raise ValueError(f"give exactly one of FinetuneConfig.checkpoint_step ({self.checkpoint_step!r}) and "
                             f"checkpoint_tokens ({self.checkpoint_tokens!r})")
        if not self.pretrain_workdir:
            raise ValueError("FinetuneConfig.pretrain_workdir is required: the pretraining workdir to start from")
        if self.method == "lora" and (isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int)
                                      or self.lora_rank < 1):
            raise ValueError(f"FinetuneConfig.lora_rank={self.lora_rank!r} must be a positive integer")
        if self.method == "lora" and not float(self.lora_alpha) > 0:
            raise ValueError(f"FinetuneConfig.lora_alpha={self.lora_alpha!r} must be > 0")
        if self.method == "prompt" and (isinstance(self.prompt_length, bool) or not isinstance(self.prompt_length, int)
                                        or self.prompt_length < 1):
            raise ValueError(f"FinetuneConfig.prompt_length={self.prompt_length!r} must be a positive integer "
                             "for method 'prompt'")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"FinetuneConfig.learning_rate={self.learning_rate!r} must be > 0 (or None for the "
                             f"method default {DEFAULT_LEARNING_RATES.get(self.method)})")
        if not isinstance(self.from_scratch, bool):
            raise ValueError(f"FinetuneConfig.from_scratch={self.from_scratch!r} must be True or False")
        if self.from_scratch and self.method != "fmt":
            raise ValueError(f"FinetuneConfig.from_scratch trains every weight from its initialisation: method must be "
                             f"'fmt', got {self.method!r} (a PET method would freeze random weights)")
        if self.parameter_scale is not None and not isinstance(self.parameter_scale, bool):
            raise ValueError(f"FinetuneConfig.parameter_scale={self.parameter_scale!r} must be True, False or None")
        if not 0.0 < float(self.final_learning_fraction) <= 1.0:
            raise ValueError(f"FinetuneConfig.final_learning_fraction={self.final_learning_fraction!r} must be in (0, 1]")

    def resolve_checkpoint(self) -> CheckpointInfo:
        """The checkpoint this config names; ValueError if the workdir or checkpoint is missing."""
        workdir = Path(self.pretrain_workdir)
        if not workdir.is_dir():
            raise ValueError(f"FinetuneConfig.pretrain_workdir={self.pretrain_workdir!r} does not exist; "
                             "give a train.pretrain workdir (with checkpoints/)")
        meta = read_checkpoint_meta(workdir, step=self.checkpoint_step, tokens=self.checkpoint_tokens)
        position = meta.get("data_position") or {}
        corpus = position.get("corpus", position.get("source", "unknown"))
        corpus = corpus if isinstance(corpus, str) else "+".join(f"{k}:{v:g}" for k, v in sorted(corpus.items()))
        vocabulary = position.get("vocabulary") or (str(vocab_path(position["pair"])) if position.get("pair") else None)
        return CheckpointInfo(workdir=str(workdir.absolute()), kind=meta["kind"], step=int(meta["step"]),
                              tokens_seen=int(meta["tokens_seen"]),
                              model_config=ModelConfig.from_dict(meta["model_config"]),
                              corpus=corpus or "unknown", pair=position.get("pair"), vocabulary=vocabulary)

    def data_task(self, pretrain_vocabulary: str | None) -> str:
        """The registered task the run reads: the task itself, or, for a checkpoint pretrained with
        your own SentencePiece model (not one of the bundled pairs'), the task tokenized with it
        (data.tasks.with_vocabulary)."""
        bundled = {vocab_path(pair).resolve() for pair in PAIRS}
        if pretrain_vocabulary is None or Path(pretrain_vocabulary).resolve() in bundled:
            return self.task
        return tasks.with_vocabulary(self.task, pretrain_vocabulary)

    def validate_for_model(self, model: ModelConfig, pretrain_vocabulary: str | None) -> None:
        """The checks that need the model to be finetuned and its pretraining vocabulary, not the
        checkpoint itself (study planning makes them from the gin-configured model): LoRA rank above
        the layer width, prompt + sequence longer than max_len, Df larger than the train split, a
        vocabulary size different from the model's."""
        if self.method == "lora" and self.lora_rank > model.d_model:
            raise ValueError(f"FinetuneConfig.lora_rank={self.lora_rank} exceeds the layer width "
                             f"d_model={model.d_model} of model {model.name!r}; choose 1..{model.d_model}")
        prompt = self.prompt_length if self.method == "prompt" else 0
        if prompt + self.seq_len > model.max_len:
            raise ValueError(f"prompt_length={prompt} + seq_len={self.seq_len} = {prompt + self.seq_len} exceeds "
                             f"max_len={model.max_len} of model {model.name!r}; shorten the prompt or the sequences")
        train_size = tasks.split_size(self.task, "train")
        if self.finetune_examples > train_size:
            raise ValueError(f"FinetuneConfig.finetune_examples={self.finetune_examples} is larger than the "
                             f"{train_size} training examples of task {self.task!r}; choose 1..{train_size}")
        vocabulary = tasks.FINETUNE_VOCAB[self.data_task(pretrain_vocabulary)]
        used = Path(vocabulary.sentencepiece_model_file).resolve()
        if pretrain_vocabulary is not None and used != Path(pretrain_vocabulary).resolve():
            raise ValueError(f"task {self.task!r} uses vocabulary {vocabulary.sentencepiece_model_file} but the "
                             f"checkpoint was pretrained with {pretrain_vocabulary}; finetune a checkpoint "
                             "pretrained with the task's language pair")
        if int(vocabulary.vocab_size) != model.vocab_size:
            raise ValueError(f"task {self.task!r} tokenized with {vocabulary.sentencepiece_model_file} has "
                             f"{int(vocabulary.vocab_size)} ids but model {model.name!r} has vocab_size="
                             f"{model.vocab_size} (pretrained with {pretrain_vocabulary or 'an unknown vocabulary'}); "
                             "finetune a checkpoint pretrained with the task's language pair or vocabulary")

    def validate(self) -> CheckpointInfo:
        """Every check before any compute; returns the resolved checkpoint. Raises ValueError naming
        the bad value: unknown task or method, missing checkpoint, and validate_for_model's checks."""
        self.validate_fields()
        if self.task not in tasks.FINETUNE_EXAMPLES:
            raise ValueError(f"unknown finetuning task {self.task!r}; valid: {sorted(tasks.FINETUNE_EXAMPLES)}")
        info = self.resolve_checkpoint()
        self.validate_for_model(info.model_config, info.vocabulary)
        return info
