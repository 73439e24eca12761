"""The results store: one complete row per run, idempotent writes, atomic claims across processes."""
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from finetune import result as results
from study import results as store_module
from finetune.result import RunResult
from study.results import ResultsStore

REPO = Path(__file__).resolve().parents[2]


def make_config(df=1000, seed=0, method="lora"):
    return {"model": "xs", "checkpoint_tokens": 2_000_000, "method": method, "lora_rank": 8,
            "finetune_examples": df, "seed": seed, "task": "mt_en_de", "learning_rate": 1e-3}


def make_result(config, **overrides):
    fields = dict(
        task=config["task"], model_name=config["model"], total_params=1_234_567, non_embedding_params=1_000_000,
        pretrain_corpus="aligned", pretrain_tokens=config["checkpoint_tokens"], method=config["method"],
        pet_size=8, trainable_params=4096, finetune_examples=config["finetune_examples"], seed=config["seed"],
        best_step=120, dev_ppl=12.5, test_ppl=13.0, test_log_ppl=math.log(13.0), bleu=21.3, chrf=48.2,
        rouge_l=40.1, zero_shot={"de_en_bleu": 3.5, "ood_bleu": 12.0}, wall_time_s=42.0, code_version="abc123",
        metric_signatures={"bleu": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"},
        extra_metrics={"comet": 71.0},
    )
    fields.update(overrides)
    return RunResult(**fields)


def test_run_key_is_canonical_and_rejects_non_json():
    a = {"b": [1, 2], "a": {"y": 2.0, "x": "s"}}
    b = {"a": {"x": "s", "y": 2}, "b": (1, 2)}
    assert results.run_key(a) == results.run_key(b)
    assert len(results.run_key(a)) == 64
    assert results.run_key(a) != results.run_key({**a, "b": [2, 1]})
    assert results.canonical_config_json(a) == '{"a":{"x":"s","y":2},"b":[1,2]}'
    with pytest.raises(ValueError, match=r"config\.f.*not finite"):
        results.run_key({"f": float("nan")})
    with pytest.raises(ValueError, match=r"config\.s has type set"):
        results.run_key({"s": {1, 2}})


def test_one_complete_row_per_run_and_reinsert_is_noop(tmp_path):
    store = ResultsStore(tmp_path)
    config = make_config()
    key = store.add(config)
    assert store.add(config) == key  # registering twice: still one row
    assert not store.has_result(key)
    assert store.claim(key, worker_id="w1")
    assert store.finish(key, make_result(config), worker_id="w1")
    assert store.has_result(config) and store.has_result(key)
    before = store.get(key)
    assert not store.finish(key, make_result(config, bleu=99.0), worker_id="w2")  # no-op
    assert not store.claim(key, worker_id="w2")  # done: nothing to claim
    after = store.get(key)
    assert after == before and after["bleu"] == 21.3
    rows = store.rows()
    assert len(rows) == 1
    row = rows[0]
    for name, _ in results.RESULT_COLUMNS:
        assert row[name] is not None, name  # every field filled
    assert row["status"] == "done" and row["config"] == config and row["attempts"] == 1
    assert json.loads(row["zero_shot_json"]) == {"de_en_bleu": 3.5, "ood_bleu": 12}
    assert store.counts() == {"pending": 0, "running": 0, "stale": 0, "failed": 0, "done": 1, "total": 1}
    # A second store object (another process's view) sees the same single row.
    assert len(ResultsStore(tmp_path).rows(None)) == 1
    with sqlite3.connect(tmp_path / store_module.DB_FILENAME) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_invalid_results_are_rejected_without_a_row(tmp_path):
    store = ResultsStore(tmp_path)
    config = make_config()
    with pytest.raises(ValueError, match="'dev_ppl' is missing"):
        store.finish(config, make_result(config, dev_ppl=None))
    with pytest.raises(ValueError, match="not log"):
        store.finish(config, make_result(config, test_log_ppl=1.0))
    with pytest.raises(ValueError, match="non-negative integer"):
        store.finish(config, make_result(config, seed=-1))
    with pytest.raises(ValueError, match="below 1"):
        store.finish(config, make_result(config, dev_ppl=0.5))
    assert store.rows(None) == []
    # Metrics that do not apply to a task may be NULL.
    assert store.finish(config, make_result(config, rouge_l=None))
    assert store.get(config)["rouge_l"] is None


def test_failed_runs_are_listed_with_errors_and_retried(tmp_path):
    clock = [1000.0]
    store = ResultsStore(tmp_path, clock=lambda: clock[0])
    keys = store.add_many([make_config(df=d) for d in (100, 200)])
    started = clock[0]
    claimed = store.claim_next(worker_id="w1", retry_failed_before=started)
    assert claimed[0] == keys[0]
    clock[0] += 1
    store.fail(keys[0], "Traceback ...\nRuntimeError: NaN loss at step 7", worker_id="w1")
    failures = store.failures()
    assert [f["run_key"] for f in failures] == [keys[0]]
    assert "NaN loss at step 7" in failures[0]["error"] and failures[0]["attempts"] == 1
    summary = store.summary().splitlines()
    assert summary[0] == "done 0 · running 0 · stale 0 · failed 1 · pending 1 (total 2)"
    assert summary[1].startswith(f"FAILED {keys[0][:12]} attempts=1") and summary[1].endswith("NaN loss at step 7")
    # The same invocation does not loop on its own failure...
    assert store.claim_next(worker_id="w1", retry_failed_before=started)[0] == keys[1]
    assert store.claim_next(worker_id="w1", retry_failed_before=started) is None
    assert store.counts()["failed"] == 1
    # ...the next invocation retries it, and success clears the error.
    clock[0] += 1
    key, config = store.claim_next(worker_id="w1", retry_failed_before=clock[0])
    assert key == keys[0] and config["finetune_examples"] == 100
    assert store.finish(key, make_result(config), worker_id="w1")
    row = store.get(key)
    assert row["status"] == "done" and row["error"] is None and row["attempts"] == 2
    assert store.failures() == []


def test_stale_claim_of_a_dead_remote_worker_is_reclaimed(tmp_path):
    clock = [0.0]
    store = ResultsStore(tmp_path, stale_after_s=60, clock=lambda: clock[0])
    key = store.add(make_config())
    assert store.claim(key, worker_id="other-host:4242")
    assert not store.claim(key, worker_id="me:1")  # live claim: refused
    clock[0] = 30.0
    assert store.heartbeat(key, worker_id="other-host:4242")
    clock[0] = 80.0
    assert not store.claim(key, worker_id="me:1")  # heartbeat at 30 keeps it alive until 90
    assert store.counts()["running"] == 1
    clock[0] = 91.0
    assert store.counts()["stale"] == 1
    assert store.claim(key, worker_id="me:1")
    assert not store.heartbeat(key, worker_id="other-host:4242")  # the old worker learns it lost the claim
    assert store.get(key)["attempts"] == 2


def _run_python(code, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_run_killed_mid_way_leaves_no_finished_row_and_is_reclaimed(tmp_path):
    store = ResultsStore(tmp_path)  # long stale timeout: only the dead pid frees the claim
    config = make_config()
    key = store.add(config)
    proc = _run_python("""
        import sys, time
        from study.results import ResultsStore
        store = ResultsStore(sys.argv[1])
        assert store.claim(sys.argv[2])
        print("claimed", flush=True)
        time.sleep(60)
    """, tmp_path, key)
    assert proc.stdout.readline().strip() == "claimed"
    assert not store.claim(key)  # its worker is alive
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not store.has_result(key) and store.rows("done") == []
    assert store.counts()["stale"] == 1
    assert store.claim_next() == (key, config)


def test_two_processes_never_claim_the_same_run(tmp_path):
    store = ResultsStore(tmp_path)
    configs = [make_config(df=d, seed=s) for d in (10, 20, 40, 80, 160, 320, 640, 1280) for s in range(5)]
    keys = store.add_many(configs)
    go = tmp_path / "go"
    worker = """
        import json, math, os, sys, time
        from finetune.result import RunResult
        from study.results import ResultsStore
        store, go, out = ResultsStore(sys.argv[1]), sys.argv[2], sys.argv[3]
        while not os.path.exists(go):
            time.sleep(0.005)
        mine = []
        while (item := store.claim_next()) is not None:
            key, config = item
            mine.append(key)
            time.sleep(0.002)  # "train"
            store.finish(key, RunResult(task="t", model_name="xs", total_params=10, non_embedding_params=5,
                pretrain_corpus="aligned", pretrain_tokens=1, method="lora", pet_size=4, trainable_params=2,
                finetune_examples=config["finetune_examples"], seed=config["seed"], best_step=1, dev_ppl=2.0,
                test_ppl=2.0, test_log_ppl=math.log(2.0), bleu=1.0, chrf=1.0, rouge_l=1.0, zero_shot={},
                wall_time_s=0.1, code_version="x"))
        json.dump(mine, open(out, "w"))
    """
    procs = [_run_python(worker, tmp_path, go, tmp_path / f"w{i}.json") for i in range(2)]
    time.sleep(0.5)  # let both start and block on the go file
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    claimed = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(keys)
    assert all(claimed), "both workers should have got some runs"
    rows = store.rows()
    assert len(rows) == len(keys) and {r["attempts"] for r in rows} == {1}


def test_release_and_keep_alive(tmp_path):
    store = ResultsStore(tmp_path)
    key = store.add(make_config())
    assert store.claim(key, worker_id="w1")
    assert store.release(key, worker_id="w1")
    assert store.get(key)["status"] == "pending"
    assert store.claim(key)
    first = store.get(key)["heartbeat_at"]
    with store.keep_alive(key, interval_s=0.05) as lost:
        time.sleep(0.3)
    assert not lost.is_set()
    assert store.get(key)["heartbeat_at"] > first


def test_export_dataframe_and_csv(tmp_path):
    store = ResultsStore(tmp_path)
    configs = [make_config(df=d) for d in (100, 200, 400)]
    for config in configs[:2]:
        store.finish(config, make_result(config))
    store.add(configs[2])  # pending: not exported by default
    frame = store.to_dataframe()
    assert list(frame["finetune_examples"]) == [100, 200]
    assert list(frame.columns[:3]) == ["run_key", "status", "task"]
    assert frame["zero_shot.de_en_bleu"].tolist() == [3.5, 3.5] and frame["extra.comet"].tolist() == [71.0, 71.0]
    path = store.to_csv(tmp_path / "report" / "results.csv")
    back = pd.read_csv(path)
    assert len(back) == 2 and back["test_ppl"].tolist() == [13.0, 13.0]
    assert not list(path.parent.glob(".*tmp*"))
    assert len(store.to_dataframe(None)) == 3
    with pytest.raises(ValueError, match="status must be one of"):
        store.rows("finished")
    assert ResultsStore(tmp_path / "empty").to_dataframe().empty


def test_bad_store_arguments(tmp_path):
    with pytest.raises(ValueError, match="journal_mode"):
        ResultsStore(tmp_path, journal_mode="memory")
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="not a sha256"):
        store.has_result("abc")
    with pytest.raises(KeyError):
        store.claim("0" * 64)
