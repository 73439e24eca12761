"""StudySpec: validation names the bad value; the grid is deterministic and has the expected axes;
the worker partition is disjoint and complete; the presets parse and the paper grid is counted."""
import collections
import itertools

import pytest

from study.spec import StudySpec, load_spec, partition


def small(**changes):
    values = dict(sizes=("tiny", "xs"), pretrain_gin="gin_configs/pretrain/smoke.gin", token_budget=8192,
                  checkpoint_tokens=(2048, 4096, 8192), dp_sweep_sizes=("tiny",), pet_sweep_sizes=("xs",),
                  lora_ranks=(4, 8), prompt_lengths=(4, 16), finetune_examples=(8, 16, 32), seeds=(0, 1),
                  sweep_seeds=(0,))
    values.update(changes)
    return StudySpec(**values)


def test_grid_axes_counts_and_determinism():
    spec = small()
    grid = spec.grid()
    assert grid == small().grid()  # same spec, same order
    assert len(set(grid)) == len(grid)
    # size axis: 2 sizes x 3 methods x 3 Df x 2 seeds = 36; Dp axis (tiny, 2 more Dp, seed 0): 2 x 3 x 3 = 18;
    # PET axis (xs, seed 0, the non-reference rank and length): 2 x 3 = 6
    assert len(grid) == 36 + 18 + 6
    cells = collections.Counter((p.size, p.checkpoint_tokens, p.method, p.pet_size) for p in grid)
    assert cells[("tiny", 2048, "lora", 4)] == 3 and ("tiny", 2048, "lora", 8) not in cells
    assert cells[("xs", 8192, "prompt", 16)] == 3 and ("xs", 4096, "fmt", 0) not in cells
    assert {p.seed for p in grid if p.checkpoint_tokens == 2048} == {0}
    assert [p.size for p in grid] == sorted((p.size for p in grid), key=["tiny", "xs"].index)


def test_finetune_kwargs_set_the_pet_size_of_the_method_only():
    spec = small()
    lora = next(p for p in spec.grid() if p.method == "lora")
    kwargs = spec.finetune_kwargs(lora, "study/pretrain/tiny_aligned")
    assert kwargs["lora_rank"] == lora.pet_size and "prompt_length" not in kwargs
    assert kwargs["subset_seed"] == kwargs["seed"] == lora.seed and kwargs["epochs"] is None
    assert kwargs["checkpoint_tokens"] == lora.checkpoint_tokens and kwargs["pretrain_workdir"].endswith("tiny_aligned")


@pytest.mark.parametrize("changes, message", [
    (dict(sizes=("tiny", "huge")), "unknown size"),
    (dict(dp_sweep_sizes=("s",)), "subset of sizes"),
    (dict(pretrain_corpora=("aligned", "web")), "pretrain_corpora"),
    (dict(checkpoint_tokens=(2048, 4096)), "final checkpoint"),
    (dict(checkpoint_tokens=(2000, 8192)), "multiples of one pretraining step"),
    (dict(finetune_checkpoint_tokens=(1024,)), "not in checkpoint_tokens"),
    (dict(methods=("fmt", "adapter")), "methods"),
    (dict(lora_ranks=(4, 4)), "duplicates"),
    (dict(finetune_examples=(16,)), ">= 2 Df values"),
    (dict(seeds=(0,), sweep_seeds=(1,)), "subset of seeds"),
    (dict(num_steps=None, epochs=None), "exactly one of"),
    (dict(finetune_overrides={"method": "fmt"}), "grid sets itself"),
    (dict(metrics=("accuracy",)), "accuracy"),
    (dict(laws=("chinchilla",)), "joint laws"),
    (dict(df_law="multiplicative"), "one-input law"),
    (dict(holdout="random"), "holdout"),
    (dict(bootstrap_resamples=1), "bootstrap_resamples"),
    (dict(pretrain_gin="gin_configs/{model}.gin"), "pretrain_gin"),
    (dict(num_steps=None, max_steps=64), "set StudySpec.patience"),
    (dict(num_steps=None, max_steps=64, patience=2, min_steps=65), "min_steps=65 exceeds max_steps=64"),
    (dict(min_epochs=2), "belong to the train-until-converged rule"),
    (dict(num_steps=20, max_steps=64, patience=2), "exactly one of StudySpec.epochs / num_steps / max_steps"),
    (dict(residual="squared"), "residual='squared'"),
    (dict(isik_fit_points=1), "isik_fit_points"),
    (dict(scratch_baseline=True, dp_sweep_sizes=()), "dp_sweep_sizes is empty"),
    (dict(finetune_overrides={"from_scratch": True}), "grid sets itself"),
])
def test_validation_names_the_bad_value(changes, message):
    with pytest.raises(ValueError, match=message):
        small(**changes)


