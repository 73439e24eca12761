"""Faults around a finetuning workdir (issue 19, case 4): a workdir holding a different run is
refused and kept byte-identical (`--overwrite` replaces it), the same run is a no-op, also after
the workdir and its pretraining were moved together; a workdir that is a file is one line."""
import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from faults_helpers import copy_tree, one_error_line, snapshot
from finetune import run as ft_run
from finetune.config import FinetuneConfig
from finetune.result import RunResult
from finetune.workdir import claim_workdir, identity


def lora_config(pretrain_dir: Path, **changes) -> FinetuneConfig:
    """4 LoRA steps on 32 examples (tests/finetune/test_run.py's shapes)."""
    values = dict(pretrain_workdir=str(pretrain_dir), checkpoint_step=16, task="mt_en_de", method="lora",
                  lora_rank=8, learning_rate=3e-2, parameter_scale=False, finetune_examples=32, batch_size=4,
                  seq_len=64, epochs=None, num_steps=4, eval_every_steps=2, patience=None, dev_max_batches=1,
                  eval_batch_size=4, eval_max_examples=4, max_new_tokens=4)
    return FinetuneConfig(**{**values, **changes})


def cli_args(config: FinetuneConfig) -> list[str]:
    return ["--gin_file=gin_configs/finetune/lora.gin", "--no_progress"] + [
        f"--gin_param=FinetuneConfig.{f.name}={json.dumps(v) if isinstance(v := getattr(config, f.name), str) else v}"
        for f in dataclasses.fields(config)]


RESULT = RunResult(task="mt_en_de", model_name="tiny", total_params=10, non_embedding_params=5, pretrain_corpus="aligned",
                   pretrain_tokens=8192, method="lora", pet_size=8, trainable_params=2, finetune_examples=32, seed=0,
                   best_step=4, dev_ppl=3.0, test_ppl=3.0, test_log_ppl=math.log(3.0), bleu=1.0, chrf=2.0,
                   rouge_l=None, zero_shot={}, wall_time_s=1.0, code_version="earlier")


def finished_run(config: FinetuneConfig, workdir: Path) -> Path:
    """A workdir holding `config`'s finished run, as run_finetune leaves it."""
    workdir.mkdir(parents=True)
    recorded = identity(config, workdir)
    (workdir / "config.json").write_text(json.dumps(recorded, sort_keys=True))
    (workdir / "adapter.safetensors").write_bytes(b"the earlier run's adapter")
    (workdir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (workdir / "result.json").write_text(json.dumps({"config": recorded, "result": dataclasses.asdict(RESULT)}))
    return workdir


@pytest.fixture
def must_not_train(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished run must not train again")
    monkeypatch.setattr(ft_run, "_train", fail)


def test_a_workdir_holding_another_run_is_refused_byte_identical(smoke_pretrain_dir, tmp_path, capsys, must_not_train):
    workdir = finished_run(lora_config(smoke_pretrain_dir), tmp_path / "run")
    before = snapshot(workdir)
    other = lora_config(smoke_pretrain_dir, lora_rank=4)
    assert ft_run.main(cli_args(other) + [f"--workdir={workdir}"]) == 2
    one_error_line(capsys.readouterr().err, f"{workdir} holds a different finetuning run", "lora_rank=8 (now 4)",
                   "--overwrite")
    with pytest.raises(ValueError, match=r"holds a different finetuning run \(lora_rank=8 \(now 4\)\)"):
        ft_run.run_finetune(other, workdir, progress=False)
    assert snapshot(workdir) == before  # no config.gin / operative_config.gin either
    assert ft_run.run_finetune(lora_config(smoke_pretrain_dir), workdir, progress=False) == RESULT  # same run: no-op
    assert snapshot(workdir) == before


def test_the_same_run_after_moving_its_tree_is_still_a_no_op(smoke_pretrain_dir, tmp_path, must_not_train):
    tree = tmp_path / "tree"
    pretrain = copy_tree(smoke_pretrain_dir, tree / "pretrain")
    finished_run(lora_config(pretrain), tree / "runs" / "a")
    moved = copy_tree(tree, tmp_path / "moved")
    config = lora_config(moved / "pretrain")
    assert claim_workdir(config, moved / "runs" / "a")
    assert ft_run.run_finetune(config, moved / "runs" / "a", progress=False) == RESULT


def test_overwrite_replaces_the_run_the_workdir_holds(smoke_pretrain_dir, tmp_path, monkeypatch):
    workdir = finished_run(lora_config(smoke_pretrain_dir, lora_rank=4), tmp_path / "run")
    config = lora_config(smoke_pretrain_dir)
    monkeypatch.setattr(ft_run, "_train", lambda *args: (SimpleNamespace(history=[{"step": 4}], stop_reason="stub"), 4))
    monkeypatch.setattr(ft_run, "_save_finetuned",
                        lambda loop, config, info, workdir: (workdir / "adapter.safetensors").write_bytes(b"new"))
    monkeypatch.setattr(ft_run, "_result", lambda *args: dataclasses.replace(RESULT, code_version="new"))
    assert ft_run.main(cli_args(config) + [f"--workdir={workdir}", "--overwrite"]) == 0
    record = json.loads((workdir / "result.json").read_text())
    assert record["config"] == identity(config, workdir) and record["result"]["code_version"] == "new"
    assert (workdir / "adapter.safetensors").read_bytes() == b"new"
    assert not (workdir / "metrics.jsonl").exists()  # the earlier run's outputs are gone, not mixed in
    assert (workdir / "config.gin").is_file() and (workdir / "operative_config.gin").is_file()


@pytest.mark.slow
def test_overwrite_trains_the_new_run(smoke_pretrain_dir, tmp_path):
    workdir = finished_run(lora_config(smoke_pretrain_dir, lora_rank=4), tmp_path / "run")
    config = lora_config(smoke_pretrain_dir)
    assert ft_run.main(cli_args(config) + [f"--workdir={workdir}", "--overwrite"]) == 0
    record = json.loads((workdir / "result.json").read_text())
    assert record["config"] == identity(config, workdir) and record["result"]["pet_size"] == 8
    assert (workdir / "adapter.safetensors").read_bytes() != b"the earlier run's adapter"
    assert [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_a_finetuning_workdir_that_is_a_file_is_one_line(smoke_pretrain_dir, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert ft_run.main(cli_args(lora_config(smoke_pretrain_dir)) + [f"--workdir={afile}"]) == 2
    one_error_line(capsys.readouterr().err, f"--workdir {afile} is a file")
    assert afile.read_text() == "x"
