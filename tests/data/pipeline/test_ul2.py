"""UL2 denoisers: noise statistics, exact reconstruction, S-denoiser split, fit into packed rows."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from data import tasks, ul2
from data.vocab import mode_token_id

SEQ_LEN = 512
SPAN_DENOISERS = [d for d in ul2.DENOISERS.values() if not d.is_prefix_lm]


def _masks(denoiser, length, samples):
    """Noise masks of `samples` chunks of `length`, computed in one tf.data graph."""
    seeds = tf.data.Dataset.range(samples).map(lambda i: tf.stack([i, 7 * i + 3]))
    masks = seeds.map(lambda s: ul2.noise_span_mask(length, denoiser.noise_density, denoiser.mean_span, s))
    return np.stack(list(masks.as_numpy_iterator()))


@pytest.mark.parametrize("denoiser", SPAN_DENOISERS, ids=lambda d: d.name)
def test_span_statistics_match_configuration(denoiser):
    # The chunk length the pipeline really uses for 512-token rows with 100 sentinels.
    length = ul2.raw_chunk_length(denoiser, SEQ_LEN, 100)
    masks = _masks(denoiser, length, 600)
    starts = masks & ~np.concatenate([np.zeros((len(masks), 1), bool), masks[:, :-1]], axis=1)
    density = masks.sum() / masks.size
    mean_span = masks.sum() / starts.sum()
    assert abs(density - denoiser.noise_density) <= 0.02, density
    assert abs(mean_span - denoiser.mean_span) <= 0.1 * denoiser.mean_span, mean_span
    # Every mask starts with non-noise and alternates exactly `spans` times.
    assert not masks[:, 0].any()


def test_masks_differ_across_seeds_and_repeat_for_a_seed():
    denoiser = ul2.DENOISERS["r_3_15"]
    a = ul2.noise_span_mask(200, 0.15, 3.0, tf.constant([1, 2])).numpy()
    b = ul2.noise_span_mask(200, 0.15, 3.0, tf.constant([1, 2])).numpy()
    c = ul2.noise_span_mask(200, 0.15, 3.0, tf.constant([1, 3])).numpy()
    assert (a == b).all() and (a != c).any() and denoiser.noise_density == 0.15


def _denoised(denoiser, chunks, vocabulary, seed=0):
    features = tasks.output_features(vocabulary)
    ragged = tf.ragged.constant(chunks, dtype=tf.int32)
    ds = tf.data.Dataset.from_tensor_slices(ragged).map(lambda t: {"targets": t})
    with seqio.utils.map_seed_manager(seed):
        ds = ul2.denoise(ds, features, denoiser=denoiser)
    return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("name", list(ul2.DENOISERS))
def test_every_denoiser_reconstructs_the_original(name, vocabulary, texts):
    denoiser = ul2.DENOISERS[name]
    chunks = [vocabulary.encode(t)[:ul2.raw_chunk_length(denoiser, SEQ_LEN, 100)] for t in texts[:40]]
    chunks = [c for c in chunks if len(c) >= 2]
    sentinels = set(range(vocabulary.vocab_size - vocabulary.extra_ids, vocabulary.vocab_size))
    mode = mode_token_id(vocabulary, denoiser.mode_token)
    for chunk, example in zip(chunks, _denoised(denoiser, chunks, vocabulary)):
        inputs, targets = example["inputs"].tolist(), example["targets"].tolist()
        assert inputs[0] == mode
        if denoiser.is_prefix_lm:
            assert inputs[1:] + targets == chunk and len(targets) >= 1
        else:
            assert ul2.reconstruct(inputs[1:], targets, sentinels) == chunk
            used = [t for t in inputs if t in sentinels]
            assert used == list(range(vocabulary.vocab_size - 1, vocabulary.vocab_size - 1 - len(used), -1))
            assert [t for t in targets if t in sentinels] == used


def test_prefix_split_points_are_uniform(vocabulary):
    denoiser = ul2.DENOISERS["s_prefix"]
    chunk = list(range(10, 30))  # 20 tokens: split uniform over 1..19 (a non-empty prefix, as T5's)
    examples = _denoised(denoiser, [chunk] * 1000, vocabulary, seed=3)
    splits = np.array([len(e["inputs"]) - 1 for e in examples])
    counts = np.bincount(splits, minlength=20)
    assert splits.min() >= 1 and splits.max() <= 19
    assert counts[1:].min() > 20 and abs(splits.mean() - 10.0) < 0.6


def test_chunks_concatenate_back_to_the_token_stream(vocabulary, texts):
    denoiser = ul2.DENOISERS["x_3_50"]
    docs = [vocabulary.encode(t) for t in texts[:300]]
    ds = tf.data.Dataset.from_generator(
        lambda: ({"targets": np.asarray(d, np.int32)} for d in docs),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)},
    )
    chunk = ul2.raw_chunk_length(denoiser, SEQ_LEN, 100)
    chunks = [c["targets"].tolist() for c in ul2.concat_and_chunk(
        ds, {"targets": SEQ_LEN}, tasks.output_features(vocabulary), denoiser=denoiser, docs_per_group=16
    ).as_numpy_iterator()]
    assert max(len(c) for c in chunks) == chunk
    expected = []
    for g in range(0, len(docs), 16):  # tails shorter than 2 tokens are the only thing dropped
        flat = sum(docs[g:g + 16], [])
        pieces = [flat[i:i + chunk] for i in range(0, len(flat), chunk)]
        expected.extend(p for p in pieces if len(p) >= 2)
    assert chunks == expected


@pytest.mark.parametrize("name", list(ul2.DENOISERS))
def test_examples_fit_rows_and_respect_sentinel_budget(name):
    denoiser = ul2.DENOISERS[name]
    for packed in (64, 128, 512, 2048):
        n = ul2.raw_chunk_length(denoiser, packed, 100)
        assert ul2.example_length(denoiser, n) <= packed
        if not denoiser.is_prefix_lm:
            assert ul2.max_noise_spans(n, denoiser.noise_density, denoiser.mean_span) <= 100


def test_default_rates_follow_ul2_recipe():
    rates = ul2.UL2_DEFAULT_RATES
    assert set(rates) == set(ul2.DENOISERS)
    assert rates["s_prefix"] == pytest.approx(0.2 * sum(rates.values()))
    with pytest.raises(ValueError, match="unknown denoisers"):
        ul2.validate_rates({"q_1_1": 1.0})
    with pytest.raises(ValueError, match="too short"):
        ul2.raw_chunk_length(ul2.DENOISERS["r_3_15"], 5, 100)
