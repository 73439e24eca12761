"""Faults around a study directory (issue 19, cases 2, 3, 6 and 7 and the minor ones of
`python -m study` and `python -m laws`): a damaged results store, a copied or moved study, a spec
that cannot work, README's laws commands. Built on one finished fake study (tests/study/study_fakes)."""
import json
import logging
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import study_fakes
from faults_helpers import copy_tree, one_error_line, snapshot
from finetune.result import canonical_config_json, run_key
from laws.cli import main as laws_main
from study import runner
from study.__main__ import main as study_main
from study.locks import PretrainLock
from study.preflight import check_study
from study.results import ResultsStore
from study.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
GRID = len(study_fakes.fake_spec().grid())
FAKES = dict(run_fn=study_fakes.fake_run, pretrain_fn=study_fakes.fake_pretrain, progress=False,
             say=lambda line: None)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """A finished fake study with its report (three sizes, GRID runs): read-only, copy it to change it."""
    study_dir = tmp_path_factory.mktemp("fake_study") / "D"
    runner.run_study(study_fakes.fake_spec(), study_dir, report=True, **FAKES)
    return study_dir


@pytest.fixture
def study_copy(finished_study, tmp_path) -> Path:
    return copy_tree(finished_study, tmp_path / "D")


def runs_of(study_dir: Path) -> int:
    return len((study_dir / "run_calls.log").read_text().splitlines())


# --- 2. a damaged results store ----------------------------------------------------------------


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
    (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "is corrupt"),
    (lambda path: path.write_bytes(b"run_key,status\n"), "is not an SQLite database"),
])
def test_a_damaged_results_store_is_refused_and_the_report_kept(study_copy, capsys, damage, message):
    store = study_copy / "results.sqlite"
    damage(store)
    before = snapshot(study_copy)
    for command in ("status", "report"):
        assert study_main([command, f"--workdir={study_copy}"]) == 2
        one_error_line(capsys.readouterr().err, f"results store {store} {message}", "restore it from a backup")
    with pytest.raises(ValueError, match=re.escape(f"results store {store} {message}")):
        runner.run_study(study_fakes.fake_spec(), study_copy, **FAKES)
    assert snapshot(study_copy) == before  # report.md, results.csv and the damaged file itself


def test_an_empty_store_never_replaces_a_report_with_runs(study_copy, capsys):
    (study_copy / "results.sqlite").rename(study_copy / "results.sqlite.bak")
    ResultsStore(study_copy).close()  # a valid store without runs in its place
    before = snapshot(study_copy / "report")
    assert study_main(["report", f"--workdir={study_copy}"]) == 2
    one_error_line(capsys.readouterr().err, "has no finished runs", f"holds a report of {GRID} runs")
    assert snapshot(study_copy / "report") == before


def test_a_foreign_database_or_none_at_all_is_not_taken_for_a_store(tmp_path, capsys):
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(ValueError, match="without the results tables"):
        ResultsStore(tmp_path)
    empty = tmp_path / "empty"
    with pytest.raises(ValueError, match="has no results store"):
        ResultsStore(empty, create=False)
    assert not empty.exists()


# --- 3. a copied or moved study ----------------------------------------------------------------


def test_a_copied_study_resumes_with_zero_reruns(finished_study, study_copy):
    original = snapshot(finished_study)
    counts = runner.run_study(study_fakes.fake_spec(), study_copy, report=True, **FAKES)
    assert counts == {"finished": 0, "failed": 0, "skipped_done": GRID}
    assert runs_of(study_copy) == runs_of(finished_study) == GRID
    assert ResultsStore(study_copy).counts()["total"] == GRID
    assert len(pd.read_csv(study_copy / "report" / "results.csv")) == GRID
    assert snapshot(finished_study) == original


def _as_older_code_wrote_it(study_dir: Path, keys_under: Path, *, keep_relative: bool) -> None:
    """Rewrite the store as older code did: keys from the absolute pretraining path under `keys_under`
    (`keep_relative`: the relative rows stay too, as after a rerun of a copy: duplicates)."""
    with sqlite3.connect(study_dir / "results.sqlite") as conn:
        rows = conn.execute("SELECT * FROM runs").fetchall()
        names = [d[0] for d in conn.execute("SELECT * FROM runs").description]
        for values in rows:
            row = dict(zip(names, values))
            config = json.loads(row["config_json"])
            config["pretrain_workdir"] = str(keys_under / config["pretrain_workdir"])
            row.update(run_key=run_key(config), config_json=canonical_config_json(config))
            if not keep_relative:
                conn.execute("DELETE FROM runs WHERE run_key=?", (values[0],))
            conn.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values()))


