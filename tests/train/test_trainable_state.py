"""The sharded train state holds only what a method trains: LoRA or prompt params and their
optimizer state; the frozen base weights travel with the rest, sharded like params, and stay
bitwise fixed through a step. A resumed run may change how the step computes."""
import dataclasses
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from helpers import losses, real_tiny_inputs, run, small_config
from model.methods import MethodSpec, model_factory
from model.sizes import get_config
from train.partitioning import make_mesh
from train.step import shard_batch
from train.synthetic import synthetic_batch
from train.trainer import build_train_step
from train import state as state_lib

VOCAB = 128


@pytest.mark.parametrize("spec", [MethodSpec("lora", lora_rank=2), MethodSpec("prompt", prompt_length=4)],
                         ids=["lora", "prompt"])
def test_only_the_methods_params_train(spec):
    mesh = make_mesh(1, 8, 1)
    model = get_config("tiny", vocab_size=VOCAB)
    config = small_config(batch_size=8, seq_len=32, num_steps=3)
    program = build_train_step(config, model_factory(model, spec), mesh, dropout=False, method=spec.method)
    parts = program.parts
    names = {path[-1].key for path, _ in jax.tree_util.tree_flatten_with_path(parts.abstract_state["params"])[0]}
    assert names == ({"lora_a", "lora_b"} if spec.method == "lora" else {"prompt"}), names
    frozen = nnx.to_flat_state(nnx.state(parts.abstract_rest, nnx.Param))
    assert frozen.leaves, "the frozen base weights travel with the rest"
    embedding = {tuple(map(str, p)): v for p, v in frozen}[("embedding",)]
    assert embedding.get_value().sharding.spec == PartitionSpec(None, "fsdp")  # placed like a param
    trainable = sum(x.size for x in jax.tree.leaves(parts.abstract_state["params"]))
    assert parts.num_params == trainable < sum(v.size for v in frozen.leaves) / 10
    opt_size = sum(x.size for x in jax.tree.leaves(parts.abstract_state["opt_state"]))
    assert opt_size <= 2 * trainable + 32  # Adafactor's statistics of the trainable params only

    state, rest = state_lib.init_state(model_factory(model, spec), program.optimizer, parts, 0, "rbg", spec.method)
    frozen_before = jax.tree.map(np.asarray, nnx.state(rest, nnx.Param))
    trained_before = jax.tree.map(np.asarray, state["params"])
    batch = shard_batch(synthetic_batch(0, rows=8, seq_len=32, vocab_size=VOCAB, seed=0), mesh)
    for step in range(2):
        state, metrics = program.step_fn(state, rest, batch, np.int32(step))
    assert np.isfinite(float(metrics["loss"]))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), trained_before, state["params"])
    assert any(jax.tree.leaves(changed))
    jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.asarray, nnx.state(rest, nnx.Param)))


def test_resume_accepts_a_compute_only_change(tmp_path):
    """remat, attention, loss chunks and microbatches are TrainConfig, not the checkpointed
    ModelConfig: a run resumed with them changed continues the same loss curve."""
    inputs = real_tiny_inputs(seq_len=32, batch_size=8)
    plain, changed = tmp_path / "plain", tmp_path / "changed"
    run(plain, small_config(num_steps=4, latest_every_steps=2), inputs)
    shutil.copytree(plain, changed)  # then cut back to step 2, as if killed after its checkpoint
    for later in (changed / "latest" / "4", changed / "checkpoints" / "4", changed / "summary.json"):
        shutil.rmtree(later) if later.is_dir() else later.unlink()
    summary = run(changed, small_config(num_steps=4, latest_every_steps=2, remat="full", attention="blockwise",
                                        attention_block=8, loss_chunk=8, microbatches=2), inputs)
    assert summary["resumed_from_step"] == 2
    expected, got = losses(plain), losses(changed)
    np.testing.assert_allclose([got[s] for s in (3, 4)], [expected[s] for s in (3, 4)], rtol=1e-5)


def test_resume_refuses_another_layout(tmp_path):
    inputs = real_tiny_inputs(seq_len=32, batch_size=8)
    run(tmp_path, small_config(num_steps=2, latest_every_steps=2), inputs)
    scanned = get_config("tiny", vocab_size=VOCAB).replace(scan_layers=True)
    other = dataclasses.replace(inputs, model_config=scanned.to_dict(), model_factory=model_factory(scanned))
    with pytest.raises(ValueError, match="scan_layers"):
        run(tmp_path, small_config(num_steps=4), other)
