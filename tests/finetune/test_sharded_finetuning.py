"""Finetuning is one sharded trainer: FMT, LoRA and prompt tuning on 8 simulated devices
(data 2 x fsdp 2 x tensor 2) give the losses, best step, dev/test PPL and greedy decodes of one
device; LoRA's train state holds no base weight and no optimizer state for one."""
import jax
import numpy as np
import pytest

from checkpoints.load import load_checkpoint_params
from data.finetune_rows import finetune_batches, split_batches
from eval.evaluate import greedy_decode
from eval.scoring import score_batches
from finetune import training
from model.methods import MethodSpec, build_model, split_trainable
from train.partitioning import make_mesh

SEQ_LEN, BATCH, STEPS = 64, 4, 6
METHODS = {  # method -> (spec, peak learning rate, parameter scale)
    "fmt": (MethodSpec("fmt"), 3e-2, True),
    "lora": (MethodSpec("lora", lora_rank=8), 3e-2, False),
    "prompt": (MethodSpec("prompt", prompt_length=8), 0.3, True),
}
MESHES = {"one device": (1, 1, 1), "8 devices": (2, 2, 2)}


@pytest.fixture(scope="module")
def data(smoke_pretrain_dir):
    config, params, _ = load_checkpoint_params(smoke_pretrain_dir, step=16)
    common = dict(finetune_examples=32, subset_seed=0, batch_size=BATCH, seq_len=SEQ_LEN, seed=0)
    train = list(finetune_batches("mt_en_de", epochs=4, **common))[:STEPS]
    # 6 rows: not a multiple of the 4 data ways, so evaluation pads
    dev = split_batches("mt_en_de", "validation", batch_size=6, seq_len=SEQ_LEN, max_batches=2)
    prompts = [row[row > 0][:12] for row in dev[0]["decoder_input_tokens"][:5]]
    return {"config": config, "params": params, "train": train, "dev": dev, "prompts": prompts}


def _mesh(shape):
    return make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))])


@pytest.fixture(scope="module")
def runs(data):
    out = {}
    for method, (spec, lr, scale) in METHODS.items():
        for name, shape in MESHES.items():
            mesh = _mesh(shape)
            model = build_model(data["config"], data["params"], spec, seed=0)
            result = training.finetune(model, spec, data["train"], data["dev"], mesh=mesh, peak_learning_rate=lr,
                                       parameter_scale=scale, eval_every_steps=2, progress=False)
            out[method, name] = {
                "result": result,
                "test_log_ppl": score_batches(result.model, data["dev"], mesh=mesh).log_ppl,
                "decoded": greedy_decode(result.model, data["prompts"], batch_size=3, max_new_tokens=6,
                                         prompt_width=12, mesh=mesh),
            }
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_eight_devices_train_evaluate_and_decode_as_one(runs, method):
    one, eight = runs[method, "one device"], runs[method, "8 devices"]
    np.testing.assert_allclose(eight["result"].train_losses, one["result"].train_losses, rtol=2e-6)
    assert len(one["result"].train_losses) == STEPS
    assert eight["result"].best_step == one["result"].best_step
    np.testing.assert_allclose([h["dev_log_ppl"] for h in eight["result"].history],
                               [h["dev_log_ppl"] for h in one["result"].history], rtol=2e-6)
    np.testing.assert_allclose(eight["test_log_ppl"], one["test_log_ppl"], rtol=2e-6)
    assert eight["decoded"] == one["decoded"] and len(one["decoded"]) == 5
    # the trained params really live on the mesh: split over its devices
    _, params, _ = split_trainable(eight["result"].model, method)
    assert {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(params)} == {8}


def test_lora_state_holds_no_base_weight_nor_its_optimizer_state(data):
    config = training.TrainConfig(batch_size=BATCH, seq_len=SEQ_LEN, num_steps=1)
    mesh = _mesh((2, 2, 2))
    parts = {method: training.finetune_program(data["config"], spec, mesh, config, parameter_scale=scale).train.parts
             for method, (spec, _, scale) in METHODS.items()}
    lora = parts["lora"].abstract_state
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(lora["params"])[0]]
    assert paths and all("lora_a" in p or "lora_b" in p for p in paths), paths
    for path, leaf in jax.tree_util.tree_flatten_with_path(lora["opt_state"])[0]:
        # arrays of a parameter's shape (or a factored row/column of it) belong to LoRA params only;
        # what else there is are scalars (counts, the schedule's hyperparameters)
        assert leaf.ndim == 0 or "lora_a" in jax.tree_util.keystr(path) or "lora_b" in jax.tree_util.keystr(path), path

    def nbytes(tree):
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))

    assert nbytes(lora) < 0.05 * nbytes(parts["fmt"].abstract_state)


def test_a_batch_the_data_axes_do_not_divide_is_refused(data):
    spec = METHODS["lora"][0]
    model = build_model(data["config"], data["params"], spec, seed=0)
    with pytest.raises(ValueError, match=r"FinetuneConfig.batch_size=4 is not divisible by the mesh's data axes "
                                         r"\(data 8 x fsdp 1 = 8\); use a multiple of 8"):
        training.finetune(model, spec, data["train"], data["dev"], mesh=_mesh((8, 1, 1)), peak_learning_rate=1e-2,
                          eval_every_steps=2, progress=False)
