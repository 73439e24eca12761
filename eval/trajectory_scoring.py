"""Score probes and multiple-choice tasks at every intermediate checkpoint of a pretraining workdir.

Results of one size live in one npz (written atomically after each checkpoint), keyed by
probe/task fingerprint and step, so an interrupted run resumes where it stopped and a
checkpoint already scored for the same probe is never rescored. The model is compiled once
per size: each checkpoint only swaps parameters into the same jitted scorer.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from flax import nnx
from tqdm import tqdm

from checkpoints.load import load_checkpoint_params
from checkpoints.store import INTERMEDIATE_DIR, LATEST_DIR, intermediate_checkpoints
from eval import multiple_choice as mc
from eval.probes import Probe, task_fingerprint
from eval.token_scoring import TokenScorer, encode_rows, mode_id, text_score_fn
from eval.trajectory_data import MC_FIELDS, ScoreFile, SizeScores, lp_key, mc_key
from model.config import ModelConfig
from model.functional import split_params
from model.methods import build_model
from model.sizes import count_params

log = logging.getLogger(__name__)
_SKELETONS: dict[str, tuple] = {}  # model config JSON -> (graphdef, non-parameter state)


def is_workdir(path: Path) -> bool:
    """A pretraining workdir: has intermediate checkpoints/<step>/ directories."""
    directory = Path(path) / INTERMEDIATE_DIR
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def discover_workdirs(path: str | Path, max_depth: int = 3) -> dict[str, Path]:
    """{label: workdir}: the path itself if it is a workdir, else every workdir below it (labels = relative paths)."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"--workdir {root} is not a directory")
    if is_workdir(root):
        return {root.name: root}
    found: dict[str, Path] = {}
    frontier = [root]
    for _ in range(max_depth):
        children = []
        for directory in frontier:
            for child in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if is_workdir(child):
                    found[str(child.relative_to(root))] = child
                elif child.name not in (INTERMEDIATE_DIR, LATEST_DIR, "tensorboard"):
                    children.append(child)
        frontier = children
    if not found:
        raise ValueError(f"no pretraining workdir (a directory with {INTERMEDIATE_DIR}/<step>/) under {root}")
    return found


def score_workdir(workdir: str | Path, probes: Sequence[Probe], out_path: str | Path, *, label: str | None = None,
                  tasks: Sequence[mc.MCTask] = (), tokenizer=None, num_shots: int = 2, mc_seq_len: int = 256,
                  batch_size: int = 32, max_checkpoints: int | None = None, progress: bool = False) -> SizeScores:
    """Score every probe and task at every intermediate checkpoint (those not already in out_path)."""
    rows = intermediate_checkpoints(workdir)
    if max_checkpoints is not None and len(rows) > max_checkpoints:  # keep the first and last, evenly spaced
        rows = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, max_checkpoints).round().astype(int))]
    if tasks and tokenizer is None:
        raise ValueError("multiple-choice tasks need the tokenizer (eval.token_scoring.load_tokenizer)")
    store = ScoreFile(out_path)
    fingerprints = {task.name: task_fingerprint(task, num_shots, 0) for task in tasks}
    mode = mode_id(tokenizer) if tokenizer is not None else None
    features = {}
    scorer = None
    config = None
    for row in tqdm(rows, desc=f"trajectories {label or Path(workdir).name}", unit="ckpt", disable=not progress):
        step = row["step"]
        todo_probes = [p for p in probes if lp_key(p.name, p.fingerprint(), step) not in store]
        todo_tasks = [t for t in tasks if mc_key(t.name, fingerprints[t.name], step) not in store]
        if config is None or todo_probes or todo_tasks:
            config, params, _ = load_checkpoint_params(workdir, step=step)
        if not (todo_probes or todo_tasks):
            continue
        started = time.perf_counter()
        if scorer is None:
            scorer = TokenScorer(model_from_params(config, params), batch_size=batch_size)
        scorer.set_params(params)
        for probe in todo_probes:
            if probe.name not in features:
                if mode is None:
                    raise ValueError("scoring probes needs the tokenizer (for the mode token id)")
                features[probe.name] = encode_rows(probe.prefixes, probe.targets, seq_len=probe.seq_len, mode_id=mode)
            lp = scorer.log_probs(features[probe.name])
            weights = features[probe.name]["decoder_loss_weights"] > 0
            store.arrays[lp_key(probe.name, probe.fingerprint(), step)] = lp[weights].reshape(probe.targets.shape).astype(np.float32)
        for task in todo_tasks:
            result = mc.score_multiple_choice(task, text_score_fn(scorer, tokenizer, seq_len=mc_seq_len),
                                              num_shots=num_shots, batch_size=batch_size)
            store.arrays[mc_key(task.name, fingerprints[task.name], step)] = np.array(
                [getattr(result, f) for f in MC_FIELDS], np.float64)
        dev_loss = np.nan if row["dev_loss"] is None else row["dev_loss"]
        store.arrays[f"ckpt|{step}"] = np.array([row["tokens"], dev_loss], np.float64)
        store.arrays["info|model"] = np.array(config.name)
        store.arrays["info|params"] = np.array(_non_embedding(config))
        store.save()
        log.debug("%s step %d: %d probes, %d tasks in %.1fs", label or workdir, step, len(todo_probes),
                  len(todo_tasks), time.perf_counter() - started)
    return SizeScores(
        label=label or Path(workdir).name, model=config.name, params=_non_embedding(config),
        steps=np.array([r["step"] for r in rows]), tokens=np.array([r["tokens"] for r in rows], np.int64),
        dev_loss=np.array([np.nan if r["dev_loss"] is None else r["dev_loss"] for r in rows], np.float64),
        log_probs={p.name: np.stack([store.arrays[lp_key(p.name, p.fingerprint(), r["step"])] for r in rows])
                   for p in probes},
        mc={t.name: {f: np.array([store.arrays[mc_key(t.name, fingerprints[t.name], r["step"])][i] for r in rows])
                     for i, f in enumerate(MC_FIELDS)} for t in tasks},
    )


def _non_embedding(config: ModelConfig) -> int:
    return int(count_params(config)["non_embedding"])


def model_from_params(config: ModelConfig, params: dict) -> nnx.Module:
    """A Transformer with these params; the module skeleton (graph + RNG state) is built once per config."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _SKELETONS:
        model = build_model(config, params)
        graphdef, _, rest = split_params(model)
        _SKELETONS[key] = (graphdef, rest)
        return model
    graphdef, rest = _SKELETONS[key]
    return nnx.merge(graphdef, params, rest)


def load_model(workdir: str | Path, step: int) -> nnx.Module:
    """The Transformer of one checkpoint (for contrastive decoding)."""
    config, params, _ = load_checkpoint_params(workdir, step=step)
    return model_from_params(config, params)
