"""FMT / LoRA / prompt finetuning on the shared smoke checkpoint: what trains, what stays frozen,
overfitting 32 examples, best-by-dev-PPL selection, early stopping, adapters and merged export.
All on one device of the 8 simulated ones (tests/finetune/test_sharded_finetuning.py: on 8)."""
import math

import jax
import numpy as np
import pytest

from data.pipeline import eval_batches, finetune_batches
from checkpoints import adapters
from checkpoints.exports import load_exported_model
from checkpoints.load import load_checkpoint_params
from finetune import training
from finetune.stopping import StoppingRule
from finetune.costs import method_costs
from model.methods import MethodSpec, base_params_of, build_model
from model.methods import split_trainable as split_model
from train.partitioning import make_mesh

MESH = make_mesh(devices=jax.devices()[:1])

OVERFIT_EXAMPLES = 32
SEQ_LEN, BATCH = 64, 4  # the 32 examples pack into ~4 rows: a step is about one pass
# Method -> (spec, peak learning rate, Adafactor parameter scale, steps). Rates and step counts
# picked on the smoke checkpoint so the overfitting thresholds below are met with a margin of
# ~0.5 nats each (the defaults in finetune.config are for real runs, not for 60 steps).
METHODS = {
    "fmt": (MethodSpec("fmt"), 3e-2, True, 60),
    "lora": (MethodSpec("lora", lora_rank=8), 3e-2, False, 90),
    "prompt": (MethodSpec("prompt", prompt_length=32), 0.3, False, 60),
}
OVERFIT_STEPS = max(m[3] for m in METHODS.values())


@pytest.fixture(scope="module")
def base(smoke_pretrain_dir):
    """Pretrained params (step 16), 60 training batches over 32 examples, one epoch of them, dev batches."""
    config, params, _ = load_checkpoint_params(smoke_pretrain_dir, step=16)
    common = dict(finetune_examples=OVERFIT_EXAMPLES, subset_seed=0, batch_size=BATCH, seq_len=SEQ_LEN, seed=0)
    train = list(finetune_batches("mt_en_de", epochs=OVERFIT_STEPS + 10, **common))[:OVERFIT_STEPS]
    assert len(train) == OVERFIT_STEPS
    epoch = list(finetune_batches("mt_en_de", epochs=1, **common))
    dev = eval_batches("mt_en_de", "validation", batch_size=BATCH, seq_len=SEQ_LEN, max_batches=1)
    return {"config": config, "params": params, "train": train, "epoch": epoch, "dev": dev}


def finetune(model, spec, batches, dev, **kwargs):
    return training.finetune(model, spec, batches, dev, mesh=MESH, progress=False, **kwargs)


def program(model, method):
    spec, _, scale, _ = METHODS[method]
    config = training.TrainConfig(batch_size=BATCH, seq_len=SEQ_LEN, num_steps=1)
    return training.finetune_program(model.config, spec, MESH, config, parameter_scale=scale)


def mean_loss(model, method, batches):
    """Token-level mean CE of `model` over `batches` (target tokens only), with the cached eval step."""
    _, params, rest = split_model(model, method)
    return training.dev_log_ppl(program(model, method).eval_fn, params, rest, batches, MESH)


