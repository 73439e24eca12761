"""Cheap deterministic stand-ins for pretraining and finetuning, to test the study's scheduler and report.

Results follow known laws (so the report's fits can be checked): test log-PPL =
E + A / (X^alpha * Df^beta) per method, X = non-embedding params or pretraining tokens.
Run as a script it is a study worker: `python study_fakes.py STUDY_DIR WORKER NUM_WORKERS`
(spec: a small grid, see `fake_spec`); STUDY_FAKE_RUN_S / STUDY_FAKE_PRETRAIN_S set the
seconds each fake run / pretraining sleeps, STUDY_FAKE_FAIL names a Df that fails once.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from finetune.result import RunResult  # noqa: E402
from study.spec import StudySpec  # noqa: E402

PARAMS = {"tiny": 20_000, "xs": 100_000, "s": 400_000, "m": 1_500_000, "l": 5_000_000}
# method -> (A, alpha, beta, E) of the fake multiplicative law
LAW = {"fmt": (100.0, 0.25, 0.45, 1.0), "lora": (12.0, 0.2, 0.25, 1.2), "prompt": (9.0, 0.15, 0.15, 1.5)}


def fake_spec(**changes) -> StudySpec:
    """Three sizes (one also on the Dp and PET axes), all methods, four Df, two seeds: 72 runs."""
    values = dict(name="fake", sizes=("tiny", "xs", "s"), pretrain_gin="gin_configs/pretrain/smoke.gin",
                  token_budget=8192, checkpoint_tokens=(2048, 4096, 8192), dp_sweep_sizes=("xs",),
                  pet_sweep_sizes=("xs",), lora_ranks=(4, 8), prompt_lengths=(4, 8),
                  finetune_examples=(50, 100, 200, 400, 800), seeds=(0, 1), sweep_seeds=(0,), num_steps=2,
                  bootstrap_resamples=10, trajectories=False)
    values.update(changes)
    return StudySpec(**values)


def fake_pretrain(gin_file, bindings, workdir: Path, size: str, progress: bool) -> None:
    """Sleep, then leave a marker; logs each call to <study>/pretrain_calls.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir.parent.parent / "pretrain_calls.log", "a") as handle:
        handle.write(f"{workdir.name} {os.getpid()}\n")
    time.sleep(float(os.environ.get("STUDY_FAKE_PRETRAIN_S", "0")))
    (workdir / "fake_pretrained").write_text(" ".join(bindings))


def fake_value(size: str, tokens: int, method: str, pet: int, df: int, seed: int) -> float:
    """The fake test log-PPL: multiplicative law in model size, with Dp, PET size and seed effects."""
    a, alpha, beta, e = LAW[method]
    x = PARAMS[size] * (tokens / 8192) ** 0.5 * (1 + 0.05 * math.log2(max(pet, 1)))
    noise = 1 + 0.004 * ((seed * 7 + df) % 3 - 1)
    return (e + a / (x ** alpha * df ** beta)) * noise


def fake_run(config, workdir: Path, *, progress: bool = True) -> RunResult:
    """A deterministic RunResult for the config (its dict), after an optional sleep."""
    c = config.to_dict()
    workdir.mkdir(parents=True, exist_ok=True)
    study = workdir.parent.parent
    with open(study / "run_calls.log", "a") as handle:
        handle.write(f"{c['method']} {c['finetune_examples']} {c['seed']} {os.getpid()}\n")
    fail_df = os.environ.get("STUDY_FAKE_FAIL")
    marker = study / "failed_once"
    if fail_df and int(fail_df) == c["finetune_examples"] and not marker.exists():
        marker.write_text("x")
        raise RuntimeError(f"injected failure at Df={fail_df}")
    time.sleep(float(os.environ.get("STUDY_FAKE_RUN_S", "0")))
    size, corpus = Path(c["pretrain_workdir"]).name.split("_")
    pet = {"fmt": 0, "lora": c.get("lora_rank", 0), "prompt": c.get("prompt_length", 0)}[c["method"]]
    log_ppl = fake_value(size, c["checkpoint_tokens"], c["method"], pet, c["finetune_examples"], c["seed"])
    bleu = max(0.0, 40 - 10 * log_ppl)
    if corpus == "misaligned":  # Isik et al.'s signature: CE still improves with Dp, BLEU does not
        log_ppl *= 1.1
        bleu -= 5.0 * (c["checkpoint_tokens"] == 4096)
    return RunResult(task=c["task"], model_name=size, total_params=PARAMS[size] * 2, non_embedding_params=PARAMS[size],
                     pretrain_corpus=corpus, pretrain_tokens=c["checkpoint_tokens"], method=c["method"], pet_size=pet,
                     trainable_params=PARAMS[size] if c["method"] == "fmt" else 100 * max(pet, 1),
                     finetune_examples=c["finetune_examples"], seed=c["seed"], best_step=1, dev_ppl=math.exp(log_ppl),
                     test_ppl=math.exp(log_ppl), test_log_ppl=log_ppl, bleu=bleu, chrf=bleu + 10, rouge_l=None,
                     zero_shot={"mt_de_en.log_ppl": log_ppl + 1}, wall_time_s=0.01, code_version="test")


if __name__ == "__main__":
    from study.runner import run_study

    study_dir, worker, num_workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    counts = run_study(fake_spec(), study_dir, worker=worker, num_workers=num_workers, run_fn=fake_run,
                       pretrain_fn=fake_pretrain, progress=False, report=False)
    sys.exit(1 if counts["failed"] else 0)
