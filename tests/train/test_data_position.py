"""Resume from the saved data position: a pretraining run on the real UL2 corpus that is
interrupted after a checkpoint and resumed reads its batches from the position saved in that
checkpoint (no replay of earlier batches) and ends bit-identical to an uninterrupted run."""
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from helpers import losses, run, small_config
from model.sizes import get_config
from model.transformer import Transformer
from train.data_source import CorpusBatches
from train.trainer import RunInputs


class RecordingSource(CorpusBatches):
    """The real corpus source, recording how each run opened it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def __call__(self, start_position, state=None):
        self.calls.append((start_position, state))
        return super().__call__(start_position, state=state)


def corpus_inputs(source: CorpusBatches) -> RunInputs:
    config = get_config("tiny")
    return RunInputs(model_factory=lambda rngs: Transformer(config, rngs=rngs), model_config=config.to_dict(),
                     flops_per_token=1e5, batches=source, dev_batches=(), data_description=source.description)


def final_params(workdir):
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "6" / "params")
    return [np.asarray(x) for x in jax.tree.leaves(restored)]


def test_resume_continues_from_the_saved_position_bit_identical(tmp_path):
    source = RecordingSource(batch_size=8, seq_len=32, seed=0, corpus="aligned")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config = small_config(num_steps=6, latest_every_steps=3)
    run(straight, config, corpus_inputs(source))

    shutil.copytree(straight, resumed)  # then as if killed right after the latest save at step 3:
    for directory in (resumed / "latest" / "6", resumed / "checkpoints" / "6"):
        shutil.rmtree(directory)
    (resumed / "summary.json").unlink()
    position = resumed / "latest" / "3" / "data_position"
    assert any(position.rglob("*.index")), "the checkpoint holds the iterator's position"
    source.calls.clear()
    summary = run(resumed, config, corpus_inputs(source))

    assert summary["resumed_from_step"] == 3
    [(start, state)] = source.calls
    assert start == 3 and state is not None and str(state).startswith(str(position))
    assert {s: v for s, v in losses(resumed).items() if s > 3} == {s: v for s, v in losses(straight).items() if s > 3}
    for a, b in zip(final_params(straight), final_params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
