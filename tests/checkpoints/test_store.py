"""Checkpoint kinds, listing, corrupt / partial directories, and the NaN stop."""
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import losses, run, small_config
from tiny_model import TINY_CONFIG, PoisonedLM, TinyLM
from checkpoints.__main__ import main
from checkpoints.store import CheckpointStore, CheckpointWarning, list_checkpoints
from train.synthetic import SyntheticBatches
from train.trainer import RunInputs, TrainingDivergedError


def tiny_inputs(model=TinyLM, batches=None, dev=1) -> RunInputs:
    source = SyntheticBatches(8, 32, TINY_CONFIG["vocab_size"], seed=0)
    return RunInputs(model_factory=lambda rngs: model(rngs=rngs), model_config=TINY_CONFIG,
                     flops_per_token=1e4, batches=batches or source, dev_batches=source.dev_batches(dev),
                     data_description=source.description)


def _garble(directory: Path) -> None:
    for path in [*(directory / "params").rglob("*"), *(directory / "opt_state").rglob("*")]:
        if path.is_file():
            path.write_bytes(b"\x00garbage" * 3)


def test_kinds_listing_and_corrupt_checkpoints_are_skipped(tmp_path, capsys):
    config = small_config(num_steps=8, latest_every_steps=4, checkpoint_tokens=(2 * 8 * 32,), keep_latest=3)
    run(tmp_path, config, tiny_inputs())
    first = losses(tmp_path)
    rows = list_checkpoints(tmp_path)
    assert [(r["kind"], r["step"], r["tokens"]) for r in rows] == [
        ("intermediate", 2, 512), ("intermediate", 8, 2048), ("latest", 4, 1024), ("latest", 8, 2048)]
    assert all(r["dev_loss"] is not None for r in rows if r["kind"] == "intermediate")
    assert rows[0]["model"] == "tiny-test"
    assert main(["list", f"--workdir={tmp_path}"]) == 0
    assert "intermediate        2           512" in capsys.readouterr().out

    # step 8 is corrupt in both kinds, and a save of step 12 died mid-write
    _garble(tmp_path / "latest" / "8")
    _garble(tmp_path / "checkpoints" / "8")
    partial = tmp_path / "latest" / "12.orbax-checkpoint-tmp-1700000000"
    (partial / "params").mkdir(parents=True)
    (partial / "params" / "_METADATA").write_text("{")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run(tmp_path, config, tiny_inputs())
    messages = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert any(str(partial) in m for m in messages), messages
    assert any(str(tmp_path / "latest" / "8") in m and "corrupt" in m for m in messages), messages
    assert any(str(tmp_path / "checkpoints" / "8") in m and "corrupt" in m for m in messages), messages
    assert summary["resumed_from_step"] == 4  # the newest good checkpoint
    assert losses(tmp_path) == first  # steps 5..8 redone identically
    # the corrupt directories are kept (renamed), never deleted
    assert len(list((tmp_path / "checkpoints").glob("8.corrupt-*"))) == 1
    assert [r["step"] for r in list_checkpoints(tmp_path) if r["kind"] == "intermediate"] == [2, 8]

    # resuming on other data is refused rather than silently mixing corpora
    other = tiny_inputs(batches=SyntheticBatches(8, 32, TINY_CONFIG["vocab_size"], seed=1))
    other.data_description = other.batches.description
    with pytest.raises(ValueError, match="was trained on data .* but this run configures"):
        run(tmp_path, small_config(num_steps=12, latest_every_steps=4), other)


def _poison_at(batch_number: int):
    source = SyntheticBatches(8, 32, TINY_CONFIG["vocab_size"], seed=0)

    def batches(start):
        for number, batch in enumerate(source(start), start):
            if number == batch_number:
                batch["decoder_input_tokens"][0, 3] = PoisonedLM.poison_token
            yield batch
    return batches


def test_nan_stops_naming_the_step_and_last_good_checkpoint(tmp_path):
    config = small_config(num_steps=12, latest_every_steps=3)
    inputs = tiny_inputs(model=PoisonedLM, batches=_poison_at(7))  # batch 7 is step 8
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 8.*latest/6 \(left intact\)"):
        run(tmp_path, config, inputs)
    store = CheckpointStore(tmp_path, read_only=True)
    assert store.steps("latest") == [3, 6]  # nothing after the divergence was saved
    assert store.read_meta("latest", 6)["tokens_seen"] == 6 * 8 * 32
    store.close()
    assert max(losses(tmp_path)) < 8
    assert all(np.isfinite(v) for v in losses(tmp_path).values())
