"""Batch iterators: format, packing invariants, determinism, resume, sharding, finetuning."""
import numpy as np
import pytest

from data import pipeline, rows, tasks

SEQ_LEN = 128


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def _segments(batch):
    """(inputs, targets) token lists of every packed segment, recovered from the batch."""
    out = []
    for row in range(batch["decoder_target_tokens"].shape[0]):
        seg = batch["decoder_segment_ids"][row]
        for s in np.unique(seg[seg > 0]):
            idx = np.flatnonzero(seg == s)
            assert (np.diff(idx) == 1).all(), "segment not contiguous"
            tokens = batch["decoder_target_tokens"][row, idx]
            weights = batch["decoder_loss_weights"][row, idx]
            n_inputs = int((weights == 0).sum())
            assert (weights[:n_inputs] == 0).all() and (weights[n_inputs:] == 1).all()
            out.append((tokens[:n_inputs].tolist(), tokens[n_inputs:].tolist()))
    return out


def check_batch_format(batch, batch_size=4, seq_len=SEQ_LEN):
    assert set(batch) == set(rows.BATCH_KEYS)
    for key, value in batch.items():
        assert value.shape == (batch_size, seq_len), key
    tgt, inp = batch["decoder_target_tokens"], batch["decoder_input_tokens"]
    seg, pos = batch["decoder_segment_ids"], batch["decoder_positions"]
    ca, lw = batch["decoder_causal_attention"], batch["decoder_loss_weights"]
    assert lw.dtype == np.float32 and tgt.dtype == np.int32
    pad = seg == 0
    assert (tgt[pad] == 0).all() and (lw[pad] == 0).all() and (ca[pad] == 0).all() and (inp[pad] == 0).all()
    for row in range(tgt.shape[0]):
        for s in np.unique(seg[row][seg[row] > 0]):
            idx = np.flatnonzero(seg[row] == s)
            assert (pos[row, idx] == np.arange(len(idx))).all()
            # decoder inputs: the targets shifted right by one inside the segment, 0 first.
            assert inp[row, idx[0]] == 0 and (inp[row, idx[1:]] == tgt[row, idx[:-1]]).all()
            n_inputs = int((lw[row, idx] == 0).sum())
            # bidirectional prefix = the inputs part plus the position that reads its last token
            assert (ca[row, idx] == (np.arange(len(idx)) < n_inputs + 1)).all()
            assert tgt[row, idx[-1]] == 1  # every segment ends with EOS: nothing truncated


def test_pretrain_batches_format_and_packing(ul2_tasks, vocabulary):
    batches = _take(pipeline.pretrain_batches("test_ul2", batch_size=4, seq_len=SEQ_LEN, seed=0), 6)
    modes = {vocabulary.tokenizer.piece_to_id(t) for t in ("[NLU]", "[NLG]", "[S2S]")}
    for batch in batches:
        check_batch_format(batch)
        for inputs, targets in _segments(batch):
            assert inputs[0] in modes and inputs[-1] == 1 and targets[-1] == 1
    filled = np.mean([(b["decoder_segment_ids"] > 0).mean() for b in batches])
    assert filled > 0.8, filled


@pytest.fixture(scope="module")
def small_mixture(ul2_tasks):
    """Two denoisers keep pipeline construction cheap; the mechanics are those of the full mix."""
    return tasks.register_mixture("test_ul2_small", {"test_ul2_r_3_15": 1.0, "test_ul2_s_prefix": 1.0})


def test_resume_reproduces_the_run_and_seeds_differ(small_mixture):
    run = _take(pipeline.pretrain_batches(small_mixture, batch_size=2, seq_len=SEQ_LEN, seed=1), 7)
    resumed = _take(pipeline.pretrain_batches(small_mixture, batch_size=2, seq_len=SEQ_LEN, seed=1, start_step=4), 3)
    other = _take(pipeline.pretrain_batches(small_mixture, batch_size=2, seq_len=SEQ_LEN, seed=2), 3)
    assert _same(run[4:], resumed)
    assert not _same(run[:3], other)


def test_saved_position_resumes_bit_exact_in_constant_time(small_mixture, tmp_path):
    """The O(1) resume: a saved iterator position continues exactly where the run was, the state
    holds positions and small buffers (not the corpus), and an epoch is a permutation of the documents."""
    common = dict(batch_size=2, seq_len=SEQ_LEN, seed=1)
    run = pipeline.pretrain_batches(small_mixture, start_step=2, **common)  # a run that itself resumed by replay
    _take(run, 2)
    run.save(tmp_path / "position")
    rest = _take(run, 3)
    resumed = _take(pipeline.pretrain_batches(small_mixture, state=tmp_path / "position", **common), 3)
    assert _same(rest, resumed)
    assert _same(rest, _take(pipeline.pretrain_batches(small_mixture, start_step=4, **common), 3))  # = replay
    state_bytes = sum(p.stat().st_size for p in (tmp_path / "position").rglob("*") if p.is_file())
    assert state_bytes < 2_000_000, state_bytes
    with pytest.raises(ValueError, match="no data-position checkpoint"):
        pipeline.pretrain_batches(small_mixture, state=tmp_path / "nowhere", **common)


