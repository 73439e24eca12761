"""A checkpoint pretrained with your own SentencePiece model finetunes on tasks tokenized with it;
with a bundled pair's vocabulary the task must be of that pair. Checked without a checkpoint."""
import shutil

import pytest

from data import tasks
from data.vocab import vocab_path
from finetune.config import FinetuneConfig
from model.sizes import get_config


def test_own_vocabulary_makes_a_tokenized_variant_and_sizes_must_match(tmp_path):
    own = tmp_path / "own.model"
    shutil.copy(vocab_path("en-de"), own)  # any valid model of this project's format
    config = FinetuneConfig(pretrain_workdir="x", checkpoint_step=1, task="tfds_wmt14_en_de", finetune_examples=1000)
    variant = config.data_task(str(own))
    assert variant != "tfds_wmt14_en_de" and variant in tasks.STREAMED
    assert tasks.FINETUNE_VOCAB[variant].sentencepiece_model_file == str(own)
    assert config.data_task(str(vocab_path("en-de"))) == "tfds_wmt14_en_de"  # bundled: the task itself
    config.validate_for_model(get_config("m"), str(own))  # 8192 ids on both sides
    with pytest.raises(ValueError, match=r"has 8192 ids but model '1b' has vocab_size=32768"):
        config.validate_for_model(get_config("1b"), str(own))
    with pytest.raises(ValueError, match=r"vocabulary \S*missing.model does not exist"):
        config.data_task(str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="finetune_examples=5000000 is larger than the 4508785 training examples"):
        config.replace(finetune_examples=5_000_000).validate_for_model(get_config("m"), str(own))