def unigram_entropy(batches):
    """Entropy of the target-token frequencies: the train loss of the best context-free predictor."""
    tokens = np.concatenate([b["decoder_target_tokens"][b["decoder_loss_weights"] > 0] for b in batches])
    _, counts = np.unique(tokens, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def trained(base):
    """Each method trained on the 32 examples (dev PPL only at the end)."""
    out = {}
    for name, (spec, lr, scale, steps) in METHODS.items():
        model = build_model(base["config"], base["params"], spec, seed=0)
        before = jax.tree.map(np.array, base_params_of(model))
        start_loss = mean_loss(model, name, base["epoch"])
        result = finetune(model, spec, base["train"][:steps], base["dev"], peak_learning_rate=lr,
                          parameter_scale=scale, eval_every_steps=steps)
        out[name] = {"model": model, "before": before, "result": result, "start_loss": start_loss,
                     "end_loss": mean_loss(result.model, name, base["epoch"])}
    return out


def _equal_trees(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_pet_leaves_base_weights_bitwise_unchanged_and_fmt_changes_them(trained):
    for name in ("lora", "prompt"):
        entry = trained[name]
        assert _equal_trees(entry["before"], base_params_of(entry["result"].model)), name
        assert _equal_trees(entry["before"], base_params_of(entry["model"])), name  # input model untouched
    fmt = trained["fmt"]
    changed = [not np.array_equal(a, np.asarray(b)) for a, b in
               zip(jax.tree.leaves(fmt["before"]), jax.tree.leaves(base_params_of(fmt["result"].model)))]
    assert all(changed), "FMT must update every base weight"
    # and the PET parameters themselves did move
    lora_b = [np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(
        split_model(trained["lora"]["result"].model, "lora")[1])[0] if "lora_b" in str(p)]
    assert lora_b and all(np.abs(b).max() > 0 for b in lora_b)


def test_trainable_params_and_optimizer_state_are_a_tiny_fraction_of_fmt(trained):
    # (On `tiny` no matrix reaches Adafactor's min_dim_size_to_factor=128, so FMT's second moments
    # are unfactored; on larger sizes FMT's state is factored and the ratio is larger: see
    # bench/finetune_speed.py.)
    fmt = trained["fmt"]["result"]
    assert fmt.trainable_params == sum(np.size(x) for x in jax.tree.leaves(trained["fmt"]["before"]))
    for name in ("lora", "prompt"):
        result = trained[name]["result"]
        assert 0 < result.trainable_params < 0.05 * fmt.trainable_params, name
        assert 0 < result.optimizer_state_bytes < 0.05 * fmt.optimizer_state_bytes, name
    # method_costs predicts the same numbers without training
    for name, (spec, _, scale, _) in METHODS.items():
        from train.optimizer import schedule_in_state_optimizer
        costs = method_costs(trained[name]["model"], name,
                             schedule_in_state_optimizer(multiply_by_parameter_scale=scale))
        assert costs["trainable_params"] == trained[name]["result"].trainable_params
        assert costs["optimizer_state_bytes"] == trained[name]["result"].optimizer_state_bytes


def test_each_method_overfits_32_examples(base, trained):
    # Thresholds on the token CE over the 32 training examples (one pass), starting from ~9.3
    # nats (the 16-step smoke model is close to uniform over 8192 tokens: ln 8192 = 9.0):
    # - FMT must beat the unigram entropy of these targets (~4.6 nats): no context-free
    #   predictor can, so the model has memorised the examples themselves.
    # - LoRA (rank 8 on a 32-wide model, 2.5% of the weights) must close half the gap between
    #   its start and that entropy: it memorises too, with less capacity (90 steps).
    # - The prompt can only steer a frozen, nearly untrained 2-layer model through attention; we
    #   require a clear drop of 0.3 nats (26% lower train perplexity), far above step-to-step noise
    #   (the loss is deterministic here), not memorisation.
    entropy = unigram_entropy(base["epoch"])
    assert 3.0 < entropy < 6.0
    fmt, lora, prompt = trained["fmt"], trained["lora"], trained["prompt"]
    assert fmt["end_loss"] < entropy, (fmt["start_loss"], fmt["end_loss"], entropy)
    assert lora["end_loss"] < (lora["start_loss"] + entropy) / 2, (lora["start_loss"], lora["end_loss"], entropy)
    assert prompt["end_loss"] < prompt["start_loss"] - 0.3, (prompt["start_loss"], prompt["end_loss"])


def test_runs_sharing_model_method_and_shapes_reuse_the_compiled_steps(base, trained):
    """Another seed, learning rate and run length: the same program, compiled once (the schedule
    lives in the optimizer state)."""
    spec, lr, scale, _ = METHODS["lora"]
    model = build_model(base["config"], base["params"], spec, seed=1)  # new model, same structure
    steps = program(model, "lora")
    assert steps is program(trained["lora"]["model"], "lora")
    before = (steps.train.step_fn._cache_size(), steps.eval_fn._cache_size())
    finetune(model, spec, base["train"][:3], base["dev"], peak_learning_rate=lr / 3, parameter_scale=scale,
             eval_every_steps=2, seed=1)
    assert (steps.train.step_fn._cache_size(), steps.eval_fn._cache_size()) == before
    assert before[0] == 1  # (the eval step also saw mean_loss's params, not yet placed by the trainer)


def test_the_learning_rate_follows_the_cosine_schedule_of_the_run(base):
    spec, lr, scale, _ = METHODS["lora"]
    model = build_model(base["config"], base["params"], spec, seed=0)
    records = []
    finetune(model, spec, base["train"][:5], base["dev"], peak_learning_rate=lr, final_learning_fraction=0.1,
             parameter_scale=scale, eval_every_steps=5, log_fn=records.append)
    from train.optimizer import learning_rate_schedule
    expected = learning_rate_schedule(5, peak_learning_rate=lr, final_learning_rate=lr * 0.1)
    np.testing.assert_allclose([r["learning_rate"] for r in records], [float(expected(s)) for s in range(5)],
                               rtol=1e-6)


def test_best_step_is_the_lowest_dev_ppl_and_early_stopping_stops(base, monkeypatch):
    spec, lr, scale, _ = METHODS["lora"]
    model = build_model(base["config"], base["params"], spec, seed=0)
    scripted = iter([5.0, 3.0, 4.0, 3.5, 2.0, 1.0])  # dev log-PPL at steps 2, 4, 6, 8, ...
    monkeypatch.setattr(training, "dev_log_ppl", lambda *args: next(scripted))
    records = []
    result = finetune(model, spec, base["train"][:12], base["dev"], peak_learning_rate=lr, parameter_scale=scale,
                      eval_every_steps=2, stopping=StoppingRule.fixed(12, patience=2), log_fn=records.append)
    assert [h["step"] for h in result.history] == [2, 4, 6, 8]
    assert result.best_step == 4 and result.best_dev_ppl == pytest.approx(math.exp(3.0))
    assert result.stopped_early and result.steps_run == 8 and len(records) == 8
    assert result.stop_reason == "patience" and len(result.train_losses) == 8
    monkeypatch.undo()
    without_patience = finetune(model, spec, base["train"][:6], base["dev"], peak_learning_rate=lr,
                                parameter_scale=scale, eval_every_steps=2)
    assert not without_patience.stopped_early and without_patience.steps_run == 6
    assert without_patience.stop_reason == "fixed_length"


def test_stopping_rule_trains_at_least_the_floor_then_stops_on_patience():
    rule = StoppingRule.until_converged(max_steps=50, patience=2, min_steps=10, min_epochs=3, steps_per_epoch=5)
    assert (rule.min_steps, rule.max_steps) == (15, 50)       # 3 epochs of 5 steps beat 10 steps
    assert rule.stop_reason(14, evals_since_best=9) is None   # below the floor patience does not count
    assert rule.stop_reason(16, evals_since_best=1) is None
    assert rule.stop_reason(16, evals_since_best=2) == "patience"
    assert rule.stop_reason(50, evals_since_best=0) == "max_steps"
    assert StoppingRule.fixed(8).stop_reason(8, 0) == "fixed_length"
    assert StoppingRule.until_converged(max_steps=20, patience=1, min_epochs=9, steps_per_epoch=5).min_steps == 20
    with pytest.raises(ValueError, match="needs a patience"):
        StoppingRule.until_converged(max_steps=20, patience=None)
    with pytest.raises(ValueError, match="min_steps=30 exceeds max_steps=20"):
        StoppingRule(max_steps=20, min_steps=30)
    with pytest.raises(ValueError, match="patience=0 must be None or an integer >= 1"):
        StoppingRule(max_steps=20, patience=0)


def test_best_params_are_exactly_those_of_the_best_step(base, monkeypatch):
    spec, lr, scale, _ = METHODS["prompt"]
    model = build_model(base["config"], base["params"], spec, seed=0)
    captured = {}

    scripted = iter([2.0, 1.0, 3.0])  # best at the 2nd evaluation (step 4)
    monkeypatch.setattr(training, "dev_log_ppl", lambda eval_fn, params, rest, batches, mesh: (
        captured.setdefault(len(captured), jax.tree.map(np.array, params)), next(scripted))[1])
    result = finetune(model, spec, base["train"][:6], base["dev"], peak_learning_rate=lr, parameter_scale=scale,
                      eval_every_steps=2)
    assert result.best_step == 4
    assert _equal_trees(captured[1], split_model(result.model, "prompt")[1])
    assert not _equal_trees(captured[2], split_model(result.model, "prompt")[1])


def _logits(model, batch):
    return np.asarray(model(batch["decoder_input_tokens"], segment_ids=batch["decoder_segment_ids"],
                            positions=batch["decoder_positions"],
                            causal_attention=batch["decoder_causal_attention"]))


def test_adapter_round_trip_reproduces_outputs(base, trained, tmp_path, smoke_pretrain_dir):
    batch = base["epoch"][0]
    full_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(base["params"]))
    for name in ("lora", "prompt"):
        spec = METHODS[name][0]
        model = trained[name]["result"].model
        path = adapters.save_adapter(model, spec, tmp_path / name / "adapter.safetensors",
                                     base={"workdir": str(smoke_pretrain_dir), "step": 16, "tokens_seen": 8192})
        assert path.stat().st_size < 0.1 * full_bytes, "an adapter holds only the method's parameters"
        assert not list(path.parent.glob(".*tmp*")), "no temporary files left behind"
        expected = _logits(model, batch)
        from_params = adapters.load_adapter_model(path, base["params"])
        np.testing.assert_array_equal(_logits(from_params, batch), expected)
        if name == "lora":  # base weights read from the checkpoint the adapter records (once: slow-ish)
            np.testing.assert_array_equal(_logits(adapters.load_adapter_model(path), batch), expected)
        plain = build_model(base["config"], base["params"], MethodSpec("fmt"))
        onto_base = adapters.load_adapter(plain, path.parent)  # eval.run --adapter=RUN_DIR
        np.testing.assert_array_equal(_logits(onto_base, batch), expected)
        assert not np.allclose(_logits(plain, batch), expected), "the adapter must change the outputs"
    with pytest.raises(ValueError, match="has no adapter"):
        adapters.save_adapter(trained["fmt"]["result"].model, MethodSpec("fmt"), tmp_path / "x.safetensors")


def test_merged_lora_export_reproduces_outputs(base, trained, tmp_path):
    batch = base["epoch"][0]
    model = trained["lora"]["result"].model
    out = adapters.export_finetuned(model, tmp_path / "merged", provenance={"note": "test"})
    expected = _logits(model, batch)
    for fmt in ("orbax", "safetensors"):
        merged = load_exported_model(out, fmt)
        assert merged.lora is None
        np.testing.assert_allclose(_logits(merged, batch), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="already exists"):
        adapters.export_finetuned(model, out)
    with pytest.raises(ValueError, match="prompt"):
        adapters.export_finetuned(trained["prompt"]["result"].model, tmp_path / "prompt_export")
