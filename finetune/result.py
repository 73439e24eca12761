"""What one finished finetuning run is: its result fields (RunResult, validated) and its identity
(the sha256 of its canonical config: the run key). Imports neither JAX nor TensorFlow, so the
results store and plain scripts read results without the training stack."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

# (column, SQL type) of the result fields, in export order; every one is filled on a done row
# except the metrics in OPTIONAL_METRICS, which are NULL where the task has no such metric.
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("task", "TEXT"),
    ("model_name", "TEXT"),
    ("total_params", "INTEGER"),
    ("non_embedding_params", "INTEGER"),
    ("pretrain_corpus", "TEXT"),
    ("pretrain_tokens", "INTEGER"),
    ("method", "TEXT"),
    ("pet_size", "INTEGER"),
    ("trainable_params", "INTEGER"),
    ("finetune_examples", "INTEGER"),
    ("seed", "INTEGER"),
    ("best_step", "INTEGER"),
    ("dev_ppl", "REAL"),
    ("test_ppl", "REAL"),
    ("test_log_ppl", "REAL"),
    ("bleu", "REAL"),
    ("chrf", "REAL"),
    ("rouge_l", "REAL"),
    ("zero_shot_json", "TEXT"),
    ("extra_metrics_json", "TEXT"),
    ("metric_signatures_json", "TEXT"),
    ("wall_time_s", "REAL"),
    ("code_version", "TEXT"),
)
OPTIONAL_METRICS = ("bleu", "chrf", "rouge_l")


def _canonical(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ValueError(f"config keys must be strings; {where} has {bad[0]!r}")
        return {k: _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()  # numpy scalar
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"config value {where} = {value!r} is not finite")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    raise ValueError(f"config value {where} has type {type(value).__name__}; use JSON types (str, number, bool, list, dict)")


def canonical_config_json(config: Mapping[str, Any]) -> str:
    """The one JSON text of a config: sorted keys, no spaces, tuples as lists, 2.0 as 2."""
    if not isinstance(config, Mapping):
        raise ValueError(f"a run config must be a dict, got {type(config).__name__}")
    return json.dumps(_canonical(config, "config"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def run_key(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a run's full config."""
    return hashlib.sha256(canonical_config_json(config).encode("utf-8")).hexdigest()


def code_version(repo_dir: str | os.PathLike | None = None) -> str:
    """The git commit of the code ('<sha>-dirty' with uncommitted changes; 'unknown' outside git)."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


@dataclasses.dataclass(frozen=True)
class RunResult:
    """All result fields of one finished run (pet_size is 0 for FMT; bleu/chrf/rouge_l None where not applicable)."""

    task: str
    model_name: str
    total_params: int
    non_embedding_params: int
    pretrain_corpus: str
    pretrain_tokens: int
    method: str
    pet_size: int
    trainable_params: int
    finetune_examples: int
    seed: int
    best_step: int
    dev_ppl: float
    test_ppl: float
    test_log_ppl: float
    bleu: float | None
    chrf: float | None
    rouge_l: float | None
    zero_shot: Mapping[str, float]
    wall_time_s: float
    code_version: str
    metric_signatures: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra_metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """Validated column values; raises ValueError naming the field that is missing or wrong."""
        row: dict[str, Any] = {}
        for name, sql_type in RESULT_COLUMNS:
            if name.endswith("_json"):
                value = getattr(self, name[: -len("_json")])
                if not isinstance(value, Mapping):
                    raise ValueError(f"{name[:-5]} must be a dict, got {type(value).__name__}")
                row[name] = json.dumps(_canonical(dict(value), name[:-5]), sort_keys=True)
                continue
            value = getattr(self, name)
            if value is None:
                if name in OPTIONAL_METRICS:
                    row[name] = None
                    continue
                raise ValueError(f"result field {name!r} is missing (None); every field but {OPTIONAL_METRICS} is required")
            if sql_type == "TEXT":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"result field {name!r} must be a non-empty string, got {value!r}")
            elif sql_type == "INTEGER":
                if isinstance(value, bool) or not float(value).is_integer() or value < 0:
                    raise ValueError(f"result field {name!r} must be a non-negative integer, got {value!r}")
                value = int(value)
            else:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"result field {name!r} must be finite, got {value!r}")
            row[name] = value
        for name in ("dev_ppl", "test_ppl"):
            if row[name] < 1.0:
                raise ValueError(f"{name} = {row[name]!r} is below 1, which no perplexity can be")
        if not math.isclose(row["test_log_ppl"], math.log(row["test_ppl"]), rel_tol=1e-6, abs_tol=1e-9):
            raise ValueError(f"test_log_ppl {row['test_log_ppl']!r} is not log(test_ppl {row['test_ppl']!r})")
        return row


def result_from_row(row: Mapping[str, Any]) -> RunResult:
    """A RunResult back from a results-store row (or an equal dict)."""
    fields = {name: row[name] for name, _ in RESULT_COLUMNS if not name.endswith("_json")}
    return RunResult(**fields, zero_shot=json.loads(row["zero_shot_json"] or "{}"),
                     extra_metrics=json.loads(row["extra_metrics_json"] or "{}"),
                     metric_signatures=json.loads(row["metric_signatures_json"] or "{}"))
