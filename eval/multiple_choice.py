"""Few-shot multiple-choice scoring by length-normalised log-likelihood (Xia et al. 2023, BIG-bench style).

The model enters only through a scoring function: given a batch of (context, continuation)
pairs it returns, for each, the per-token log-probs of the continuation's tokens given the
context. Tasks come from BIG-bench `task.json` files or are built from held-out parallel
text (pick the right translation among 4, distractors of similar length).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

# Per (context, continuation) pair: the continuation's per-token log-probs, 1-D, in order.
ScoreFn = Callable[[Sequence[tuple[str, str]]], Sequence[Any]]
NORMALIZATIONS = ("token", "char", "none")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """BIG-bench JSON prompt fields, with BIG-bench's defaults."""

    task_prefix: str = ""
    example_input_prefix: str = "\nQ: "
    example_output_prefix: str = "\nA: "
    choice_prefix: str = "\n  choice: "
    append_choices_to_input: bool = True
    few_shot_example_separator: str = "\n"


@dataclasses.dataclass(frozen=True)
class MCExample:
    """One question: its input, the choices, and each choice's target score (the best ones are correct)."""

    input: str
    choices: tuple[str, ...]
    target_scores: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"a multiple-choice example needs at least 2 choices, got {len(self.choices)}: {self.input[:60]!r}")
        if len(self.target_scores) != len(self.choices):
            raise ValueError(f"{len(self.choices)} choices but {len(self.target_scores)} target scores: {self.input[:60]!r}")
        if max(self.target_scores) == min(self.target_scores):
            raise ValueError(f"all choices score {self.target_scores[0]}: no correct answer in {self.input[:60]!r}")

    @property
    def correct(self) -> tuple[int, ...]:
        best = max(self.target_scores)
        return tuple(i for i, s in enumerate(self.target_scores) if s == best)


@dataclasses.dataclass(frozen=True)
class MCTask:
    name: str
    examples: tuple[MCExample, ...]
    prompt: PromptFormat = PromptFormat()


@dataclasses.dataclass(frozen=True)
class MCResult:
    """Accuracy and what it rests on, per example."""

    task: str
    num_shots: int
    normalization: str
    accuracy: float
    grade: float  # BIG-bench multiple_choice_grade: mean target score of the chosen choice
    predictions: np.ndarray
    choice_scores: tuple[np.ndarray, ...]  # normalised log-likelihood of every choice
    demonstrations: tuple[tuple[int, ...], ...]
    correct_option_ppl: float  # token PPL of the correct choices, as in Xia et al.'s option analysis
    incorrect_option_ppl: float


def query_text(example: MCExample, prompt: PromptFormat) -> str:
    """The example's input as the model sees it, up to and including the output prefix."""
    text = prompt.example_input_prefix + example.input
    if prompt.append_choices_to_input:
        text += "".join(prompt.choice_prefix + choice for choice in example.choices)
    return text + prompt.example_output_prefix


def draw_demonstrations(task: MCTask, index: int, num_shots: int, seed: int, pool: Sequence[MCExample] | None = None) -> tuple[int, ...]:
    """Indices (into pool, default the task's examples) of num_shots demonstrations for example `index`.

    Seeded per (seed, index); never the test item itself nor any pool example identical to it.
    """
    pool = task.examples if pool is None else pool
    test = task.examples[index]
    if num_shots == 0:
        return ()
    rng = np.random.default_rng([seed, index])
    chosen: list[int] = []
    for j in rng.permutation(len(pool)):  # O(pool) per item, no pairwise scan of the pool
        demo = pool[j]
        if (pool is task.examples and j == index) or (demo.input, demo.choices) == (test.input, test.choices):
            continue
        chosen.append(int(j))
        if len(chosen) == num_shots:
            return tuple(chosen)
    raise ValueError(
        f"{num_shots}-shot needs {num_shots} other examples, only {len(chosen)} are available in task {task.name!r}"
    )


