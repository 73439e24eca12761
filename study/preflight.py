"""Everything a study can check before it pretrains anything: the task and its train split, the
vocabulary, every size's pretraining gin file and the model it configures, and each grid
point's method size against its model. A mistake found here costs seconds; found by the
first finetuning run, it costs every pretraining (and the spec would already be recorded).
"""
from __future__ import annotations

from pathlib import Path

import gin

from data import tasks
from data.vocab import vocab_path
from model.config import ModelConfig
from model.sizes import get_config
from study.pretraining import pretrain_bindings
from study.spec import StudySpec
from train.gin_setup import find_gin_file, parse_gin
from train.pretrain import configured_model


def check_study(spec: StudySpec, *, parse_pretrain_gin: bool = True) -> None:
    """ValueError naming the first thing that would fail later. `parse_pretrain_gin`: also parse
    each size's pretraining gin files and check the model they configure (off for stand-in
    pretraining functions that never read them)."""
    _check_task(spec)
    models = {size: get_config(size) for size in spec.sizes}
    for size, corpus in spec.pretrain_runs():
        gin_file, bindings = pretrain_bindings(spec, size, corpus)
        find_gin_file(gin_file)
        if parse_pretrain_gin:
            models[size] = _configured(gin_file, bindings, size)
    vocabulary = tasks.FINETUNE_VOCAB[spec.task]
    for size, model in models.items():
        if parse_pretrain_gin and model.vocab_size != int(vocabulary.vocab_size):
            raise ValueError(f"task {spec.task!r} uses a vocabulary of {vocabulary.vocab_size} tokens but size "
                             f"{size!r} is pretrained with vocab_size={model.vocab_size}; choose a task of pair "
                             f"{spec.pair!r} or bind the pretraining's vocabulary")
        for seq_len, what in ((spec.pretrain_seq_len, "StudySpec.pretrain_seq_len"), (spec.seq_len, "StudySpec.seq_len")):
            if seq_len > model.max_len:
                raise ValueError(f"{what}={seq_len} exceeds max_len={model.max_len} of size {size!r}")
    for point in spec.grid():
        model = models[point.size]
        if point.method == "lora" and point.pet_size > model.d_model:
            raise ValueError(f"StudySpec.lora_ranks has {point.pet_size}, above the layer width "
                             f"d_model={model.d_model} of size {point.size!r}; choose 1..{model.d_model}")
        if point.method == "prompt" and point.pet_size + spec.seq_len > model.max_len:
            raise ValueError(f"StudySpec.prompt_lengths has {point.pet_size}: with seq_len={spec.seq_len} that "
                             f"exceeds max_len={model.max_len} of size {point.size!r}")


def _check_task(spec: StudySpec) -> None:
    """The task exists, its vocabulary is the spec's pair's, and the Df grid fits its train split."""
    if spec.task not in tasks.FINETUNE_EXAMPLES:
        raise ValueError(f"StudySpec.task={spec.task!r} is not a finetuning task; valid: {sorted(tasks.FINETUNE_EXAMPLES)}")
    vocabulary = tasks.FINETUNE_VOCAB[spec.task]
    pair_vocab = vocab_path(spec.pair)
    if Path(vocabulary.sentencepiece_model_file).resolve() != pair_vocab.resolve():
        raise ValueError(f"StudySpec.task={spec.task!r} uses vocabulary {vocabulary.sentencepiece_model_file}, "
                         f"but the study pretrains on pair {spec.pair!r} ({pair_vocab}); choose a task of that "
                         f"pair or set StudySpec.pair")
    train_size = len(tasks.raw_examples(spec.task, "train"))
    too_big = [df for df in spec.finetune_examples if df > train_size]
    if too_big:
        raise ValueError(f"StudySpec.finetune_examples has {too_big}, more than the {train_size} training examples "
                         f"of task {spec.task!r}; choose values up to {train_size}")


def _configured(gin_file: str, bindings: list[str], size: str) -> ModelConfig:
    """The model a size's pretraining gin files configure (gin is cleared before and after)."""
    gin.clear_config()
    try:
        parse_gin([gin_file], bindings)
        model = configured_model()
    except ValueError as error:
        raise ValueError(f"pretraining gin for size {size!r} ({gin_file}): {error}") from None
    finally:
        gin.clear_config()
    if not isinstance(model, ModelConfig) or model.name != size:
        raise ValueError(f"{gin_file} configures model {getattr(model, 'name', model)!r}, but the study pretrains "
                         f"size {size!r} with it; StudySpec.pretrain_gin must name each size's file "
                         f"(e.g. 'gin_configs/pretrain/{{size}}_{{corpus}}.gin')")
    return model