@pytest.mark.parametrize("keep_relative", [False, True])
def test_a_moved_study_of_older_code_is_rekeyed_once_without_reruns(finished_study, study_copy, keep_relative):
    _as_older_code_wrote_it(study_copy, finished_study, keep_relative=keep_relative)
    assert ResultsStore(study_copy).counts()["done"] == (2 * GRID if keep_relative else GRID)
    said = []
    counts = runner.run_study(study_fakes.fake_spec(), study_copy, report=False, **{**FAKES, "say": said.append})
    assert counts == {"finished": 0, "failed": 0, "skipped_done": GRID}
    assert any(line.startswith(f"rekeyed {GRID} run(s)") for line in said), said
    store = ResultsStore(study_copy)
    assert store.counts()["total"] == store.counts()["done"] == GRID
    assert {row["config"]["pretrain_workdir"] for row in store.rows()} == {
        "pretrain/tiny_aligned", "pretrain/xs_aligned", "pretrain/s_aligned"}
    assert runs_of(study_copy) == GRID


# --- 6. a spec that cannot work is refused before anything is pretrained or recorded -----------


@pytest.mark.parametrize("changes, message", [
    (dict(task="mt_xx"), "unknown finetuning task 'mt_xx'"),
    (dict(finetune_examples=(50, 10**6)), r"Df=1000000 seed=0: FinetuneConfig.finetune_examples=1000000 is larger than"),
    (dict(task="mt_en_zh"), "task 'mt_en_zh' uses vocabulary"),
    (dict(pretrain_gin="gin_configs/pretrain/{size}_nope.gin"), "gin file 'gin_configs/pretrain/tiny_nope.gin' not found"),
    (dict(lora_ranks=(4, 64)), r"lora r=64 .*lora_rank=64 exceeds the layer width d_model=32 of model 'tiny'"),
])
def test_a_spec_that_cannot_work_fails_before_pretraining(tmp_path, changes, message):
    study_dir = tmp_path / "D"
    spec = study_fakes.fake_spec(pet_sweep_sizes=("tiny",), **changes)
    with pytest.raises(ValueError, match=message):
        runner.run_study(spec, study_dir, **FAKES)
    assert not study_dir.exists()  # no spec recorded, nothing pretrained: the fixed spec is not "different"
    if "task" in changes:
        fixed = study_fakes.fake_spec(pet_sweep_sizes=("tiny",), sizes=("tiny",), dp_sweep_sizes=(), seeds=(0,))
        assert runner.run_study(fixed, study_dir, report=False, **FAKES)["failed"] == 0


def test_each_size_must_have_its_own_pretraining_gin(tmp_path, capsys):
    spec = study_fakes.fake_spec(sizes=("tiny", "xs"), dp_sweep_sizes=(), pet_sweep_sizes=())  # smoke.gin for both
    with pytest.raises(ValueError, match="pretraining xs_aligned: gin_configs/pretrain/smoke.gin configures model 'tiny'"):
        runner.run_study(spec, tmp_path / "D", run_fn=study_fakes.fake_run, progress=False, say=lambda s: None)
    assert not (tmp_path / "D").exists()
    assert study_main(["--gin_file=gin_configs/studies/smoke.gin", "--gin_param=StudySpec.task='mt_xx'",
                       f"--workdir={tmp_path / 'S'}", "--no_progress"]) == 2
    one_error_line(capsys.readouterr().err, "unknown finetuning task 'mt_xx'")
    assert not (tmp_path / "S").exists()


@pytest.mark.parametrize("preset", ["smoke", "demo", "alignment", "paper"])
def test_the_bundled_studies_pass_the_checks(preset, tmp_path):
    check_study(load_spec([f"gin_configs/studies/{preset}.gin"]), tmp_path / "D")  # paper: TFDS checks deferred


