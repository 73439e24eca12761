"""finetune.run: bad configs fail before any compute with a clear ValueError; a run (CLI) writes
its files and exactly one complete results row; a re-run is a no-op; a failed run leaves no done row."""
import importlib.util
import json
import math

import gin
import numpy as np
import pytest

from finetune import run as ft_run
from finetune.adapters import load_adapter_model
from finetune.config import FinetuneConfig
from finetune.results import RESULT_COLUMNS, ResultsStore
from train.export import load_exported_model

HAVE_EVAL = importlib.util.find_spec("eval.evaluate") is not None


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


@pytest.fixture
def evaluation(monkeypatch):
    """The real eval.evaluate when it is installed; otherwise a minimal stand-in (test PPL by the
    loop's own dev scorer, fixed BLEU/chrF) so the run plumbing is still tested."""
    if HAVE_EVAL:
        return "eval.evaluate"

    def stand_in(model, config):
        from data.pipeline import eval_batches
        from finetune import loop
        from finetune.methods import MethodSpec, split_model
        spec = MethodSpec.from_config(config)
        steps = loop.compiled_steps(model, spec, parameter_scale=config.use_parameter_scale)
        _, params, rest = split_model(model, spec.method)
        batches = eval_batches(config.task, "test", batch_size=config.eval_batch_size, seq_len=config.seq_len,
                               max_batches=1)
        log_ppl = loop.dev_log_ppl(steps.eval_step, params, rest, batches)
        test = {"ppl": math.exp(log_ppl), "log_ppl": log_ppl, "mean_log_likelihood": -log_ppl, "target_tokens": 1,
                "bleu": 1.0, "chrf": 2.0, "rouge_l": None, "signatures": {"bleu": "stand-in"}, "examples": 4}
        return test, {"mt_de_en.log_ppl": log_ppl}

    monkeypatch.setattr(ft_run, "evaluate_model", stand_in)
    return "stand-in"


@pytest.mark.parametrize("changes, message", [
    (dict(method="adapters"), r"unknown finetuning method 'adapters'; valid: \['fmt', 'lora', 'prompt'\]"),
    (dict(lora_rank=64), r"lora_rank=64 exceeds the layer width d_model=32"),
    (dict(method="prompt", prompt_length=250), r"prompt_length=250 \+ seq_len=64 = 314 exceeds max_len=256"),
    (dict(finetune_examples=10**7), r"finetune_examples=10000000 is larger than the \d+ training examples"),
    (dict(checkpoint_step=5), r"no checkpoint with step 5 .*available: .*step 16"),
    (dict(pretrain_workdir="/nonexistent/pretrain"), r"pretrain_workdir='/nonexistent/pretrain' does not exist"),
    (dict(task="mt_en_zh"), r"task 'mt_en_zh' uses (a )?vocabulary .*pretrained on pair 'en-de'"),
    (dict(epochs=1), r"exactly one of FinetuneConfig.epochs"),
    (dict(task="mt_en_fr"), r"unknown finetuning task 'mt_en_fr'"),
])
def test_bad_inputs_raise_clear_value_errors(smoke_pretrain_dir, changes, message, tmp_path):
    config = small_config(smoke_pretrain_dir, **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
    if "checkpoint_step" in changes:  # run_finetune refuses before claiming anything
        store = ResultsStore(tmp_path / "study")
        with pytest.raises(ValueError):
            ft_run.run_finetune(config, tmp_path / "run", store=store, progress=False)
        assert store.rows(None) == [] and not (tmp_path / "run").exists()


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


def test_cli_run_writes_one_complete_row_and_rerun_is_a_noop(smoke_pretrain_dir, tmp_path, evaluation, monkeypatch):
    study, workdir = tmp_path / "study", tmp_path / "run"
    config = small_config(smoke_pretrain_dir)
    params = [f"--gin_param=FinetuneConfig.{k}={json.dumps(v) if isinstance(v, str) else v}"
              for k, v in dataclasses_items(config)]
    code = ft_run.main(["--gin_file=gin_configs/finetune/lora.gin", *params, f"--workdir={workdir}",
                        f"--study_dir={study}", f"--export_merged={tmp_path / 'merged'}", "--no_progress"])
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
    store = ResultsStore(study)
    rows = store.rows(None)
    assert len(rows) == 1 and rows[0]["status"] == "done" and rows[0]["config"] == config.to_dict()
    row = rows[0]
    for name, _ in RESULT_COLUMNS:
        if name != "rouge_l":  # MT task: ROUGE-L does not apply
            assert row[name] is not None, name
    assert row["method"] == "lora" and row["pet_size"] == 8 and row["model_name"] == "tiny"
    assert row["pretrain_tokens"] == 8192 and row["pretrain_corpus"] == "aligned" and row["finetune_examples"] == 32
    assert row["best_step"] in (2, 4) and row["dev_ppl"] > 1 and row["trainable_params"] > 0
    assert math.isclose(row["test_log_ppl"], math.log(row["test_ppl"]))
    assert json.loads(row["zero_shot_json"]), "zero-shot metrics recorded"
    assert json.loads(row["extra_metrics_json"])["optimizer_state_bytes"] > 0
    result_json = json.loads((workdir / "result.json").read_text())
    assert result_json["result"]["best_step"] == row["best_step"]

    # Re-running the same configuration computes nothing and returns the stored row.
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(ft_run, "_train_and_evaluate", must_not_run)
    again = ft_run.run_finetune(config, tmp_path / "elsewhere", store=store, progress=False)
    assert again.best_step == row["best_step"] and again.dev_ppl == row["dev_ppl"]
    assert ft_run.run_finetune(config, workdir, progress=False).test_ppl == row["test_ppl"]  # result.json
    assert store.rows(None) == rows


def dataclasses_items(config):
    import dataclasses
    return [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)]


def test_a_run_that_dies_leaves_no_done_row(smoke_pretrain_dir, tmp_path, monkeypatch):
    def broken_evaluation(model, config):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(ft_run, "evaluate_model", broken_evaluation)
    store = ResultsStore(tmp_path / "study")
    config = small_config(smoke_pretrain_dir, num_steps=2)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        ft_run.run_finetune(config, tmp_path / "run", store=store, progress=False)
    assert not store.has_result(config.to_dict())
    assert [r["status"] for r in store.rows(None)] == ["failed"]
    assert "evaluation crashed" in store.failures()[0]["error"]
    assert not (tmp_path / "run" / "result.json").exists()
