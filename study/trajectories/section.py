"""The "Trajectories" report (Xia et al. 2023 lens on a study): score every checkpoint of every size,
then token trends, double descent, hallucinated vs real text, perplexity vs few-shot accuracy and
the OPT real-data check, as markdown + PNGs + npz under out_dir.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from checkpoints.atomic import atomic_path, write_text_atomic
from checkpoints.load import read_checkpoint_meta
from checkpoints.store import intermediate_checkpoints
from eval import multiple_choice as mc
from eval import probes as probe_lib
from eval import trajectory_analysis as analysis
from eval import trends
from eval.contrastive import contrastive_generate
from eval.token_scoring import load_tokenizer, mode_id
from eval.trajectory_data import SizeScores
from eval.trajectory_scoring import load_model, score_workdir
from model.config import ModelConfig
from model.sizes import count_params
from study.trajectories.opt_check import opt_section

log = logging.getLogger(__name__)
REPORT_FILE = "trajectories.md"


@dataclasses.dataclass(frozen=True)
class TrajectoryLimits:
    """How much is scored (defaults: ~3k validation pairs) and how trends are called."""

    num_sequences: int = 64          # validation rows; pairs = num_sequences * target_tokens
    prefix_tokens: int = 16
    target_tokens: int = 48
    corrupt_sequences: int = 32
    contrastive_prompts: int = 16
    contrastive_tokens: int = 32
    prompt_tokens: int = 5
    mc_questions: int = 40           # per translation direction
    num_shots: int = 2
    bigbench: str | None = None      # path of a BIG-bench task.json (or its directory)
    bigbench_max_examples: int | None = 100
    max_checkpoints: int | None = None
    batch_size: int = 32
    pair: str | None = None          # default: from the checkpoints' data record
    corpus: str | None = None
    start_fraction: float = 0.3      # trend window [start_fraction, end_fraction] of training
    end_fraction: float = 1.0
    regressor: str = "log_step"      # the authors' released analysis; "index": the paper text's reading
    alpha: float = 0.05
    stagnation_band: tuple[float, float] = (0.95, 1.05)
    opt_check: bool = True
    progress: bool = True
    link_base: str | None = None     # returned markdown's image links are relative to this (default out_dir's parent)

    def __post_init__(self) -> None:
        for name in ("num_sequences", "prefix_tokens", "target_tokens", "corrupt_sequences", "contrastive_prompts",
                     "contrastive_tokens", "prompt_tokens", "mc_questions", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_shots < 0 or (self.max_checkpoints is not None and self.max_checkpoints < 1):
            raise ValueError(f"num_shots must be >= 0 and max_checkpoints None or >= 1, got {self.num_shots!r}, "
                             f"{self.max_checkpoints!r}")
        if self.prompt_tokens > self.prefix_tokens:
            raise ValueError(f"prompt_tokens {self.prompt_tokens} exceeds prefix_tokens {self.prefix_tokens}: "
                             "contrastive prompts are cut from the validation prefixes")
        self.trend_config()  # validates the window, regressor, alpha and band

    @classmethod
    def from_kwargs(cls, **limits: Any) -> "TrajectoryLimits":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(limits) - valid)
        if unknown:
            raise ValueError(f"unknown trajectory limits {unknown}; valid: {sorted(valid)}")
        return cls(**limits)

    def trend_config(self) -> trends.TrendConfig:
        return trends.TrendConfig(start_fraction=self.start_fraction, end_fraction=self.end_fraction,
                                  regressor=self.regressor, alpha=self.alpha,
                                  stagnation_band=tuple(float(v) for v in self.stagnation_band))


def _data_record(workdir: Path) -> dict:
    """What the workdir was pretrained on (pair, corpus, source) and its vocabulary size, from its last checkpoint."""
    meta = read_checkpoint_meta(workdir, step=intermediate_checkpoints(workdir)[-1]["step"])
    data = meta.get("data_position") or {}
    corpus = data.get("corpus", "aligned")
    if isinstance(corpus, dict):  # a blend: the held-out text of its main corpus
        corpus = max(corpus, key=corpus.get)
    return {"pair": data.get("pair", "en-de"), "corpus": corpus if corpus in ("aligned", "misaligned") else "aligned",
            "source": data.get("source", "corpus"), "vocab_size": (meta.get("model_config") or {}).get("vocab_size"),
            "model_config": meta.get("model_config") or {}}


def _check_workdirs(workdirs: Mapping[str, Path], pair: str, tokenizer) -> None:
    """Every size must be a corpus-pretrained model of this pair's vocabulary (its text is what we score)."""
    for label, workdir in workdirs.items():
        record = _data_record(workdir)
        if record["source"] != "corpus":
            raise ValueError(f"size {label!r} ({workdir}) was pretrained on {record['source']!r} data, not the corpora: "
                             "it has no held-out text to score")
        if record["pair"] != pair or (record["vocab_size"] or 0) < tokenizer.get_piece_size():
            raise ValueError(f"size {label!r} ({workdir}) has pair {record['pair']!r} and vocab_size "
                             f"{record['vocab_size']}; the trajectories use pair {pair!r} "
                             f"({tokenizer.get_piece_size()} pieces): every size must share the vocabulary")


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "size"