def test_run_length_rule_and_scratch_baseline_reach_the_finetune_config():
    spec = small(num_steps=None, max_steps=64, min_steps=16, min_epochs=2, patience=3, scratch_baseline=True)
    grid = spec.grid()
    scratch = [p for p in grid if p.checkpoint_tokens == 0]
    # each Dp-sweep size (tiny) from scratch: FMT only, every Df, the sweep seeds
    assert sorted((p.size, p.method, p.finetune_examples, p.seed) for p in scratch) == \
        [("tiny", "fmt", df, 0) for df in (8, 16, 32)]
    assert "from scratch" in scratch[0].label()
    kwargs = spec.finetune_kwargs(scratch[0], "/tmp/pretrain/tiny_aligned")
    assert kwargs["from_scratch"] is True and kwargs["checkpoint_tokens"] == spec.token_budget
    assert (kwargs["max_steps"], kwargs["min_steps"], kwargs["min_epochs"], kwargs["patience"]) == (64, 16, 2, 3)
    assert kwargs["epochs"] is None and kwargs["num_steps"] is None
    assert len(grid) == len(small().grid()) + 3


def test_partition_is_disjoint_complete_and_deterministic():
    grid = small().grid()
    for n in (1, 2, 3, 7):
        parts = [partition(grid, i, n) for i in range(n)]
        assert sorted(itertools.chain(*parts)) == sorted(grid)
        assert sum(map(len, parts)) == len(grid)
        assert parts == [partition(small().grid(), i, n) for i in range(n)]
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="worker"):
        partition(grid, 2, 2)
    with pytest.raises(ValueError, match="num_workers"):
        partition(grid, 0, 0)


def test_presets_parse_and_validate():
    smoke = load_spec(["gin_configs/studies/smoke.gin"])
    assert smoke.name == "smoke" and {"fmt", "lora"} <= set(smoke.methods) and len(smoke.dp_values) >= 2
    demo = load_spec(["gin_configs/studies/demo.gin"])
    assert demo.sizes == ("xs", "s", "m") and "fmt" in demo.methods
    assert max(demo.finetune_examples) / min(demo.finetune_examples) >= 16 and len(demo.seeds) == 2
    assert demo.max_steps is not None and demo.patience and demo.residual == "raw"   # the protocol of issue 17
    alignment = load_spec(["gin_configs/studies/alignment.gin"])
    assert alignment.alignment and set(alignment.pretrain_corpora) == {"aligned", "misaligned"}
    assert len({p.checkpoint_tokens for p in alignment.grid()} - {0}) >= 4
    assert alignment.scratch_baseline and len(alignment.seeds) >= 2 and 0 in {p.checkpoint_tokens for p in alignment.grid()}
    paper = load_spec(["gin_configs/studies/paper.gin"])
    assert paper.sizes == ("1b", "2b", "4b", "8b", "16b")
    grid = paper.grid()
    assert len(grid) == len(set(grid)) > 500
    assert {p.pet_size for p in grid if p.method == "lora"} == set(paper.lora_ranks)
    with pytest.raises(ValueError, match="seeds"):
        load_spec(["gin_configs/studies/smoke.gin"], ["StudySpec.seeds = []"])


def test_spec_round_trips_through_dict():
    spec = small()
    assert StudySpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown StudySpec field"):
        StudySpec.from_dict({**spec.to_dict(), "colour": "red"})
