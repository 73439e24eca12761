"""KV-cache decoding equals argmax of repeated full forward passes (MQA and GQA, ragged prompts)."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.decode import generate

PROMPTS = np.array([[5, 9, 13, 17, 21, 25], [7, 11, 3, 0, 0, 0], [30, 0, 0, 0, 0, 0]], np.int32)
LENGTHS = np.array([6, 3, 1], np.int32)
NEW = 7


@nnx.jit
def _full_logits(model, tokens, segment_ids, causal_attention):
    return model(tokens, segment_ids=segment_ids, causal_attention=causal_attention)


def reference_greedy(model, prompts, lengths, new_tokens, prefix_bidirectional=False):
    """Greedy decoding by a full forward pass over prompt + generated tokens at every step."""
    batch, width = prompts.shape[0], prompts.shape[1] + new_tokens
    tokens = np.zeros((batch, width), np.int32)
    tokens[:, : prompts.shape[1]] = prompts
    out = np.zeros((batch, new_tokens), np.int32)
    for step in range(new_tokens):
        current = lengths + step
        segment_ids = (np.arange(width)[None] < current[:, None]).astype(np.int32)
        ca = (np.arange(width)[None] < lengths[:, None]).astype(np.int32) if prefix_bidirectional else None
        tokens = np.where(segment_ids == 1, tokens, 0)  # drop anything past the current length
        logits = np.asarray(_full_logits(model, jnp.asarray(tokens), jnp.asarray(segment_ids), ca))
        next_tokens = logits[np.arange(batch), current - 1].argmax(-1)
        out[:, step] = next_tokens
        tokens[np.arange(batch), current] = next_tokens
    return out


@pytest.mark.parametrize(
    "num_kv_heads,prompt_length,prefix_bidirectional", [(1, 0, False), (2, 3, False), (1, 0, True)]
)
def test_cached_greedy_equals_repeated_full_forward(small_model, num_kv_heads, prompt_length, prefix_bidirectional):
    model = small_model(num_kv_heads=num_kv_heads, prompt_length=prompt_length, tie_embeddings=False)
    got = generate(
        model, PROMPTS, LENGTHS, max_new_tokens=NEW, eos_id=-1, prefix_bidirectional=prefix_bidirectional
    )
    expected = reference_greedy(model, PROMPTS, LENGTHS, NEW, prefix_bidirectional)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) > 3, "degenerate model: the comparison would prove little"


@pytest.mark.parametrize("prefix_bidirectional", [False, True])
def test_scanned_layers_decode_like_the_layer_list(small_model, prefix_bidirectional):
    """A model with scanned layers (stacked cache) generates what its unscanned twin generates."""
    kwargs = dict(num_kv_heads=2, prompt_length=3, tie_embeddings=False)
    scanned = small_model(scan_layers=True, **kwargs)
    got = generate(scanned, PROMPTS, LENGTHS, max_new_tokens=NEW, eos_id=-1, prefix_bidirectional=prefix_bidirectional)
    expected = generate(small_model(**kwargs), PROMPTS, LENGTHS, max_new_tokens=NEW, eos_id=-1,
                        prefix_bidirectional=prefix_bidirectional)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, reference_greedy(scanned, PROMPTS, LENGTHS, NEW, prefix_bidirectional))


def test_eos_stops_each_row_and_pads_with_zero(small_model):
    model = small_model(tie_embeddings=False)
    free = generate(model, PROMPTS, LENGTHS, max_new_tokens=NEW, eos_id=-1)
    eos = int(free[0, 2])
    stopped = generate(model, PROMPTS, LENGTHS, max_new_tokens=NEW, eos_id=eos)
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free[row] == eos)
        end = hits[0] + 1 if len(hits) else NEW
        np.testing.assert_array_equal(stopped[row, :end], free[row, :end])
        assert (stopped[row, end:] == 0).all()


def test_sampling_options(small_model):
    model = small_model(tie_embeddings=False)
    greedy = generate(model, PROMPTS, LENGTHS, max_new_tokens=NEW, eos_id=-1)
    top1 = generate(model, PROMPTS, LENGTHS, max_new_tokens=NEW, eos_id=-1, temperature=1.0, top_k=1, seed=3)
    np.testing.assert_array_equal(top1, greedy)
    hot = dict(max_new_tokens=NEW, eos_id=-1, temperature=5.0)
    first = generate(model, PROMPTS, LENGTHS, seed=1, **hot)
    np.testing.assert_array_equal(first, generate(model, PROMPTS, LENGTHS, seed=1, **hot))
    assert not np.array_equal(first, generate(model, PROMPTS, LENGTHS, seed=2, **hot))
    assert ((first >= 0) & (first < 64)).all()


def test_invalid_decode_arguments(small_model):
    model = small_model()
    with pytest.raises(ValueError, match="prompt_lengths"):
        generate(model, PROMPTS, np.array([6, 0, 1]), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_len"):
        generate(model, PROMPTS, LENGTHS, max_new_tokens=1000)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, PROMPTS, LENGTHS, max_new_tokens=2, top_k=-1)
