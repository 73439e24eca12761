"""A killed finetuning run continues where it stopped, bit-identical to an uninterrupted run: the
trainable state, the best params, the selection and stopping state and the data position (the
step) are checkpointed at every dev evaluation; a checkpoint of another run is refused."""
import json

import gin
import jax
import numpy as np
import pytest

from checkpoints.load import load_checkpoint_params
from data.finetune_rows import finetune_batches, split_batches
from finetune import run as ft_run
from finetune import training
from finetune.config import FinetuneConfig
from finetune.stopping import StoppingRule
from model.methods import MethodSpec, build_model, split_trainable
from train.partitioning import make_mesh

SPEC = MethodSpec("lora", lora_rank=8)
MESH = make_mesh(devices=jax.devices()[:1])


class Killed(Exception):
    """Stands for the process dying at a step."""


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def data(smoke_pretrain_dir):
    config, params, _ = load_checkpoint_params(smoke_pretrain_dir, step=16)
    common = dict(finetune_examples=32, subset_seed=0, batch_size=4, seq_len=64, seed=0)
    train = list(finetune_batches("mt_en_de", epochs=4, **common))[:10]
    dev = split_batches("mt_en_de", "validation", batch_size=4, seq_len=64, max_batches=1)
    return {"config": config, "params": params, "train": train, "dev": dev}


def small_config(pretrain_dir, **changes):
    """tests/finetune/test_run.py's LoRA run (same shapes: compiled once)."""
    values = dict(pretrain_workdir=str(pretrain_dir), checkpoint_step=16, task="mt_en_de", method="lora",
                  lora_rank=8, learning_rate=3e-2, parameter_scale=False, finetune_examples=32, batch_size=4,
                  seq_len=64, epochs=None, num_steps=4, eval_every_steps=2, patience=None, dev_max_batches=1,
                  eval_batch_size=4, eval_max_examples=4, max_new_tokens=4)
    return FinetuneConfig(**dict(values, **changes))


def _finetune(data, checkpoint_dir, log_fn, identity=None):
    model = build_model(data["config"], data["params"], SPEC, seed=0)
    rule = StoppingRule.until_converged(max_steps=10, patience=2, min_steps=4)
    return training.finetune(model, SPEC, data["train"], data["dev"], mesh=MESH, peak_learning_rate=3e-2,
                             parameter_scale=False, eval_every_steps=2, stopping=rule, checkpoint_dir=checkpoint_dir,
                             identity=identity or {"run": "a"}, checkpoint_every_seconds=0, progress=False,
                             log_fn=log_fn)


def _kill_at(step, records):
    def log(record):
        if record["step"] == step:
            raise Killed(step)
        records.append(record)
    return log


def test_a_run_killed_mid_way_resumes_bit_identical(data, tmp_path):
    whole_records = []
    whole = _finetune(data, tmp_path / "whole", whole_records.append)
    records = []
    with pytest.raises(Killed):
        _finetune(data, tmp_path / "killed", _kill_at(5, records))  # the last checkpoint is step 4's
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    resumed = _finetune(data, tmp_path / "killed", records.append)
    assert resumed.resumed_from_step == 4
    assert records == whole_records  # every step's loss, rate, grad norm and dev PPL, exactly
    assert resumed.train_losses == whole.train_losses
    assert (resumed.best_step, resumed.history, resumed.stop_reason, resumed.steps_run) == (
        whole.best_step, whole.history, whole.stop_reason, whole.steps_run)
    for a, b in zip(jax.tree.leaves(split_trainable(resumed.model, "lora")[1]),
                    jax.tree.leaves(split_trainable(whole.model, "lora")[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_of_another_run_is_refused(data, tmp_path):
    with pytest.raises(Killed):
        _finetune(data, tmp_path / "ckpt", _kill_at(3, []))
    with pytest.raises(ValueError, match=r"was written for finetuning run \{'run': 'a'\}, but this run is "
                                         r"\{'run': 'b'\}; use the same settings, or a fresh --workdir"):
        _finetune(data, tmp_path / "ckpt", None, identity={"run": "b"})


def test_a_killed_finetune_run_resumes_to_the_same_result(smoke_pretrain_dir, tmp_path, monkeypatch):
    """finetune.run end to end: killed after step 3 of 6, rerun in its workdir: the same metrics
    file and result as a run never killed; the checkpoint is removed once the result is written."""
    config = small_config(smoke_pretrain_dir, num_steps=6)
    gin.bind_parameter("finetune_checkpoints.every_seconds", 0.0)  # a checkpoint at every evaluation
    whole = ft_run.run_finetune(config, tmp_path / "whole", progress=False)
    original = training.MetricsLog.__call__

    def dies_at_step_4(self, record):
        if record["step"] == 4:
            raise Killed(4)
        original(self, record)

    monkeypatch.setattr(training.MetricsLog, "__call__", dies_at_step_4)
    with pytest.raises(Killed):
        ft_run.run_finetune(config, tmp_path / "killed", progress=False)
    assert (tmp_path / "killed" / "train_state").is_dir() and not (tmp_path / "killed" / "result.json").exists()
    monkeypatch.undo()
    resumed = ft_run.run_finetune(config, tmp_path / "killed", progress=False)
    lines = {name: (tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("whole", "killed")}
    assert lines["killed"] == lines["whole"] and [json.loads(line)["step"] for line in lines["whole"]] == list(range(1, 7))
    timing = {"wall_time_s", "seconds_per_step"}
    assert resumed.best_step == whole.best_step and resumed.dev_ppl == whole.dev_ppl
    assert resumed.test_log_ppl == whole.test_log_ppl and (resumed.bleu, resumed.chrf) == (whole.bleu, whole.chrf)
    assert ({k: v for k, v in resumed.extra_metrics.items() if k not in timing}
            == {k: v for k, v in whole.extra_metrics.items() if k not in timing})
    assert not (tmp_path / "killed" / "train_state").exists() and not (tmp_path / "whole" / "train_state").exists()