def contrastive_probes(workdirs: Mapping[str, Path], validation: probe_lib.Probe, tokenizer, limits: TrajectoryLimits,
                       cache: Path) -> tuple[list[probe_lib.Probe], str]:
    """Greedy and top-p 0.9 contrastive texts of the smallest vs the largest size (final checkpoints), cached in an npz."""
    finals = {label: intermediate_checkpoints(w)[-1]["step"] for label, w in workdirs.items()}
    sizes = {label: count_params(ModelConfig.from_dict(_data_record(w)["model_config"]))["non_embedding"]
             for label, w in workdirs.items()}
    ordered = sorted(sizes, key=sizes.get)
    small_label, large_label = ordered[0], ordered[-1]
    large = load_model(workdirs[large_label], finals[large_label])
    if len(ordered) == 1:  # one size: its first checkpoint plays the small model
        first = intermediate_checkpoints(workdirs[small_label])[0]["step"]
        small, note = load_model(workdirs[small_label], first), f"{small_label} step {first} vs step {finals[small_label]}"
    else:
        small = load_model(workdirs[small_label], finals[small_label])
        note = f"{small_label} vs {large_label} (final checkpoints)"
    prompts = validation.prefixes[:limits.contrastive_prompts, :limits.prompt_tokens]
    key = json.dumps([note, str(workdirs[small_label]), str(workdirs[large_label]), limits.contrastive_tokens,
                      validation.fingerprint(), prompts.shape])
    out = []
    stored = {}
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            if str(data["key"]) == key:
                stored = {k: data[k] for k in data.files if k != "key"}
    for name, top_p in (("contrastive_greedy", None), ("contrastive_top_p", 0.9)):
        if name not in stored:
            stored[name] = contrastive_generate(small, large, prompts, new_tokens=limits.contrastive_tokens,
                                                mode_id=mode_id(tokenizer), allowed_ids=probe_lib.ordinary_ids(tokenizer),
                                                top_p=top_p, seed=0)
        out.append(probe_lib.Probe(name, prompts, stored[name], "contrastive"))
    with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, key=np.array(key), **stored)
    return out, note


def _pair_text(probe: probe_lib.Probe, pair: int, tokenizer, context: int = 6) -> str:
    """`...context -> [token]` of one (context, token) pair (pairs are row-major over the probe's targets)."""
    row, col = divmod(pair, probe.targets.shape[1])
    ids = np.concatenate([probe.prefixes[row], probe.targets[row, :col]])[-context:]
    return f"`...{tokenizer.decode(ids.tolist())} -> [{tokenizer.id_to_piece(int(probe.targets[row, col]))}]`"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _img(path: Path, base: Path, title: str) -> str:
    return f"![{title}]({os.path.relpath(path, base)})"


