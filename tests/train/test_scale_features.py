"""The scale features in the real sharded train step: each one gives the plain step's loss and
gradients (float32, within 1e-5) on 1 and on 8 devices, and each lowers what it is for
(memory planned by the compiler, or the size of the compiled program)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model.compute import ComputeConfig
from model.methods import model_factory
from model.sizes import get_config
from model.transformer import unstack_layer_params
from train import state as state_lib
from train.compile import abstract_batch
from train.partitioning import make_mesh, replicated
from train.step import jit_train_step, make_train_step, shard_batch
from train.synthetic import synthetic_batch
from train.trainer import TrainConfig, build_train_step

VOCAB, SEQ, BATCH = 128, 32, 16
SGD = optax.sgd(1.0)
FEATURES = {
    "scan": ({"scan_layers": True}, {}),
    "remat full": ({}, {"remat": "full"}),
    "remat save_matmuls": ({}, {"remat": "save_matmuls"}),
    "blockwise attention": ({}, {"attention": "blockwise", "attention_block": 8}),
    "loss chunks": ({}, {"loss_chunk": 8}),
    "microbatches": ({}, {"microbatches": 2}),
    "all": ({"scan_layers": True}, {"remat": "full", "attention": "blockwise", "attention_block": 16,
                                    "loss_chunk": 16, "microbatches": 2}),
}


def _mesh(shape):
    return make_mesh(*shape, devices=jax.devices()[:1] if shape == (1, 1, 1) else None)


@functools.lru_cache(maxsize=None)
def _initial(scan_layers: bool, mesh_shape: tuple) -> tuple:
    """(factory, parts, state, rest) of the tiny model on the mesh, built once per layout."""
    model = get_config("tiny", vocab_size=VOCAB).replace(scan_layers=scan_layers)
    mesh = _mesh(mesh_shape)
    factory = model_factory(model)
    parts = state_lib.plan(factory, SGD, mesh, 0, "rbg")
    return mesh, parts, *state_lib.init_state(factory, SGD, parts, 0, "rbg")


def loss_and_grads(model_overrides: dict, compute: dict, mesh_shape=(1, 1, 1)) -> tuple[float, dict]:
    """One real step (make_train_step, jitted with the mesh's shardings) with plain SGD at rate 1,
    so the gradients are params before - params after; in the unscanned layout."""
    scan_layers = model_overrides.get("scan_layers", False)
    mesh, parts, state, rest = _initial(scan_layers, mesh_shape)
    compute = dict(compute)
    microbatches = compute.pop("microbatches", 1)
    step = jit_train_step(make_train_step(parts.graphdef, SGD, learning_rate=lambda opt_state, step: 1.0,
                                          z_loss=1e-3, dropout=False, seed=0, compute=ComputeConfig(**compute),
                                          microbatches=microbatches, mesh=mesh),
                          parts.state_shardings, parts.rest_shardings, mesh)
    state = jax.tree.map(jnp.copy, state)  # the step donates its input
    before = jax.tree.map(np.asarray, state["params"])
    batch = synthetic_batch(0, rows=BATCH, seq_len=SEQ, vocab_size=VOCAB, seed=0)
    state, metrics = step(state, rest, shard_batch(batch, mesh), np.int32(0))
    grads = jax.tree.map(lambda b, a: b - np.asarray(a), before, state["params"])
    return float(metrics["loss"]), unstack_layer_params(grads) if scan_layers else grads


@pytest.fixture(scope="module")
def reference():
    return loss_and_grads({}, {})


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 2, 2)], ids=["1 device", "8 devices"])
@pytest.mark.parametrize("name", list(FEATURES))
def test_feature_gives_the_plain_steps_loss_and_gradients(name, mesh_shape, reference):
    loss, grads = loss_and_grads(*FEATURES[name], mesh_shape)
    ref_loss, ref_grads = reference
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads)) > 1e-2  # gradients worth comparing
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _compiled(model_overrides: dict, **train) -> jax.stages.Compiled:
    """The step train.compile would compile, for this process's first CPU device."""
    model = get_config("tiny", vocab_size=train.pop("vocab", VOCAB)).replace(**model_overrides)
    mesh = _mesh((1, 1, 1))
    config = TrainConfig(num_steps=10, **{"batch_size": 8, "seq_len": 256, **train})
    program = build_train_step(config, model_factory(model), mesh, dropout=False)
    step = jax.ShapeDtypeStruct((), jax.numpy.int32, sharding=replicated(mesh))
    return program.step_fn.lower(program.parts.abstract_state, program.parts.abstract_rest,
                                 abstract_batch(config, mesh), step).compile()


@functools.lru_cache(maxsize=None)
def _cached_temporaries(model_items: tuple, train_items: tuple) -> int:
    return _compiled(dict(model_items), **dict(train_items)).memory_analysis().temp_size_in_bytes


def _temporaries(model_overrides: dict, **train) -> int:
    return _cached_temporaries(tuple(sorted(model_overrides.items())), tuple(sorted(train.items())))


@pytest.mark.parametrize("model,feature,baseline", [
    # float32 logits of 32 positions at a time; of 512 weighted rows at a time:
    ({}, {"loss_chunk": 32, "vocab": 8192}, {"vocab": 8192, "loss_positions": "all"}),
    ({}, {"loss_positions": "weighted", "vocab": 8192}, {"vocab": 8192, "loss_positions": "all"}),
    ({}, {"attention": "blockwise", "attention_block": 32}, {"attention": "einsum"}),  # scores of 32 queries
    ({}, {"attention": "fused_cpu"}, {"attention": "einsum"}),    # no scores kept: output and log-sum-exp
    ({"scan_layers": True}, {"remat": "full"}, {}),               # each layer's input only
    ({"scan_layers": True}, {"remat": "save_matmuls"}, {}),       # and its projections' outputs
    ({}, {"microbatches": 4}, {}),                                # a quarter of the batch at a time
], ids=["loss chunks", "weighted loss positions", "blockwise", "fused_cpu", "remat full", "remat save_matmuls",
        "microbatches"])
def test_feature_lowers_planned_memory(model, feature, baseline):
    """XLA's planned temporaries on CPU (it schedules a remat only inside the layer scan; TPU
    rematerialises unrolled layers too)."""
    model = {"num_layers": 4, **model}
    with_feature, without = _temporaries(model, **feature), _temporaries(model, **baseline)
    assert with_feature < 0.8 * without, (with_feature, without)


def test_scan_compiles_one_layer():
    """With scanned layers the program holds one layer's matmuls, whatever the depth."""
    def matmuls(**model):
        text = _compiled({"num_layers": 6, **model}, seq_len=32).as_text()
        return sum(text.count(f" {op}(") for op in ("dot", "convolution"))

    assert matmuls(scan_layers=True) * 3 < matmuls()


@pytest.mark.parametrize("field,value", [("remat", "everything"), ("attention", "flash"), ("microbatches", 0),
                                         ("loss_chunk", -8)])
def test_bad_compute_option_is_named(field, value):
    config = TrainConfig(num_steps=1, **{field: value})
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        config.validate(_mesh((1, 1, 1)))


def test_microbatches_must_divide_the_per_device_batch():
    config = TrainConfig(num_steps=1, batch_size=8, microbatches=3)
    with pytest.raises(ValueError, match="microbatches=3"):
        config.validate(_mesh((1, 1, 1)))
