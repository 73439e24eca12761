"""Faults around pretraining and its checkpoints (issue 19, cases 1 and 5 and the minor ones of
train.pretrain / python -m checkpoints): each ends in a correct result, or exit 2 with one line
naming the file or value, and the workdir as it was."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from faults_helpers import copy_tree, largest_file, one_error_line, scribble, snapshot
from helpers import losses, run, small_config
from tiny_model import TINY_CONFIG, PoisonedLM, TinyLM
from checkpoints.__main__ import main as checkpoints_main
from checkpoints.checksums import CHECKSUMS_FILE
from checkpoints.store import CheckpointWarning, list_checkpoints
from train.pretrain import main as pretrain_main
from train.synthetic import SyntheticBatches
from train.trainer import RunInputs, TrainingDivergedError

REPO = Path(__file__).resolve().parents[2]
SMOKE = ["--gin_file=gin_configs/pretrain/smoke.gin", "--gin_param=TrainConfig.num_steps=16",
         "--gin_param=TrainConfig.checkpoint_every_tokens=2048", "--no_progress"]  # as smoke_pretrain_dir


def tiny_inputs(model=TinyLM, batches=None) -> RunInputs:
    source = SyntheticBatches(8, 32, TINY_CONFIG["vocab_size"], seed=0)
    return RunInputs(model_factory=lambda rngs: model(rngs=rngs), model_config=TINY_CONFIG, flops_per_token=1e4,
                     batches=batches or source, dev_batches=source.dev_batches(1),
                     data_description=source.description)


TWELVE = dict(num_steps=12, latest_every_steps=4, checkpoint_tokens=(8 * 8 * 32,), keep_latest=3)


def killed_after_step_8(workdir: Path) -> dict[int, float]:
    """A 12-step run as if killed right after saving step 8; returns the uninterrupted run's losses."""
    run(workdir, small_config(**TWELVE), tiny_inputs())
    straight = losses(workdir)
    for directory in (workdir / "latest" / "12", workdir / "checkpoints" / "12"):
        shutil.rmtree(directory)
    (workdir / "summary.json").unlink()
    return straight


# --- 1. resuming with settings that change what a token count means ---------------------------


def test_resume_with_another_batch_size_is_refused_and_the_workdir_kept(tmp_path):
    run(tmp_path, small_config(num_steps=8, latest_every_steps=4), tiny_inputs())
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"latest/8 was written with TrainConfig batch_size=8 \(now 4\)"):
        run(tmp_path, small_config(num_steps=8, latest_every_steps=4, batch_size=4), tiny_inputs())
    with pytest.raises(ValueError, match=r"seq_len=32 \(now 16\)"):
        run(tmp_path, small_config(num_steps=8, latest_every_steps=4, seq_len=16), tiny_inputs())
    with pytest.raises(ValueError, match=r"total_steps=8 \(now 16\)"):  # the cosine schedule's length
        run(tmp_path, small_config(num_steps=16, latest_every_steps=4), tiny_inputs())
    assert snapshot(tmp_path) == before


def test_checkpoints_of_older_code_are_checked_by_their_tokens_per_step(tmp_path):
    run(tmp_path, small_config(num_steps=8, latest_every_steps=4), tiny_inputs())
    for meta_file in tmp_path.glob("*/*/meta/metadata"):  # as written before train_config was recorded
        meta = json.loads(meta_file.read_text())
        meta.pop("train_config")
        meta_file.write_text(json.dumps(meta))
        (meta_file.parents[1] / CHECKSUMS_FILE).unlink()
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"batch_size x seq_len=256 \(now 128\)"):
        run(tmp_path, small_config(num_steps=8, latest_every_steps=4, batch_size=4), tiny_inputs())
    assert snapshot(tmp_path) == before
    assert run(tmp_path, small_config(num_steps=8, latest_every_steps=4), tiny_inputs())["final_step"] == 8


def test_cli_resume_with_another_batch_size_exits_2_naming_it(smoke_pretrain_dir, tmp_path, capsys):
    workdir = copy_tree(smoke_pretrain_dir, tmp_path / "W2")  # the issue's `cp -a W W2`
    before = snapshot(workdir)
    # in process, on this session's 8 simulated devices (a resume may change the mesh, not the batch)
    assert pretrain_main([*SMOKE, "--gin_param=make_mesh.data=8", "--gin_param=TrainConfig.batch_size=16",
                          "--gin_param=TrainConfig.num_steps=32", f"--workdir={workdir}"]) == 2
    one_error_line(capsys.readouterr().err, f"{workdir}/latest/16", "batch_size=8 (now 16)", "fresh --workdir")
    assert snapshot(workdir) == before  # config.gin and operative_config.gin included


# --- 5. bytes changed in a checkpoint's files ----------------------------------------------------


def test_a_corrupt_latest_is_set_aside_and_resume_continues_from_the_intermediate_of_its_step(tmp_path):
    straight = killed_after_step_8(tmp_path)
    scribble(largest_file(tmp_path / "latest" / "8" / "opt_state"))  # undetectable by orbax itself
    with pytest.warns(CheckpointWarning, match=r"corrupt latest checkpoint directory .*latest/8 .*opt_state/"):
        summary = run(tmp_path, small_config(**TWELVE), tiny_inputs())
    assert summary["resumed_from_step"] == 8  # the intermediate checkpoint of step 8, not step 4
    assert losses(tmp_path) == straight  # bit-exact continuation
    assert len(list((tmp_path / "latest").glob("8.corrupt-*"))) == 1  # set aside, never deleted