def test_document_stream_epochs_are_permutations(texts):
    source = tasks._document_stream_source(lambda split: [{"targets": t} for t in texts[:50]], ("train",))
    stream = source.get_dataset("train", shuffle=True, seed=3).take(100).as_numpy_iterator()
    docs = [ex["targets"].decode() for ex in stream]
    assert sorted(docs[:50]) == sorted(docs[50:]) == sorted(texts[:50])  # each epoch: every document once
    assert docs[:50] != docs[50:] and docs[:50] != texts[:50]  # reshuffled per epoch


def test_shards_differ_and_validate(small_mixture):
    kwargs = dict(batch_size=2, seq_len=SEQ_LEN, seed=0, num_shards=2)
    a = _take(pipeline.pretrain_batches(small_mixture, shard_index=0, **kwargs), 2)
    b = _take(pipeline.pretrain_batches(small_mixture, shard_index=1, **kwargs), 2)
    assert not _same(a, b)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.pretrain_batches(small_mixture, shard_index=2, **kwargs)
    with pytest.raises(ValueError, match="unknown pretraining corpus"):
        pipeline.pretrain_batches("nonesuch", batch_size=2, seq_len=SEQ_LEN, seed=0)


def _expected_examples(vocabulary, examples, seq_len=SEQ_LEN):
    half = seq_len // 2
    return sorted(
        (vocabulary.encode(e["inputs"])[: half - 1] + [1], vocabulary.encode(e["targets"])[: half - 1] + [1])
        for e in examples
    )


def test_finetune_packing_loses_and_duplicates_nothing(mt_task, vocabulary):
    batches = list(pipeline.finetune_batches(
        "test_mt", finetune_examples=60, subset_seed=0, batch_size=4, seq_len=SEQ_LEN, epochs=1))
    for batch in batches:
        check_batch_format(batch)
    got = sorted((list(i), list(t)) for b in batches for i, t in _segments(b))
    want = _expected_examples(vocabulary, tasks.finetune_subset("test_mt", 60, 0))
    assert got == [(list(i), list(t)) for i, t in want]


def test_finetune_shards_partition_the_subset(mt_task, vocabulary):
    kwargs = dict(finetune_examples=40, subset_seed=1, batch_size=4, seq_len=SEQ_LEN, epochs=1, num_shards=2)
    parts = [sorted(seg for b in pipeline.finetune_batches("test_mt", shard_index=i, **kwargs)
                    for seg in map(lambda s: (tuple(s[0]), tuple(s[1])), _segments(b))) for i in range(2)]
    want = [(tuple(i), tuple(t)) for i, t in _expected_examples(vocabulary, tasks.finetune_subset("test_mt", 40, 1))]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == want


def test_finetune_epochs_and_resume(mt_task):
    kwargs = dict(finetune_examples=30, subset_seed=0, batch_size=2, seq_len=SEQ_LEN, seed=3)
    one = list(pipeline.finetune_batches("test_mt", epochs=1, **kwargs))
    two = list(pipeline.finetune_batches("test_mt", epochs=2, **kwargs))
    segments = lambda bs: sum(len(_segments(b)) for b in bs)
    assert segments(two) == 2 * segments(one) == 60
    resumed = list(pipeline.finetune_batches("test_mt", epochs=2, start_step=3, **kwargs))
    assert _same(two[3:], resumed)


def test_eval_batches_cover_the_split_in_order(mt_task, vocabulary):
    batches = pipeline.eval_batches("test_mt", "validation", batch_size=4, seq_len=SEQ_LEN)
    got = [(list(i), list(t)) for b in batches for i, t in _segments(b)]
    raw = tasks.raw_examples("test_mt", "validation")
    assert len(got) == len(raw) == 40
    assert got[0][1] == vocabulary.encode(raw[0]["targets"])[: SEQ_LEN // 2 - 1] + [1]
    assert _same(batches, pipeline.eval_batches("test_mt", "validation", batch_size=4, seq_len=SEQ_LEN))


def test_dev_batches_are_fixed(small_mixture):
    a = pipeline.dev_batches(small_mixture, batch_size=2, seq_len=SEQ_LEN, num_batches=2)
    b = pipeline.dev_batches(small_mixture, batch_size=2, seq_len=SEQ_LEN, num_batches=2)
    assert len(a) == 2 and _same(a, b)
    check_batch_format(a[0], batch_size=2)