def trajectory_section(pretrain_dirs: Mapping[str, Path], out_dir: Path, **limits: Any) -> str:
    """Markdown of the Trajectories section; scores are resumable npz under out_dir.

    Also written to out_dir/trajectories.md (links local to out_dir); in the returned text image
    links are relative to limits["link_base"], default out_dir's parent: a study report in DIR
    that calls this with out_dir=DIR/trajectories embeds it unchanged. Limits: TrajectoryLimits.
    """
    config = TrajectoryLimits.from_kwargs(**limits)
    trend_config = config.trend_config()
    if not pretrain_dirs:
        raise ValueError("pretrain_dirs is empty: give {size: pretraining workdir}")
    workdirs = {str(k): Path(v) for k, v in pretrain_dirs.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = _data_record(next(iter(workdirs.values())))
    pair, corpus = config.pair or record["pair"], config.corpus or record["corpus"]
    tokenizer = load_tokenizer(pair)
    _check_workdirs(workdirs, pair, tokenizer)
    validation = probe_lib.validation_probe(tokenizer, probe_lib.held_out_documents(pair, corpus),
                                            num_sequences=config.num_sequences, prefix_tokens=config.prefix_tokens,
                                            target_tokens=config.target_tokens)
    corrupted = probe_lib.corrupted_probes(validation, tokenizer, num_sequences=config.corrupt_sequences)
    contrastive, contrastive_note = contrastive_probes(workdirs, validation, tokenizer, config, out_dir / "contrastive.npz")
    tasks = probe_lib.translation_mc_tasks(pair, num_questions=config.mc_questions)
    if config.bigbench:
        tasks.append(mc.load_bigbench_task(config.bigbench, max_examples=config.bigbench_max_examples))
    all_probes = [validation, *corrupted, *contrastive]

    scores: dict[str, SizeScores] = {}
    for label, workdir in workdirs.items():
        scores[label] = score_workdir(workdir, all_probes, out_dir / f"scores_{_safe(label)}.npz", label=label,
                                      tasks=tasks, tokenizer=tokenizer, num_shots=config.num_shots,
                                      batch_size=config.batch_size, max_checkpoints=config.max_checkpoints,
                                      progress=config.progress)
    scores = dict(sorted(scores.items(), key=lambda kv: kv[1].params))

    lines = [f"Xia et al. (2023) analyses over {len(scores)} size(s) ({', '.join(scores)}) on held-out {pair} "
             f"{corpus} text: {validation.targets.size} (context, token) pairs, {len(validation.targets)} rows of "
             f"{config.prefix_tokens} prefix + {config.target_tokens} scored tokens (S-denoiser format).", ""]
    lines += _table(["size", "params (non-emb.)", "checkpoints", "tokens (last)", "validation ppl (first -> last)"],
                    [[k, f"{s.params:,}", str(len(s.steps)), f"{int(s.tokens[-1]):,}",
                      f"{s.ppl('validation')[0]:.2f} -> {s.ppl('validation')[-1]:.2f}"] for k, s in scores.items()])
    lines += _trend_lines(scores, validation, tokenizer, trend_config, out_dir)
    lines += _hallucination_lines(scores, corrupted, contrastive, contrastive_note, config, out_dir)
    lines += _accuracy_lines(scores, tasks, config, out_dir)
    if config.opt_check:
        lines += ["", opt_section(out_dir)]
    body = "\n".join(lines) + "\n"
    write_text_atomic(out_dir / REPORT_FILE, f"# Training trajectories\n\n{body}")
    return rebase_links(body, out_dir, Path(config.link_base) if config.link_base else out_dir.parent)


def _trend_lines(scores: Mapping[str, SizeScores], validation: probe_lib.Probe, tokenizer,
                 trend_config: trends.TrendConfig, out_dir: Path) -> list[str]:
    """Per-token trend fractions, double descent (counts and examples), plots; labels saved to trends.npz."""
    summary = analysis.trend_summary(scores, trend_config)
    lines = ["", "### Per-token trends", "",
             f"OLS of ppl_i / ppl_j on {trend_config.regressor} from {trend_config.start_fraction:.0%} to "
             f"{trend_config.end_fraction:.0%} of training, p < {trend_config.alpha}; stagnated: no trend, the geometric "
             f"mean within {trend_config.stagnation_band} of the first and the last ppl, and the ppl's variance below "
             f"the geometric mean (the authors' released analysis); a window of fewer than {trends.MIN_WINDOW} "
             "checkpoints is too short to classify.", ""]
    lines += _table(["size", *trends.CLASSES], [[k, *(f"{v[c]:.3f}" for c in trends.CLASSES)]
                                                for k, v in summary.fractions.items()])
    for label, error in summary.errors.items():
        lines.append(f"\n- {label}: {error}" if error.startswith("too short") else f"\n- {label}: not classified ({error})")
    lines += ["", "Double descent (upward, then downward later or in larger models):", ""]
    lines += [f"- {name}: {int(mask.sum())} of {mask.size} pairs ({mask.mean():.2%})"
              for name, mask in summary.double_descent.items()] or ["- needs two sizes or enough checkpoints for two windows"]
    examples = next(((name, mask) for name, mask in summary.double_descent.items() if mask.any()), None)
    if examples is not None:
        lines += ["", f"Examples ({examples[0]}): " + "; ".join(
            _pair_text(validation, int(p), tokenizer) for p in np.nonzero(examples[1])[0][:5])]
    for path in analysis.plot_trends(scores, summary, out_dir):
        lines += ["", _img(path, out_dir, path.stem)]
    arrays = {f"labels|{k}": r.labels for k, r in summary.results.items()}
    arrays.update({f"double_descent|{k}": m for k, m in summary.double_descent.items()})
    with atomic_path(out_dir / "trends.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, classes=np.array(trends.CLASSES), **arrays)
    return lines


def _hallucination_lines(scores: Mapping[str, SizeScores], corrupted: list[probe_lib.Probe],
                         contrastive: list[probe_lib.Probe], note: str, config: TrajectoryLimits, out_dir: Path) -> list[str]:
    """Real vs corrupted vs contrastive text perplexity: last-checkpoint table and per-size plots."""
    corrupt_names = [p.name for p in corrupted]
    lines = ["", "### Hallucinated vs real text", "",
             f"Perplexity at the last checkpoint of real held-out text and of copies with 20-100% random subwords "
             f"({config.corrupt_sequences} rows), and of contrastive text (p_small - p_large, {note}; "
             f"{config.prompt_tokens}-token prompts).", ""]
    header = [*corrupt_names, *(p.name for p in contrastive)]
    lines += _table(["size", *header], [[k, *(f"{s.ppl(p)[-1]:.1f}" for p in header)] for k, s in scores.items()])
    for path in (analysis.plot_perplexities(scores, corrupt_names, out_dir / "corrupted_ppl.png", title="real vs corrupted"),
                 analysis.plot_perplexities(scores, [p.name for p in contrastive], out_dir / "contrastive_ppl.png",
                                            title="contrastive text")):
        lines += ["", _img(path, out_dir, path.stem)]
    return lines


def _accuracy_lines(scores: Mapping[str, SizeScores], tasks: list, config: TrajectoryLimits, out_dir: Path) -> list[str]:
    """Few-shot accuracy vs validation ppl / FLOPs / tokens / size: predictor table and one figure."""
    source = (f"BIG-bench task {config.bigbench} (loaded with eval.multiple_choice.load_bigbench_task) and "
              if config.bigbench else "no BIG-bench task (none is bundled: pass trajectory_limits bigbench=PATH to a "
              "task.json, as Xia et al. use BIG-bench); ")
    lines = ["", f"### Validation perplexity vs {config.num_shots}-shot multiple-choice accuracy", "",
             f"Tasks: {source}translation multiple choice built from held-out parallel text (pick the right "
             "translation among 4 of similar length; ours, not a BIG-bench task). Length-normalised log-likelihood "
             "scoring; how well each quantity predicts accuracy over all sizes and checkpoints (Spearman rho; R^2 of "
             "one shared linear fit on its log):", ""]
    rows, points_by_task = [], {}
    for task in tasks:
        points = points_by_task[task.name] = analysis.accuracy_points(scores, task.name)
        quality = analysis.predictor_quality(points)
        rows.append([f"{task.name} ({len(task.examples)} q.)", f"{points['accuracy'].min():.2f}-{points['accuracy'].max():.2f}",
                     *(f"{quality[p]['spearman']:.2f} / {quality[p]['r2']:.2f}" for p in analysis.PREDICTORS)])
    lines += _table(["task", "accuracy range", *(f"{p}: rho / R^2" for p in analysis.PREDICTORS)], rows)
    path = analysis.plot_accuracy(points_by_task, out_dir / "accuracy.png")
    return lines + ["", _img(path, out_dir, path.stem), ""]


def rebase_links(markdown: str, out_dir: Path, base: Path) -> str:
    """Image links to files in out_dir rewritten relative to `base` (where the embedding report lives)."""
    return re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({os.path.relpath(Path(out_dir) / m.group(1), base)})", markdown)
