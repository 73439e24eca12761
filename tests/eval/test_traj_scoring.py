"""Per-token losses across the smoke checkpoints: shapes, determinism, equality with the full
forward, resumable npz storage, corrupted vs real text, and contrastive decoding."""
import jax
import numpy as np
import pytest

from checkpoints.load import load_checkpoint_params
from eval import probes, token_scoring
from eval import trajectory_scoring as scoring
from eval.contrastive import contrastive_generate
from model.functional import apply_model, split_params
from model.methods import build_model

STEPS = [4, 8, 12, 16]


@pytest.fixture(scope="module")
def tokenizer():
    return token_scoring.load_tokenizer("en-de")


@pytest.fixture(scope="module")
def probe_set(tokenizer):
    validation = probes.validation_probe(tokenizer, probes.held_out_documents("en-de", "aligned"),
                                         num_sequences=12, prefix_tokens=8, target_tokens=24)
    corrupted = probes.corrupted_probes(validation, tokenizer, rates=(0.2, 1.0), num_sequences=12)
    return validation, corrupted


@pytest.fixture(scope="module")
def scored(smoke_pretrain_dir, probe_set, tokenizer, tmp_path_factory):
    validation, corrupted = probe_set
    path = tmp_path_factory.mktemp("traj") / "tiny.npz"
    return path, scoring.score_workdir(smoke_pretrain_dir, [validation, *corrupted], path, tokenizer=tokenizer,
                                       batch_size=16)


def test_probe_is_real_held_out_text(probe_set, tokenizer):
    validation, corrupted = probe_set
    assert validation.prefixes.shape == (12, 8) and validation.targets.shape == (12, 24)
    text = tokenizer.decode(validation.targets[0].tolist())
    assert len(text) > 20 and any(c.isalpha() for c in text)
    # corrupt_0 is the real text; 100% corruption leaves almost nothing in place.
    np.testing.assert_array_equal(corrupted[0].targets, validation.targets)
    assert [p.name for p in corrupted] == ["corrupt_0", "corrupt_20", "corrupt_100"]
    changed = np.mean(corrupted[1].targets != validation.targets)
    assert 0.1 < changed < 0.3
    assert np.mean(corrupted[2].targets != validation.targets) > 0.95
    assert corrupted[1].fingerprint() != corrupted[2].fingerprint()


def test_held_out_split_matches_pretraining_split():
    from data import corpora
    from data.tasks import LANGUAGE_NAMES, split_documents

    texts = corpora.load_monolingual("en-de", "misaligned")
    expected = [d["targets"] for d in split_documents(texts, "validation")]
    assert probes.held_out_documents("en-de", "misaligned") == expected and len(expected) > 50
    assert all(LANGUAGE_NAMES[k] == v for k, v in probes.LANGUAGE_NAMES.items())


def test_per_token_losses_shapes_and_match_full_forward(scored, probe_set, smoke_pretrain_dir, tokenizer):
    _, result = scored
    validation, _ = probe_set
    assert list(result.steps) == STEPS and list(result.tokens) == [2048, 4096, 6144, 8192]
    lp = result.log_probs["validation"]
    assert lp.shape == (4, 12, 24) and lp.dtype == np.float32
    assert np.all(np.isfinite(lp)) and np.all(lp < 0)
    assert not np.allclose(lp[0], lp[-1])  # checkpoints differ
    assert result.token_ppl().shape == (12 * 24, 4)
    # Reference: full logits of the step-16 model at every position (no gather, no bucketing).
    config, params, _ = load_checkpoint_params(smoke_pretrain_dir, step=16)
    graphdef, _, rest = split_params(build_model(config, params))
    features = token_scoring.encode_rows(validation.prefixes, validation.targets, seq_len=validation.seq_len,
                                         mode_id=token_scoring.mode_id(tokenizer))
    logits = apply_model(graphdef, params, rest, features, deterministic=True)
    full = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    picked = np.take_along_axis(full, features["decoder_target_tokens"][..., None], -1)[..., 0]
    reference = picked[features["decoder_loss_weights"] > 0].reshape(12, 24)
    np.testing.assert_allclose(lp[-1], reference, rtol=1e-4, atol=1e-4)