def test_nan_right_after_resume_names_the_checkpoint_it_came_from(tmp_path):
    killed_after_step_8(tmp_path)
    source = SyntheticBatches(8, 32, TINY_CONFIG["vocab_size"], seed=0)

    def poisoned(start):  # the resumed state is "bad": its first step diverges
        for number, batch in enumerate(source(start), start):
            if number == 8:
                batch["decoder_input_tokens"][0, 3] = PoisonedLM.poison_token
            yield batch

    with pytest.raises(TrainingDivergedError, match=r"step 9, 1 step\(s\) after resuming from checkpoint .*latest/8"):
        run(tmp_path, small_config(**TWELVE), tiny_inputs(model=PoisonedLM, batches=poisoned))


def test_list_and_export_check_checksums(smoke_pretrain_dir, tmp_path, capsys):
    workdir = copy_tree(smoke_pretrain_dir, tmp_path / "W")
    bad = largest_file(workdir / "latest" / "16" / "opt_state")
    scribble(bad)
    assert checkpoints_main(["list", f"--workdir={workdir}"]) == 0
    listing = capsys.readouterr().out
    assert f"CORRUPT: CorruptCheckpointError: checkpoint {workdir}/latest/16: file " \
           f"{bad.relative_to(workdir / 'latest' / '16')} does not match" in listing
    assert [r["checksums"] for r in list_checkpoints(workdir, verify=True) if "error" not in r] == ["ok"] * 5

    # the intermediate checkpoint of step 16 is intact: it is the one exported, values as written
    written = ocp.StandardCheckpointer().restore(smoke_pretrain_dir / "checkpoints" / "16" / "params")
    assert checkpoints_main(["export", f"--workdir={workdir}", "--step=16", f"--out={tmp_path / 'e1'}"]) == 0
    assert_same_arrays(written, ocp.StandardCheckpointer().restore(tmp_path / "e1" / "params"))
    # its params corrupt too: the latest of the same step holds the same params, intact (only its
    # optimizer state is not), so it is exported
    scribble(largest_file(workdir / "checkpoints" / "16" / "params"))
    assert checkpoints_main(["export", f"--workdir={workdir}", "--tokens=8192", f"--out={tmp_path / 'e2'}"]) == 0
    assert_same_arrays(written, ocp.StandardCheckpointer().restore(tmp_path / "e2" / "params"))
    # no intact params of step 16 left: exit 2 naming the file, nothing written
    scribble(largest_file(workdir / "latest" / "16" / "params"))
    capsys.readouterr()
    before = snapshot(workdir)
    assert checkpoints_main(["export", f"--workdir={workdir}", "--tokens=8192", f"--out={tmp_path / 'e3'}"]) == 2
    one_error_line(capsys.readouterr().err, f"checkpoint {workdir}/checkpoints/16: file params/", "checksum")
    assert not (tmp_path / "e3").exists() and snapshot(workdir) == before


def assert_same_arrays(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_cli_export_of_an_unreadable_checkpoint_is_one_line(smoke_pretrain_dir, tmp_path, cli_env):
    """As a subprocess: the whole stderr is the one line (no orbax shutdown noise)."""
    workdir = copy_tree(smoke_pretrain_dir, tmp_path / "W")
    for step_dir in (workdir / "checkpoints" / "16", workdir / "latest" / "16"):
        (step_dir / CHECKSUMS_FILE).unlink()  # as written by older code: orbax itself must fail
        for path in (step_dir / "params").rglob("*"):
            if path.is_file():
                path.write_bytes(b"\x00garbage")
    done = subprocess.run([sys.executable, "-m", "checkpoints", "export", f"--workdir={workdir}", "--step=16",
                           f"--out={tmp_path / 'out'}"], cwd=REPO, env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    one_error_line(done.stderr, f"checkpoint {workdir}/checkpoints/16 cannot be read")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # no shutdown noise
    assert not (tmp_path / "out").exists()


# --- minor: one pretraining per workdir, a missing gin file, a workdir that is a file ---------


def test_a_second_pretraining_in_a_held_workdir_is_refused(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from train.workdir_lock import hold_workdir
        with hold_workdir(Path({str(tmp_path)!r}), "pretraining"):
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp_path)
        assert pretrain_main([*SMOKE, f"--workdir={tmp_path}"]) == 2
        one_error_line(capsys.readouterr().err, f"{tmp_path} is in use by pretraining pid {holder.pid}")
        assert snapshot(tmp_path) == before
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0


def test_missing_gin_files_and_a_workdir_that_is_a_file_are_one_line_errors(tmp_path, capsys):
    assert pretrain_main(["--gin_file=gin_configs/pretrain/nope.gin", f"--workdir={tmp_path / 'w'}"]) == 2
    one_error_line(capsys.readouterr().err, "gin file 'gin_configs/pretrain/nope.gin' not found")
    job = tmp_path / "job.gin"
    job.write_text("# a job whose model file is missing\ninclude 'gin_configs/models/nope.gin'\n")
    assert pretrain_main([f"--gin_file={job}", f"--workdir={tmp_path / 'w'}"]) == 2
    one_error_line(capsys.readouterr().err, f"gin file {job}, line 2 (include)", "'gin_configs/models/nope.gin' not found")
    afile = tmp_path / "afile"
    afile.write_text("not a workdir")
    assert pretrain_main([*SMOKE, f"--workdir={afile}"]) == 2
    one_error_line(capsys.readouterr().err, f"--workdir {afile} is a file")
    assert afile.read_text() == "not a workdir" and not (tmp_path / "w").exists()
