"""Export round trip: params-only orbax and safetensors + config.json reproduce the
training checkpoint's logits exactly; nothing is pickled."""
import json

import numpy as np
import pytest
from flax import nnx

from helpers import real_tiny_inputs, run, small_config
from checkpoints.__main__ import main
from checkpoints.exports import load_exported_model
from checkpoints.load import load_checkpoint_model
from train.synthetic import synthetic_batch


@nnx.jit
def _forward(model, batch):
    return model(batch["decoder_input_tokens"], segment_ids=batch["decoder_segment_ids"],
                 positions=batch["decoder_positions"], causal_attention=batch["decoder_causal_attention"])


def _logits(model, batch):
    return np.asarray(_forward(model, batch))


def test_export_round_trip_reproduces_logits(tmp_path):
    workdir = tmp_path / "run"
    run(workdir, small_config(num_steps=3), real_tiny_inputs(seq_len=32, batch_size=8))
    batch = synthetic_batch(99, rows=2, seq_len=32, vocab_size=128, seed=5)
    trained, meta = load_checkpoint_model(workdir, tokens=3 * 8 * 32)
    assert meta["step"] == 3
    reference = _logits(trained, batch)

    out = tmp_path / "export"
    assert main(["export", f"--workdir={workdir}", "--step=3", f"--out={out}"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == "tiny" and config["vocab_size"] == 128 and config["_source"]["step"] == 3
    for fmt in ("orbax", "safetensors"):
        np.testing.assert_array_equal(_logits(load_exported_model(out, fmt), batch), reference)
    for path in out.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"

    assert main(["export", f"--workdir={workdir}", "--step=3", f"--out={out}"]) == 2  # never overwrites
    with pytest.raises(ValueError, match="no checkpoint with step 7"):
        load_checkpoint_model(workdir, step=7)