def build_context(task: MCTask, index: int, demonstrations: Sequence[int], pool: Sequence[MCExample] | None = None, seed: int = 0) -> str:
    """task_prefix + demonstrations (each with one correct answer) + the test query."""
    pool = task.examples if pool is None else pool
    prompt = task.prompt
    rng = np.random.default_rng([seed, index, 1])
    shots = []
    for j in demonstrations:
        demo = pool[j]
        answer = demo.choices[int(rng.choice(demo.correct))]
        shots.append(query_text(demo, prompt) + answer)
    parts = shots + [query_text(task.examples[index], prompt)]
    return prompt.task_prefix + prompt.few_shot_example_separator.join(parts)


def _normalised(log_probs: np.ndarray, continuation: str, normalization: str) -> float:
    total = float(log_probs.sum())
    if normalization == "token":
        return total / len(log_probs)
    if normalization == "char":
        return total / max(len(continuation), 1)
    return total


def _checked(raw: Any, pair_index: int, continuation: str) -> np.ndarray:
    lp = np.asarray(raw, dtype=np.float64)
    if lp.ndim != 1 or lp.size == 0:
        raise ValueError(f"score_fn returned shape {lp.shape} for continuation {continuation!r}; need 1-D per-token log-probs")
    if not np.all(np.isfinite(lp)) or np.any(lp > 1e-4):
        raise ValueError(f"score_fn returned log-probs outside (-inf, 0] for pair {pair_index} ({continuation!r})")
    return lp


