"""Scored trajectories of one model size and their npz store (numpy only: analyses and plots run
from the npz files without JAX or the checkpoints).

Keys of a size's npz: "lp|<probe>|<fingerprint>|<step>" (per-token log-probs [rows, target
tokens]), "mc|<task>|<fingerprint>|<step>" (MC_FIELDS), "ckpt|<step>" ([tokens seen, dev loss])
and "info|model" / "info|params" (size name, non-embedding parameters).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from checkpoints.atomic import atomic_path

MC_FIELDS = ("accuracy", "grade", "correct_option_ppl", "incorrect_option_ppl")


def lp_key(probe: str, fingerprint: str, step: int) -> str:
    return f"lp|{probe}|{fingerprint}|{step}"


def mc_key(task: str, fingerprint: str, step: int) -> str:
    return f"mc|{task}|{fingerprint}|{step}"


@dataclasses.dataclass
class SizeScores:
    """Everything scored for one model size: per checkpoint, per-token log-probs and MC results."""

    label: str
    model: str
    params: int  # non-embedding parameters
    steps: np.ndarray
    tokens: np.ndarray
    dev_loss: np.ndarray
    log_probs: dict[str, np.ndarray]  # probe name -> [checkpoints, rows, target tokens]
    mc: dict[str, dict[str, np.ndarray]]  # task name -> field -> [checkpoints]

    @property
    def flops(self) -> np.ndarray:
        """Training FLOPs, 6 N D (N non-embedding parameters, D tokens seen)."""
        return 6.0 * self.params * self.tokens.astype(np.float64)

    def ppl(self, probe: str) -> np.ndarray:
        """Corpus perplexity of a probe at each checkpoint."""
        return np.exp(-self.log_probs[probe].reshape(len(self.steps), -1).mean(axis=1))

    def token_ppl(self, probe: str = "validation") -> np.ndarray:
        """[pairs, checkpoints] per-(context, token) perplexity: the trend classifier's input."""
        lp = self.log_probs[probe]
        return np.exp(-lp.reshape(lp.shape[0], -1).T.astype(np.float64))


class ScoreFile:
    """The npz of one size as {key: array}; `save` writes it atomically (tmp + os.replace)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.arrays: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                self.arrays = {k: data[k] for k in data.files}

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **self.arrays)


def _complete(arrays: dict[str, np.ndarray], kind: str, steps: list[int]) -> dict[str, str]:
    """{name: fingerprint} of the probes/tasks stored at every step (the last-written fingerprint wins)."""
    found: dict[tuple[str, str], set[int]] = {}
    for key in arrays:
        parts = key.split("|")
        if parts[0] == kind and len(parts) == 4:
            found.setdefault((parts[1], parts[2]), set()).add(int(parts[3]))
    return {name: fingerprint for (name, fingerprint), have in found.items() if set(steps) <= have}


def load_size_scores(path: str | Path, label: str | None = None) -> SizeScores:
    """A SizeScores from a size's npz alone: every probe and task scored at all its checkpoints."""
    store = ScoreFile(path)
    if not store.arrays:
        raise ValueError(f"no trajectory scores at {path}")
    if "info|model" not in store:
        raise ValueError(f"{path} lacks 'info|model': not written by eval.trajectory_scoring")
    steps = sorted(int(k.split("|")[1]) for k in store.arrays if k.startswith("ckpt|"))
    meta = np.array([store.arrays[f"ckpt|{s}"] for s in steps], np.float64).reshape(-1, 2)
    probes, tasks = _complete(store.arrays, "lp", steps), _complete(store.arrays, "mc", steps)
    return SizeScores(
        label=label or str(store.arrays["info|model"]), model=str(store.arrays["info|model"]),
        params=int(store.arrays["info|params"]), steps=np.array(steps), tokens=meta[:, 0].astype(np.int64),
        dev_loss=meta[:, 1],
        log_probs={name: np.stack([store.arrays[lp_key(name, fp, s)] for s in steps]) for name, fp in probes.items()},
        mc={name: {f: np.array([store.arrays[mc_key(name, fp, s)][i] for s in steps]) for i, f in enumerate(MC_FIELDS)}
            for name, fp in tasks.items()},
    )
