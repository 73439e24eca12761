"""The study scheduler with cheap deterministic run / pretrain functions (tests/study/study_fakes.py):
SIGKILL and resume, two concurrent workers, failures reported and retried, stale pretraining locks,
status, and the report's fits on results that follow known laws."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_fakes  # noqa: E402

from finetune.result import canonical_config_json  # noqa: E402
from study import runner as study  # noqa: E402
from study.__main__ import main as study_main  # noqa: E402
from study.locks import PretrainLock  # noqa: E402
from study.pretraining import ensure_pretrained, is_pretrained, pretrain_dir  # noqa: E402
from study.report.writer import SECTION_TITLES  # noqa: E402

DRIVER = Path(study_fakes.__file__)
REPO = Path(__file__).resolve().parents[2]


def driver(study_dir: Path, worker: int, num_workers: int, **env) -> subprocess.Popen:
    environment = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **{k: str(v) for k, v in env.items()})
    return subprocess.Popen([sys.executable, str(DRIVER), str(study_dir), str(worker), str(num_workers)], cwd=REPO,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def done_rows(study_dir: Path) -> dict[str, tuple]:
    """run_key -> (finished_at, config without the study-specific workdir) of every done row."""
    with sqlite3.connect(study_dir / "results.sqlite") as conn:
        rows = conn.execute("SELECT run_key, finished_at, config_json FROM runs WHERE status='done'").fetchall()
    out = {}
    for key, finished, config in rows:
        config = json.loads(config)
        config["pretrain_workdir"] = Path(config["pretrain_workdir"]).name  # the size, not the study dir
        out[key] = (finished, json.dumps(config, sort_keys=True))
    return out


def grid_configs() -> set[str]:
    spec = study_fakes.fake_spec()
    configs = set()
    for point in spec.grid():
        kwargs = spec.finetune_kwargs(point, pretrain_dir("x", point.size, point.corpus))
        factory = study.finetune_config
        config = json.loads(canonical_config_json(factory(kwargs).to_dict()))  # as the store keeps it (8.0 -> 8)
        config["pretrain_workdir"] = Path(config["pretrain_workdir"]).name
        configs.add(json.dumps(config, sort_keys=True))
    return configs


def count_status(study_dir: Path, status: str) -> int:
    try:
        # mode=ro: polling before the study creates its store must not create an empty file there
        with sqlite3.connect(f"file:{study_dir / 'results.sqlite'}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs WHERE status=?", (status,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_study_then_rerun_continues_without_duplicates_or_losses(tmp_path):
    expected = grid_configs()
    proc = driver(tmp_path, 0, 1, STUDY_FAKE_RUN_S=0.05)
    deadline = time.time() + 120
    while count_status(tmp_path, "done") < 20 or count_status(tmp_path, "running") < 1:  # kill with a run in flight
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the study made no progress"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = done_rows(tmp_path)
    assert 20 <= len(before) < len(expected)
    status = study.status_text(tmp_path)
    # the run in flight is stale (its worker is dead), unless it finished between the poll and the kill
    assert f"done {len(before)}" in status and "running 0" in status and re.search(r"stale [01] ", status), status
    rerun = driver(tmp_path, 0, 1)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    after = done_rows(tmp_path)
    assert {c for _, c in after.values()} == expected and len(after) == len(expected)
    assert all(after[key] == value for key, value in before.items())  # finished rows untouched
    calls = (tmp_path / "run_calls.log").read_text().splitlines()
    assert len(expected) <= len(calls) <= len(expected) + 1  # at most the killed run is redone
    assert (tmp_path / "pretrain_calls.log").read_text().count("\n") == 3  # each size pretrained once


def test_two_concurrent_workers_share_the_grid_like_one_worker(tmp_path):
    shared = tmp_path / "shared"
    workers = [driver(shared, i, 2, STUDY_FAKE_RUN_S=0.01, STUDY_FAKE_PRETRAIN_S=1.0) for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    single = tmp_path / "single"
    study.run_study(study_fakes.fake_spec(), single, run_fn=study_fakes.fake_run, pretrain_fn=study_fakes.fake_pretrain,
                    progress=False, report=False, say=lambda s: None)
    union = {c for _, c in done_rows(shared).values()}
    assert union == {c for _, c in done_rows(single).values()} == grid_configs()
    pretrained = (shared / "pretrain_calls.log").read_text().split()
    names = pretrained[::2]
    assert sorted(names) == ["s_aligned", "tiny_aligned", "xs_aligned"]  # each claimed by exactly one worker
    assert len(set(pretrained[1::2])) == 2, "both workers should have pretrained something (they start at different sizes)"
    calls = (shared / "run_calls.log").read_text().splitlines()
    assert len(calls) == len(union)  # no run done twice
    assert {line.split()[-1] for line in calls} == set(pretrained[1::2])  # both workers finetuned


def test_failed_run_is_reported_and_retried_next_invocation(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STUDY_FAKE_FAIL", "200")
    spec = study_fakes.fake_spec(sizes=("tiny",), dp_sweep_sizes=(), pet_sweep_sizes=(), seeds=(0,))
    kwargs = dict(run_fn=study_fakes.fake_run, pretrain_fn=study_fakes.fake_pretrain, progress=False, report=False)
    counts = study.run_study(spec, tmp_path, **kwargs)
    assert counts["failed"] == 1 and counts["finished"] == len(spec.grid()) - 1
    assert "FAILED" in capsys.readouterr().out
    status = study.status_text(tmp_path)
    assert "failed 1" in status and "injected failure at Df=200" in status and "pending 0" in status
    assert study_main(["status", f"--workdir={tmp_path}"]) == 0
    counts = study.run_study(spec, tmp_path, **kwargs)
    assert counts == {"finished": 1, "failed": 0, "skipped_done": len(spec.grid()) - 1}
    assert "failed 0" in study.status_text(tmp_path)


def test_a_different_spec_in_the_same_directory_is_refused(tmp_path):
    kwargs = dict(run_fn=study_fakes.fake_run, pretrain_fn=study_fakes.fake_pretrain, progress=False, report=False,
                  say=lambda s: None)
    spec = study_fakes.fake_spec(sizes=("tiny",), dp_sweep_sizes=(), pet_sweep_sizes=(), seeds=(0,),
                                 finetune_examples=(50, 100))
    study.run_study(spec, tmp_path, **kwargs)
    with pytest.raises(ValueError, match="different spec.*seeds"):
        study.run_study(study_fakes.fake_spec(sizes=("tiny",), dp_sweep_sizes=(), pet_sweep_sizes=(), seeds=(0, 1),
                                              finetune_examples=(50, 100)), tmp_path, **kwargs)
    with pytest.raises(ValueError, match="worker must be"):
        study.run_study(spec, tmp_path, worker=3, num_workers=2, **kwargs)


def test_stale_pretraining_lock_of_a_dead_worker_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spec = study_fakes.fake_spec(sizes=("tiny",), dp_sweep_sizes=(), pet_sweep_sizes=())
    workdir = pretrain_dir(tmp_path, "tiny", "aligned")
    workdir.parent.mkdir(parents=True)
    lock_path = workdir.parent / "tiny_aligned.lock"
    lock_path.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    live = PretrainLock(lock_path)
    assert live.is_stale()
    ensure_pretrained(spec, tmp_path, [("tiny", "aligned")], pretrain_fn=study_fakes.fake_pretrain, say=lambda s: None)
    assert is_pretrained(workdir) and not lock_path.exists()
    # a live holder (this process's parent) is not stale: the claim fails
    lock_path.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid()}))
    assert not PretrainLock(lock_path).try_acquire()


def test_report_recovers_the_fake_laws_and_has_every_section(tmp_path):
    spec = study_fakes.fake_spec(pretrain_corpora=("aligned", "misaligned"), sizes=("tiny", "xs", "s"),
                                 dp_sweep_sizes=("xs",), pet_sweep_sizes=(), seeds=(0,), methods=("fmt", "lora"),
                                 checkpoint_tokens=(1024, 2048, 4096, 8192), bootstrap_resamples=8)
    study.run_study(spec, tmp_path, run_fn=study_fakes.fake_run, pretrain_fn=study_fakes.fake_pretrain, progress=False,
                    report=True, say=lambda s: None)
    text = (tmp_path / "report" / "report.md").read_text()
    for title in SECTION_TITLES:
        assert f"## {title}" in text
    assert "This section failed" not in text and "analysis failed" not in text
    for png in ("df_scaling.png", "joint_fits.png", "scale_vs_data.png", "alignment.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
    fits = json.loads((tmp_path / "report" / "fits.json").read_text())
    a, alpha, beta, e = study_fakes.LAW["fmt"]
    fmt = fits["forms"]["fmt"]["multiplicative"]
    assert fmt["shared"]["beta"] == pytest.approx(beta, abs=0.05)
    assert fmt["factors"]["model_params"]["params"]["alpha"] == pytest.approx(alpha, abs=0.05)
    assert "alpha(model)" in text and "misalignment signature" in text
    assert "curves cross at Df" in text  # FMT overtakes LoRA inside the fake grid