# --- 7. README's laws commands on a study's results.csv ----------------------------------------


def readme_laws_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = [shlex.split(line.split("#")[0]) for line in text.splitlines()
                if line.strip().startswith("python -m laws fit")]
    assert commands, "README documents `python -m laws fit` on a study's results.csv"
    return commands


def test_readmes_laws_commands_run_on_a_study_results_csv(finished_study, tmp_path, capsys):
    for command in readme_laws_commands():
        argv = [arg.replace("runs/demo", str(finished_study)) for arg in command[3:]]
        argv = [arg if not arg.endswith(".png") else str(tmp_path / Path(arg).name) for arg in argv]
        assert laws_main(argv) == 0, (command, capsys.readouterr())
        out = capsys.readouterr().out
        assert "multiplicative" in out and "fmt" in out and "lora" in out, out


def test_laws_cli_input_errors_are_one_line(finished_study, tmp_path, capsys):
    header_only = tmp_path / "empty.csv"
    header_only.write_text(pd.read_csv(finished_study / "report" / "results.csv").head(0).to_csv(index=False))
    for path, message in ((finished_study / "report", "is a directory"), (header_only, "has no rows")):
        assert laws_main(["fit", str(path), "--law", "multiplicative", "--x", "model_params,finetune_examples",
                          "--y", "test_log_ppl", "--by", "method"]) == 2
        one_error_line(capsys.readouterr().err, str(path), message)


# --- minor: study.json, stale locks, attempts, a workdir that is a file -------------------------


def test_an_unreadable_study_json_is_named(study_copy, capsys):
    spec_file = study_copy / "study.json"
    spec_file.write_text(spec_file.read_text()[:40])
    before = snapshot(study_copy)
    assert study_main(["status", f"--workdir={study_copy}"]) == 2
    one_error_line(capsys.readouterr().err, f"{spec_file} (the study's recorded spec) is unreadable")
    with pytest.raises(ValueError, match=re.escape(f"{spec_file} (the study's recorded spec) is unreadable")):
        runner.run_study(study_fakes.fake_spec(), study_copy, **FAKES)
    assert snapshot(study_copy) == before


def test_a_stale_lock_is_logged_with_its_dead_holder(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "tiny_aligned.lock"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "worker_id": "w"}))
    with caplog.at_level(logging.WARNING, logger="study.locks"):
        assert PretrainLock(lock).try_acquire()
    assert f"'pid': {dead.pid}" in caplog.text and "holder None" not in caplog.text


def test_one_clean_run_is_one_attempt(finished_study, tmp_path):
    assert {row["attempts"] for row in ResultsStore(finished_study).rows()} == {1}
    store = ResultsStore(tmp_path)
    key = store.add({"run": 1})
    assert store.claim(key, worker_id="w") and store.claim(key, worker_id="w")  # the holder again: same attempt
    assert store.get(key)["attempts"] == 1


def test_a_study_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match=f"--workdir {afile} is a file"):
        runner.run_study(study_fakes.fake_spec(), afile, **FAKES)
    assert study_main(["status", f"--workdir={afile}"]) == 2
    one_error_line(capsys.readouterr().err, str(afile))
    assert afile.read_text() == "x"


def test_checking_the_store_keeps_this_process_sqlite_locks(tmp_path):
    """Opening a store checks its file; closing any descriptor of it would drop the locks this
    process's connections hold, and another process could then delete the WAL under them (the
    'database disk image is malformed' of a rerun after SIGKILL)."""
    store = ResultsStore(tmp_path)
    store.add({"run": 1})  # a WAL connection: it holds a shared lock on the file while open
    ResultsStore(tmp_path).close()  # the check, in the same process
    takeover = ("import sqlite3, sys\n"
                "try:\n    print(sqlite3.connect(sys.argv[1], timeout=0.1).execute('PRAGMA journal_mode=delete').fetchone()[0])\n"
                "except sqlite3.OperationalError as error:\n    print(error)\n")
    other = subprocess.run([sys.executable, "-c", takeover, str(tmp_path / "results.sqlite")], capture_output=True,
                           text=True, timeout=60)
    assert other.stdout.strip() in ("wal", "database is locked"), other  # it could not take the file over
    store.close()
