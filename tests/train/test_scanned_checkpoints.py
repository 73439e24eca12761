"""A run with scanned layers keeps every path working: its checkpoints load params-only (the
layout comes from the ModelConfig they record), export and reload (orbax, safetensors),
decode with the KV cache, finetune with LoRA (adapters, merge) and a soft prompt."""
import dataclasses

import jax
import numpy as np
from flax import nnx

from checkpoints.adapters import load_adapter, save_adapter
from checkpoints.exports import export_checkpoint, load_exported_model
from checkpoints.load import load_checkpoint_model
from helpers import VOCAB, real_tiny_inputs, run, small_config
from model.decode import generate
from model.lora import merge_lora
from model.methods import MethodSpec, base_params_of, build_model, model_factory
from model.sizes import get_config
from model.transformer import unstack_layer_params
from train.synthetic import synthetic_batch

PROMPTS = np.array([[5, 9, 13, 17], [7, 11, 0, 0]], np.int32)


@nnx.jit
def _logits(model, batch):
    return model(batch["decoder_input_tokens"], segment_ids=batch["decoder_segment_ids"],
                 positions=batch["decoder_positions"], causal_attention=batch["decoder_causal_attention"])


def _scanned_inputs():
    inputs = real_tiny_inputs(seq_len=32, batch_size=8)
    config = get_config("tiny", vocab_size=VOCAB).replace(scan_layers=True)
    return dataclasses.replace(inputs, model_config=config.to_dict(), model_factory=model_factory(config))


def test_scanned_run_loads_exports_decodes_and_finetunes(tmp_path):
    workdir = tmp_path / "run"
    run(workdir, small_config(num_steps=2, remat="full"), _scanned_inputs())
    model, meta = load_checkpoint_model(workdir, step=2)
    assert model.config.scan_layers and meta["model_config"]["scan_layers"]
    assert model.blocks.attention.q.kernel.shape[0] == model.config.num_layers
    batch = synthetic_batch(9, rows=2, seq_len=32, vocab_size=VOCAB, seed=3)
    reference = np.asarray(_logits(model, batch))

    # The same weights unstacked into a layer list compute the same logits.
    unscanned = build_model(model.config.replace(scan_layers=False), unstack_layer_params(base_params_of(model)))
    np.testing.assert_allclose(np.asarray(_logits(unscanned, batch)), reference, atol=1e-5)

    out = export_checkpoint(workdir, tmp_path / "export", step=2)
    for fmt in ("orbax", "safetensors"):
        np.testing.assert_array_equal(np.asarray(_logits(load_exported_model(out, fmt), batch)), reference)

    tokens = generate(model, PROMPTS, np.array([4, 2]), max_new_tokens=5, eos_id=-1)
    np.testing.assert_array_equal(tokens, generate(unscanned, PROMPTS, np.array([4, 2]), max_new_tokens=5, eos_id=-1))

    lora_spec = MethodSpec("lora", lora_rank=2)
    lora = build_model(model.config, base_params_of(model), lora_spec, seed=1)
    state = nnx.state(lora, nnx.LoRAParam)
    nnx.update(lora, jax.tree.map(lambda x: x + 0.05, state))  # a trained-looking adapter
    save_adapter(lora, lora_spec, tmp_path / "adapter.safetensors")
    reloaded = load_adapter(model, tmp_path / "adapter.safetensors")
    lora_logits = np.asarray(_logits(lora, batch))
    np.testing.assert_array_equal(np.asarray(_logits(reloaded, batch)), lora_logits)
    np.testing.assert_allclose(np.asarray(_logits(merge_lora(lora), batch)), lora_logits, atol=1e-5)
    assert not np.allclose(lora_logits, reference, atol=1e-3)

    prompt = build_model(model.config, base_params_of(model), MethodSpec("prompt", prompt_length=3), seed=1)
    assert generate(prompt, PROMPTS, np.array([4, 2]), max_new_tokens=3, eos_id=-1).shape == (2, 3)
