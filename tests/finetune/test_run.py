"""finetune.run: bad configs fail before any compute with a clear ValueError; a run (CLI) writes
its files and one complete, validated result; a re-run is a no-op; a run that dies leaves no result."""
import dataclasses
import json
import math

import gin
import numpy as np
import pytest

from checkpoints.adapters import load_adapter_model
from checkpoints.exports import load_exported_model
from finetune import run as ft_run
from finetune.config import FinetuneConfig
from finetune.result import RunResult


def small_config(pretrain_dir, **changes):
    """4 LoRA steps on 32 examples (same shapes and settings as test_methods_loop: compiled once)."""
    values = dict(pretrain_workdir=str(pretrain_dir), checkpoint_step=16, task="mt_en_de", method="lora",
                  lora_rank=8, learning_rate=3e-2, parameter_scale=False, finetune_examples=32, batch_size=4,
                  seq_len=64, epochs=None, num_steps=4, eval_every_steps=2, patience=None, dev_max_batches=1,
                  eval_batch_size=4, eval_max_examples=4, max_new_tokens=4)
    values.update(changes)
    return FinetuneConfig(**values)


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("changes, message", [
    (dict(method="adapters"), r"unknown finetuning method 'adapters'; valid: \['fmt', 'lora', 'prompt'\]"),
    (dict(lora_rank=64), r"lora_rank=64 exceeds the layer width d_model=32"),
    (dict(method="prompt", prompt_length=250), r"prompt_length=250 \+ seq_len=64 = 314 exceeds max_len=256"),
    (dict(finetune_examples=10**7), r"finetune_examples=10000000 is larger than the \d+ training examples"),
    (dict(checkpoint_step=5), r"no checkpoint with step 5 .*available: .*step 16"),
    (dict(pretrain_workdir="/nonexistent/pretrain"), r"pretrain_workdir='/nonexistent/pretrain' does not exist"),
    (dict(task="mt_en_zh"), r"task 'mt_en_zh' uses vocabulary \S*en-zh.model but the checkpoint was pretrained "
                            r"with \S*en-de.model"),
    (dict(epochs=1), r"exactly one of FinetuneConfig.epochs / num_steps / max_steps"),
    (dict(num_steps=None, max_steps=8), r"max_steps=8 trains until dev PPL stops improving: set patience"),
    (dict(min_steps=4), r"min_steps \(4\) and min_epochs \(None\) belong to the train-until-converged rule"),
    (dict(num_steps=None, max_steps=8, patience=1, min_steps=9), r"min_steps=9 exceeds max_steps=8"),
    (dict(from_scratch=True), r"from_scratch .* method must be 'fmt', got 'lora'"),
    (dict(task="mt_en_fr"), r"unknown finetuning task 'mt_en_fr'"),
])
def test_bad_inputs_raise_clear_value_errors(smoke_pretrain_dir, changes, message, tmp_path):
    config = small_config(smoke_pretrain_dir, **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
    if "checkpoint_step" in changes:  # run_finetune refuses before writing anything
        with pytest.raises(ValueError):
            ft_run.run_finetune(config, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def test_cli_bad_rank_exits_2_naming_it(smoke_pretrain_dir, tmp_path, capsys):
    code = ft_run.main(["--gin_file=gin_configs/finetune/lora.gin", f"--workdir={tmp_path / 'run'}",
                        f"--gin_param=FinetuneConfig.pretrain_workdir='{smoke_pretrain_dir}'",
                        "--gin_param=FinetuneConfig.checkpoint_step=16", "--gin_param=FinetuneConfig.lora_rank=33"])
    assert code == 2
    assert "lora_rank=33 exceeds the layer width d_model=32" in capsys.readouterr().err


def test_cli_export_merged_refuses_a_non_lora_run_before_training(smoke_pretrain_dir, tmp_path, capsys):
    code = ft_run.main(["--gin_file=gin_configs/finetune/fmt.gin", f"--workdir={tmp_path / 'run'}",
                        f"--gin_param=FinetuneConfig.pretrain_workdir='{smoke_pretrain_dir}'",
                        "--gin_param=FinetuneConfig.checkpoint_step=16", f"--export_merged={tmp_path / 'merged'}"])
    assert code == 2
    assert "--export_merged is for LoRA runs; this run's method is 'fmt'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "merged").exists()


def test_cli_run_writes_one_complete_result_and_rerun_is_a_noop(smoke_pretrain_dir, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    config = small_config(smoke_pretrain_dir)
    params = [f"--gin_param=FinetuneConfig.{f.name}={json.dumps(v) if isinstance(v := getattr(config, f.name), str) else v}"
              for f in dataclasses.fields(config)]
    code = ft_run.main(["--gin_file=gin_configs/finetune/lora.gin", *params, f"--workdir={workdir}",
                        f"--export_merged={tmp_path / 'merged'}", "--no_progress"])
    assert code == 0
    merged = load_exported_model(tmp_path / "merged", "safetensors")  # the LoRA update merged in
    adapted = load_adapter_model(workdir / "adapter.safetensors")
    tokens = np.arange(1, 17, dtype=np.int32)[None]
    np.testing.assert_allclose(np.asarray(merged(tokens)), np.asarray(adapted(tokens)), rtol=1e-4, atol=1e-4)
    for name in ("config.gin", "operative_config.gin", "config.json", "metrics.jsonl", "adapter.safetensors",
                 "result.json"):
        assert (workdir / name).is_file(), name
    assert "FinetuneConfig.lora_rank = 8" in (workdir / "operative_config.gin").read_text()
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and "dev_ppl" in lines[1] and "dev_ppl" in lines[3]
    record = json.loads((workdir / "result.json").read_text())
    assert record["config"] == config.to_dict(relative_to=workdir)  # pretrain_workdir relative to the run
    assert (workdir / record["config"]["pretrain_workdir"]).resolve() == smoke_pretrain_dir.resolve()
    result = RunResult(**record["result"])
    row = result.to_row()  # every required field present and valid
    assert row["method"] == "lora" and row["pet_size"] == 8 and row["model_name"] == "tiny" and row["rouge_l"] is None
    assert row["pretrain_tokens"] == 8192 and row["pretrain_corpus"] == "aligned" and row["finetune_examples"] == 32
    assert row["best_step"] in (2, 4) and row["dev_ppl"] > 1 and row["trainable_params"] > 0
    assert row["bleu"] is not None and row["chrf"] is not None
    assert math.isclose(row["test_log_ppl"], math.log(row["test_ppl"]))
    assert result.zero_shot, "zero-shot metrics recorded"
    assert result.extra_metrics["optimizer_state_bytes"] > 0

    # Re-running the same configuration computes nothing and returns the recorded result.
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(ft_run, "_train", must_not_run)
    assert ft_run.run_finetune(config, workdir, progress=False) == result


def test_train_until_converged_from_scratch_records_how_long_and_why(smoke_pretrain_dir, tmp_path):
    """The rule's run: at least min_epochs epochs, then patience; the result records steps run,
    epochs seen and the stop reason; from scratch, it records 0 pretraining tokens."""
    config = small_config(smoke_pretrain_dir, method="fmt", learning_rate=None, parameter_scale=None, num_steps=None,
                          max_steps=12, min_epochs=1, patience=1, from_scratch=True)
    assert config.to_dict()["from_scratch"] is True and config.to_dict()["max_steps"] == 12
    assert not {"max_steps", "min_steps", "min_epochs", "from_scratch"} & set(small_config(smoke_pretrain_dir).to_dict())
    result = ft_run.run_finetune(config, tmp_path / "run", progress=False)
    extra = result.extra_metrics
    per_epoch = extra["steps_per_epoch"]
    assert 1 <= per_epoch <= 8  # 32 examples, batch 4, packed
    assert per_epoch <= extra["steps_run"] <= 12 and extra["epochs_seen"] == extra["steps_run"] / per_epoch
    assert extra["stop.patience"] + extra["stop.max_steps"] == 1 and extra["stop.fixed_length"] == 0
    assert result.pretrain_tokens == 0
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["stop_reason"] in ("patience", "max_steps")
    pretrained = ft_run.run_finetune(config.replace(from_scratch=False), tmp_path / "pretrained", progress=False)
    assert pretrained.pretrain_tokens == 8192 and pretrained.test_log_ppl < result.test_log_ppl


def test_a_run_that_dies_leaves_no_result(smoke_pretrain_dir, tmp_path, monkeypatch):
    def broken_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(ft_run, "evaluate_task", broken_evaluation)
    config = small_config(smoke_pretrain_dir, num_steps=2)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        ft_run.run_finetune(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "result.json").exists()