def score_multiple_choice(
    task: MCTask,
    score_fn: ScoreFn,
    *,
    num_shots: int = 2,
    seed: int = 0,
    normalization: str = "token",
    demo_pool: Sequence[MCExample] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> MCResult:
    """k-shot accuracy: each choice scored by its length-normalised log-likelihood after the prompt.

    normalization: "token" (mean log-prob per token, the default), "char" (sum per character),
    or "none" (sum). Demonstrations come from demo_pool (default: the task's other examples).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if num_shots < 0:
        raise ValueError(f"num_shots must be >= 0, got {num_shots}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not task.examples:
        raise ValueError(f"task {task.name!r} has no examples")
    demos, pairs, owner = [], [], []
    for index, example in enumerate(task.examples):
        chosen = draw_demonstrations(task, index, num_shots, seed, demo_pool)
        demos.append(chosen)
        context = build_context(task, index, chosen, demo_pool, seed)
        for c, choice in enumerate(example.choices):
            pairs.append((context, choice))
            owner.append((index, c))

    log_probs: list[np.ndarray] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc=f"{task.name} {num_shots}-shot", unit="batch",
                      disable=not progress):
        chunk = pairs[start : start + batch_size]
        returned = list(score_fn(chunk))
        if len(returned) != len(chunk):
            raise ValueError(f"score_fn returned {len(returned)} results for {len(chunk)} pairs")
        log_probs += [_checked(r, start + i, chunk[i][1]) for i, r in enumerate(returned)]

    per_example = [np.empty(len(ex.choices)) for ex in task.examples]
    option_totals = {True: [0.0, 0], False: [0.0, 0]}
    for (index, c), lp in zip(owner, log_probs):
        per_example[index][c] = _normalised(lp, task.examples[index].choices[c], normalization)
        totals = option_totals[c in task.examples[index].correct]
        totals[0] += float(lp.sum())
        totals[1] += len(lp)
    predictions = np.array([int(np.argmax(s)) for s in per_example])
    hits = [p in ex.correct for p, ex in zip(predictions, task.examples)]
    grades = [ex.target_scores[p] for p, ex in zip(predictions, task.examples)]
    ppl = {k: math.exp(-t / n) if n else math.nan for k, (t, n) in option_totals.items()}
    return MCResult(
        task=task.name,
        num_shots=num_shots,
        normalization=normalization,
        accuracy=float(np.mean(hits)),
        grade=float(np.mean(grades)),
        predictions=predictions,
        choice_scores=tuple(per_example),
        demonstrations=tuple(demos),
        correct_option_ppl=ppl[True],
        incorrect_option_ppl=ppl[False],
    )


# --- Tasks from parallel text -----------------------------------------------------------


def translation_task(
    pairs: Sequence[tuple[str, str]],
    *,
    source_name: str = "English",
    target_name: str = "German",
    num_choices: int = 4,
    pool_size: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> MCTask:
    """Choose the right translation of each source among num_choices; distractors are other
    held-out translations of similar length (sampled, seeded, from the pool_size nearest in
    characters, default 3 x the number of distractors). For De->En pass (de, en) pairs.
    """
    if num_choices < 2:
        raise ValueError(f"num_choices must be >= 2, got {num_choices}")
    sources = [s.strip() for s, _ in pairs]
    targets = [t.strip() for _, t in pairs]
    if len(set(targets)) < num_choices:
        raise ValueError(f"{len(set(targets))} distinct translations cannot make {num_choices}-way questions")
    needed = num_choices - 1
    pool_size = pool_size or 3 * needed
    if pool_size < needed:
        raise ValueError(f"pool_size {pool_size} is smaller than the {needed} distractors needed")
    lengths = np.array([len(t) for t in targets])
    order = np.argsort(lengths, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    examples = []
    for i, (source, target) in enumerate(zip(sources, targets)):
        pool: list[int] = []
        seen = {target}
        left, right = rank[i] - 1, rank[i] + 1
        while len(pool) < pool_size and (left >= 0 or right < len(order)):
            take_left = right >= len(order) or (
                left >= 0 and abs(lengths[order[left]] - lengths[i]) <= abs(lengths[order[right]] - lengths[i])
            )
            j = int(order[left] if take_left else order[right])
            left, right = (left - 1, right) if take_left else (left, right + 1)
            if targets[j] not in seen:
                seen.add(targets[j])
                pool.append(j)
        rng = np.random.default_rng([seed, i])
        distractors = [targets[j] for j in rng.choice(pool, size=needed, replace=False)]
        position = int(rng.integers(num_choices))
        choices = distractors[:position] + [target] + distractors[position:]
        scores = tuple(1.0 if k == position else 0.0 for k in range(num_choices))
        examples.append(MCExample(source, tuple(choices), scores))
    prompt = PromptFormat(
        example_input_prefix=f"{source_name}: ",
        example_output_prefix=f"\n{target_name}: ",
        append_choices_to_input=False,
        few_shot_example_separator="\n\n",
    )
    return MCTask(name or f"translate_{source_name}_{target_name}".lower(), tuple(examples), prompt)


# --- BIG-bench JSON tasks ----------------------------------------------------------------

_FORMAT_FIELDS = {f.name for f in dataclasses.fields(PromptFormat)}


def load_bigbench_task(path: str | Path, *, max_examples: int | None = None) -> MCTask:
    """Read a BIG-bench JSON multiple-choice task (a task.json, or its directory).

    Uses "examples" with "input" and "target_scores", and the prompt fields task_prefix,
    example_input_prefix, example_output_prefix, choice_prefix, append_choices_to_input and
    few_shot_example_separator (BIG-bench defaults where absent). Tasks with subtasks: point
    at the subtask's task.json.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "task.json"
    if not file.is_file():
        raise FileNotFoundError(f"no BIG-bench task file at {file}")
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(spec, dict) or not isinstance(spec.get("examples"), list) or not spec["examples"]:
        raise ValueError(f"{file} has no 'examples' list: not a BIG-bench JSON task")
    fields = {key: spec[key] for key in _FORMAT_FIELDS if key in spec}
    for key, value in fields.items():
        expected = bool if key == "append_choices_to_input" else str
        if not isinstance(value, expected):
            raise ValueError(f"{file}: field {key!r} must be {expected.__name__}, got {value!r}")
    examples = []
    for i, raw in enumerate(spec["examples"][:max_examples]):
        scores = raw.get("target_scores") if isinstance(raw, dict) else None
        if not isinstance(scores, dict) or not isinstance(raw.get("input"), str):
            raise ValueError(f"{file}: example {i} lacks 'input' or 'target_scores': not a multiple-choice task")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()):
            raise ValueError(f"{file}: example {i} has non-numeric target_scores {scores!r}")
        examples.append(MCExample(raw["input"], tuple(scores), tuple(float(v) for v in scores.values())))
    return MCTask(str(spec.get("name") or file.parent.name), tuple(examples), PromptFormat(**fields))