def test_rows_encode_prefix_lm_format(tokenizer):
    mode = token_scoring.mode_id(tokenizer)
    f = token_scoring.encode_rows([[50, 51, 52, 53, 54], [50]], [[60, 61], [60, 61]], seq_len=8, mode_id=mode)
    np.testing.assert_array_equal(f["decoder_target_tokens"], [[mode, 51, 52, 53, 54, 1, 60, 61],  # prefix cut from the left
                                                               [mode, 50, 1, 60, 61, 0, 0, 0]])
    np.testing.assert_array_equal(f["decoder_input_tokens"][1], [0, mode, 50, 1, 60, 0, 0, 0])
    np.testing.assert_array_equal(f["decoder_loss_weights"][1], [0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(f["decoder_causal_attention"][1], [1, 1, 1, 1, 0, 0, 0, 0])  # inputs + 1 (seqio)
    np.testing.assert_array_equal(f["decoder_segment_ids"][1], [1, 1, 1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="does not fit seq_len"):
        token_scoring.encode_rows([[5]], [list(range(3, 10))], seq_len=8, mode_id=mode)


def test_scores_are_stored_and_not_rescored(scored, probe_set, smoke_pretrain_dir, tokenizer, monkeypatch):
    path, first = scored
    validation, corrupted = probe_set

    class Refuse:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a stored checkpoint was scored again")

    monkeypatch.setattr(scoring, "TokenScorer", Refuse)
    again = scoring.score_workdir(smoke_pretrain_dir, [validation, *corrupted], path, tokenizer=tokenizer)
    np.testing.assert_array_equal(again.log_probs["validation"], first.log_probs["validation"])
    monkeypatch.undo()
    # The npz alone describes the size: analyses can run from it without checkpoints or JAX.
    from eval.trajectory_data import load_size_scores

    loaded = load_size_scores(path)
    assert loaded.model == "tiny" and loaded.params == first.params and list(loaded.steps) == STEPS
    np.testing.assert_array_equal(loaded.tokens, first.tokens)
    np.testing.assert_allclose(loaded.dev_loss, first.dev_loss)
    assert sorted(loaded.log_probs) == sorted(first.log_probs)
    np.testing.assert_array_equal(loaded.log_probs["corrupt_20"], first.log_probs["corrupt_20"])
    with pytest.raises(ValueError, match="no trajectory scores"):
        load_size_scores(path.with_name("missing.npz"))
    # Determinism: a fresh file scores the same values; max_checkpoints keeps the first and the last.
    fresh = scoring.score_workdir(smoke_pretrain_dir, [validation], path.with_name("fresh.npz"), tokenizer=tokenizer,
                                  batch_size=16, max_checkpoints=2)
    assert list(fresh.steps) == [4, 16]
    np.testing.assert_array_equal(fresh.log_probs["validation"], first.log_probs["validation"][[0, 3]])


def test_corrupted_text_perplexity_exceeds_real(scored):
    _, result = scored
    real = result.ppl("corrupt_0")[-1]
    assert result.ppl("corrupt_20")[-1] > real
    assert result.ppl("corrupt_100")[-1] > real
    # Training lowers real-text perplexity.
    assert result.ppl("validation")[-1] < result.ppl("validation")[0]


def _contrastive_reference(small, large, prompts, new_tokens, mode, allowed):
    """Greedy contrastive decoding by a full forward of both models per token (no KV cache)."""
    generated = np.zeros((len(prompts), 0), np.int32)
    for _ in range(new_tokens):
        width = generated.shape[1]
        features = token_scoring.encode_rows(prompts, np.concatenate([generated, np.zeros((len(prompts), 1), np.int32)], 1),
                                             seq_len=prompts.shape[1] + 3 + width, mode_id=mode)
        at = prompts.shape[1] + 2 + width  # the input position whose logits predict the next token
        probs = [jax.nn.softmax(m(features["decoder_input_tokens"], segment_ids=features["decoder_segment_ids"],
                                  causal_attention=features["decoder_causal_attention"])[:, at]) for m in (small, large)]
        diff = np.where(np.isin(np.arange(probs[0].shape[-1]), allowed), np.maximum(np.asarray(probs[0] - probs[1]), 0), 0)
        generated = np.concatenate([generated, diff.argmax(-1)[:, None].astype(np.int32)], 1)
    return generated


def test_contrastive_decoding_follows_positive_difference(smoke_pretrain_dir, probe_set, tokenizer):
    small = scoring.load_model(smoke_pretrain_dir, 4)
    large = scoring.load_model(smoke_pretrain_dir, 16)
    validation, _ = probe_set
    prompts = validation.prefixes[:4, :5]
    allowed = probes.ordinary_ids(tokenizer)
    kwargs = dict(new_tokens=3, mode_id=token_scoring.mode_id(tokenizer), allowed_ids=allowed)
    greedy = contrastive_generate(small, large, prompts, **kwargs)
    assert greedy.shape == (4, 3) and np.all(np.isin(greedy, allowed))
    np.testing.assert_array_equal(greedy, contrastive_generate(small, large, prompts, **kwargs))
    sampled = contrastive_generate(small, large, prompts, top_p=0.9, seed=1, **kwargs)
    assert sampled.shape == (4, 3) and np.all(np.isin(sampled, allowed))
    # Every greedy token is the argmax of max(p_small - p_large, 0) under a full forward of both models.
    np.testing.assert_array_equal(greedy, _contrastive_reference(small, large, prompts, 3, kwargs["mode_id"], allowed))
    with pytest.raises(ValueError, match="top_p"):
        contrastive_generate(small, large, prompts, top_p=1.5, **kwargs)


def test_discover_workdirs(smoke_pretrain_dir, tmp_path):
    assert scoring.discover_workdirs(smoke_pretrain_dir) == {smoke_pretrain_dir.name: smoke_pretrain_dir}
    study = tmp_path / "study" / "pretrain"
    study.mkdir(parents=True)
    (study / "tiny_aligned").symlink_to(smoke_pretrain_dir)
    assert scoring.discover_workdirs(tmp_path / "study") == {"pretrain/tiny_aligned": study / "tiny_aligned"}
    with pytest.raises(ValueError, match="no pretraining workdir"):
        scoring.discover_workdirs(tmp_path / "study" / "pretrain" / "tiny_aligned" / "checkpoints")
