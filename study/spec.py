"""What a finetuning-scaling study is: sizes, pretraining, task, methods, Df grid, seeds, laws.

`StudySpec` is gin-configurable (gin_configs/studies/*.gin bind `StudySpec.<field>`),
validates itself with errors naming the bad value, and enumerates its grid of finetuning
runs deterministically. The grid follows Zhang et al. (2024): every size at the final
checkpoint (the model-size axis), some sizes at every finetuned intermediate checkpoint
(the pretraining-data axis) and some sizes at every PET size (the PET axis), each for
every Df and seed; a point shared by several axes is one run. With `scratch_baseline`, each
Dp-sweep size is also finetuned from its random initialisation (Isik et al.'s baseline; its
GridPoint has checkpoint_tokens 0).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import gin

from data.tasks import CORPORA
from laws import LAWS
from model.sizes import SIZE_NAMES
from model.variables import METHODS
from train.gin_setup import parse_gin

# Result columns the report can tabulate or fit (numeric columns of finetune.results).
METRIC_COLUMNS = ("test_log_ppl", "test_ppl", "dev_ppl", "bleu", "chrf", "rouge_l")
PRETRAIN_DIRNAME = "pretrain"


@dataclasses.dataclass(frozen=True, order=True)
class GridPoint:
    """One finetuning run of the study (pet_size 0 for FMT; seed is also the Df-subset seed)."""

    size: str
    corpus: str
    checkpoint_tokens: int          # 0: finetuned from scratch (the model's initialisation)
    method: str
    pet_size: int
    finetune_examples: int
    seed: int

    @property
    def pretrain_name(self) -> str:
        """Name of the pretraining run this point finetunes: '<size>_<corpus>'."""
        return f"{self.size}_{self.corpus}"

    def label(self) -> str:
        """Short human-readable description for progress lines."""
        pet = {"fmt": "", "lora": f" r={self.pet_size}", "prompt": f" len={self.pet_size}"}[self.method]
        dp = f"Dp={self.checkpoint_tokens:,}" if self.checkpoint_tokens else "from scratch"
        return (f"{self.size}/{self.corpus} {dp} {self.method}{pet} "
                f"Df={self.finetune_examples} seed={self.seed}")


def _tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"StudySpec.{name} must be a list, got {value!r}")
    return tuple(value)


def _check_ints(values: Sequence[Any], name: str, minimum: int = 1, distinct: bool = True) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"StudySpec.{name} entries must be integers >= {minimum}; got {v!r} in {list(values)}")
    if distinct and len(set(values)) != len(values):
        raise ValueError(f"StudySpec.{name} has duplicates: {list(values)}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A whole study; see the module docstring for how the grid is built from these fields."""

    name: str = "study"
    sizes: Sequence[str] = ("tiny",)
    pretrain_corpora: Sequence[str] = ("aligned",)      # both = the Isik alignment experiment
    pair: str = "en-de"
    # Pretraining: one gin file per (size, corpus) ('{size}', '{corpus}' are filled in), plus
    # bindings; the runner itself binds model name, corpus, token budget and checkpoints.
    pretrain_gin: str = "gin_configs/pretrain/{size}_{corpus}.gin"
    pretrain_params: Sequence[str] = ()
    pretrain_batch_size: int = 8
    pretrain_seq_len: int = 64
    token_budget: int = 65536
    checkpoint_tokens: Sequence[int] = (65536,)         # intermediate checkpoints (incl. the final)
    finetune_checkpoint_tokens: Sequence[int] | None = None   # Dp values finetuned (None = all)
    dp_sweep_sizes: Sequence[str] = ()                  # sizes finetuned at every Dp value
    # Finetuning
    task: str = "mt_en_de"
    methods: Sequence[str] = METHODS
    lora_ranks: Sequence[int] = (4,)                    # first = reference rank
    prompt_lengths: Sequence[int] = (10,)               # first = reference length
    pet_sweep_sizes: Sequence[str] = ()                 # sizes finetuned at every PET size
    finetune_examples: Sequence[int] = (16, 32, 64, 128, 256)   # the Df grid
    seeds: Sequence[int] = (0, 1)
    sweep_seeds: Sequence[int] | None = None            # seeds of the Dp / PET axes (None = seeds)
    batch_size: int = 8
    seq_len: int = 64
    epochs: int | None = None
    num_steps: int | None = 20
    # Train until dev PPL stops improving (finetune.stopping.StoppingRule): max_steps with patience
    # (evaluations), at least min_steps and min_epochs; epochs and num_steps None.
    max_steps: int | None = None
    min_steps: int | None = None
    min_epochs: int | None = None
    patience: int | None = None
    scratch_baseline: bool = False                      # Isik: finetune the Dp-sweep sizes from scratch too
    finetune_overrides: dict = dataclasses.field(default_factory=dict)  # other FinetuneConfig fields
    # Report
    fit_metric: str = "test_log_ppl"                    # y of every law fit
    metrics: Sequence[str] = ("test_log_ppl", "bleu", "chrf")
    laws: Sequence[str] = ("multiplicative", "additive")
    df_law: str = "power"                               # single-variable law per size and method
    holdout: str = "max"                                # held-out points of every fit (laws.heldout_mask)
    residual: str = "raw"                               # Zhang Eq. 2: prediction - observation; 'log': Hoffmann/Epoch
    isik_fit_points: int = 4                            # Isik laws fitted on the first k Dp values, scored on the rest
    bootstrap_resamples: int = 100
    trajectories: bool = True                           # Trajectories section when several sizes
    trajectory_limits: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("sizes", "pretrain_corpora", "pretrain_params", "checkpoint_tokens", "dp_sweep_sizes", "methods",
                     "lora_ranks", "prompt_lengths", "pet_sweep_sizes", "finetune_examples", "seeds", "metrics", "laws"):
            object.__setattr__(self, name, _tuple(getattr(self, name), name))
        for name in ("finetune_checkpoint_tokens", "sweep_seeds"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _tuple(getattr(self, name), name))
        for name in ("finetune_overrides", "trajectory_limits"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ValueError(f"StudySpec.{name} must be a dict, got {value!r}")
            object.__setattr__(self, name, dict(value))
        self.validate()

    # --- validation -----------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError naming the first bad field, its value and what would be valid."""
        self._validate_names()
        self._validate_pretraining()
        self._validate_finetuning()
        self._validate_report()

    def _validate_names(self) -> None:
        """The study name, sizes and corpora."""
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"StudySpec.name={self.name!r} must be non-empty letters, digits, '-', '_' or '.'")
        if not self.sizes:
            raise ValueError("StudySpec.sizes is empty; give at least one model size")
        for field in ("sizes", "dp_sweep_sizes", "pet_sweep_sizes"):
            values = getattr(self, field)
            bad = [s for s in values if s not in SIZE_NAMES]
            if bad:
                raise ValueError(f"StudySpec.{field} has unknown size(s) {bad}; valid: {list(SIZE_NAMES)}")
            if len(set(values)) != len(values):
                raise ValueError(f"StudySpec.{field} has duplicates: {list(values)}")
            if field != "sizes" and not set(values) <= set(self.sizes):
                raise ValueError(f"StudySpec.{field}={list(values)} must be a subset of sizes={list(self.sizes)}")
        bad = [c for c in self.pretrain_corpora if c not in CORPORA]
        if not self.pretrain_corpora or bad or len(set(self.pretrain_corpora)) != len(self.pretrain_corpora):
            raise ValueError(f"StudySpec.pretrain_corpora={list(self.pretrain_corpora)} must be distinct values of {CORPORA}")

    def _validate_pretraining(self) -> None:
        """Pretraining gin file and bindings, batch, token budget and checkpoints."""
        try:
            self.pretrain_gin.format(size="s", corpus="c")
        except (KeyError, IndexError, ValueError, AttributeError):
            raise ValueError(f"StudySpec.pretrain_gin={self.pretrain_gin!r} must be a gin file path; it may contain "
                             f"'{{size}}' and '{{corpus}}' and no other braces") from None
        for p in self.pretrain_params:
            if not isinstance(p, str) or "=" not in p:
                raise ValueError(f"StudySpec.pretrain_params entries must be gin bindings 'a.b = value'; got {p!r}")
        _check_ints([self.pretrain_batch_size, self.pretrain_seq_len], "pretrain_batch_size/pretrain_seq_len", distinct=False)
        _check_ints([self.token_budget], "token_budget")
        _check_ints(self.checkpoint_tokens, "checkpoint_tokens")
        step_tokens = self.pretrain_batch_size * self.pretrain_seq_len
        bad = [t for t in self.checkpoint_tokens if t % step_tokens]
        if bad:
            raise ValueError(f"StudySpec.checkpoint_tokens {bad} are not multiples of one pretraining step "
                             f"(pretrain_batch_size x pretrain_seq_len = {step_tokens} tokens), so no checkpoint "
                             f"would have exactly that many tokens")
        if not self.checkpoint_tokens or max(self.checkpoint_tokens) != self.token_budget:
            raise ValueError(f"StudySpec.checkpoint_tokens={list(self.checkpoint_tokens)} must include the final "
                             f"checkpoint token_budget={self.token_budget} and nothing beyond it")
        if list(self.checkpoint_tokens) != sorted(self.checkpoint_tokens):
            raise ValueError(f"StudySpec.checkpoint_tokens={list(self.checkpoint_tokens)} must be increasing")
        if self.finetune_checkpoint_tokens is not None:
            _check_ints(self.finetune_checkpoint_tokens, "finetune_checkpoint_tokens")
            bad = [t for t in self.finetune_checkpoint_tokens if t not in self.checkpoint_tokens]
            if bad:
                raise ValueError(f"StudySpec.finetune_checkpoint_tokens {bad} are not in checkpoint_tokens="
                                 f"{list(self.checkpoint_tokens)}")

    def _validate_finetuning(self) -> None:
        """Task, methods with their PET sizes, the Df grid, seeds and the finetuning run length."""
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"StudySpec.task={self.task!r} must be a task name such as 'mt_en_de'")
        bad = [m for m in self.methods if m not in METHODS]
        if not self.methods or bad or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"StudySpec.methods={list(self.methods)} must be distinct values of {METHODS}")
        for field in ("lora_ranks", "prompt_lengths"):
            _check_ints(getattr(self, field), field)
            if not getattr(self, field):
                raise ValueError(f"StudySpec.{field} is empty; give at least the reference value")
        _check_ints(self.finetune_examples, "finetune_examples")
        if len(self.finetune_examples) < 2:
            raise ValueError(f"StudySpec.finetune_examples={list(self.finetune_examples)} needs >= 2 Df values to scale over")
        _check_ints(self.seeds, "seeds", minimum=0)
        if not self.seeds:
            raise ValueError("StudySpec.seeds is empty; give at least one seed")
        if self.sweep_seeds is not None:
            _check_ints(self.sweep_seeds, "sweep_seeds", minimum=0)
            if not self.sweep_seeds or not set(self.sweep_seeds) <= set(self.seeds):
                raise ValueError(f"StudySpec.sweep_seeds={list(self.sweep_seeds)} must be a non-empty subset of seeds={list(self.seeds)}")
        _check_ints([self.batch_size, self.seq_len], "batch_size/seq_len", distinct=False)
        self._validate_run_length()
        if not isinstance(self.scratch_baseline, bool):
            raise ValueError(f"StudySpec.scratch_baseline={self.scratch_baseline!r} must be True or False")
        if self.scratch_baseline and not self.dp_sweep_sizes:
            raise ValueError("StudySpec.scratch_baseline finetunes the Dp-sweep sizes from scratch; dp_sweep_sizes is empty")
        reserved = {"pretrain_workdir", "checkpoint_tokens", "checkpoint_step", "task", "method", "lora_rank",
                    "prompt_length", "finetune_examples", "subset_seed", "seed", "batch_size", "seq_len", "epochs",
                    "num_steps", "max_steps", "min_steps", "min_epochs", "patience", "from_scratch"}
        clash = sorted(reserved & set(self.finetune_overrides))
        if clash:
            raise ValueError(f"StudySpec.finetune_overrides sets {clash}, which the study grid sets itself; "
                             f"use the StudySpec fields instead")

    def _validate_run_length(self) -> None:
        """Exactly one of epochs / num_steps / max_steps; the train-until-converged fields go together."""
        lengths = {"epochs": self.epochs, "num_steps": self.num_steps, "max_steps": self.max_steps}
        if sum(v is not None for v in lengths.values()) != 1:
            raise ValueError(f"set exactly one of StudySpec.epochs / num_steps / max_steps; got {lengths}")
        _check_ints([v for v in lengths.values() if v is not None], "epochs/num_steps/max_steps")
        optional = {"min_steps": self.min_steps, "min_epochs": self.min_epochs, "patience": self.patience}
        for name, value in optional.items():
            if value is not None:
                _check_ints([value], name, minimum=0 if name != "patience" else 1)
        if self.max_steps is not None and self.patience is None:
            raise ValueError(f"StudySpec.max_steps={self.max_steps} trains until dev PPL stops improving; set "
                             "StudySpec.patience (evaluations without a new best) too")
        if self.max_steps is None and (self.min_steps is not None or self.min_epochs is not None):
            raise ValueError("StudySpec.min_steps / min_epochs belong to the train-until-converged rule; set max_steps")
        if self.max_steps is not None and (self.min_steps or 0) > self.max_steps:
            raise ValueError(f"StudySpec.min_steps={self.min_steps} exceeds max_steps={self.max_steps}")

    def _validate_report(self) -> None:
        """Reported metrics, the fitted metric and laws, held-out points, bootstrap."""
        bad = [m for m in self.metrics if m not in METRIC_COLUMNS and not m.startswith("zero_shot.")]
        if bad or not self.metrics:
            raise ValueError(f"StudySpec.metrics has {bad or 'nothing'}; valid: {list(METRIC_COLUMNS)} or 'zero_shot.<name>'")
        if self.fit_metric not in ("test_log_ppl", "test_ppl", "dev_ppl"):
            raise ValueError(f"StudySpec.fit_metric={self.fit_metric!r}; the laws fit a loss: test_log_ppl, test_ppl or dev_ppl")
        bad = [law for law in self.laws if law not in ("multiplicative", "additive")]
        if not self.laws or bad:
            raise ValueError(f"StudySpec.laws={list(self.laws)}; the joint laws compared are 'multiplicative' and 'additive'")
        if self.df_law not in LAWS or LAWS[self.df_law].n_inputs != 1:
            raise ValueError(f"StudySpec.df_law={self.df_law!r} must be a one-input law of {sorted(k for k, v in LAWS.items() if v.n_inputs == 1)}")
        if self.holdout not in ("max", "none"):
            raise ValueError(f"StudySpec.holdout={self.holdout!r}; valid: 'max' (largest value of each factor, as Zhang et al.) or 'none'")
        if self.residual not in ("raw", "log"):
            raise ValueError(f"StudySpec.residual={self.residual!r}; valid: 'raw' (Zhang et al. Eq. 2) or 'log' "
                             "(Hoffmann et al. / Epoch)")
        _check_ints([self.isik_fit_points], "isik_fit_points", minimum=2)
        if isinstance(self.bootstrap_resamples, bool) or not isinstance(self.bootstrap_resamples, int) or \
                (self.bootstrap_resamples != 0 and self.bootstrap_resamples < 2):
            raise ValueError(f"StudySpec.bootstrap_resamples={self.bootstrap_resamples!r} must be 0 (off) or an integer >= 2")

    # --- derived values ------------------------------------------------------------------

    @property
    def alignment(self) -> bool:
        """Whether this is an alignment study (both corpora pretrained)."""
        return len(self.pretrain_corpora) > 1

    @property
    def dp_values(self) -> tuple[int, ...]:
        """Checkpoint token counts finetuned on the pretraining-data axis."""
        return tuple(self.finetune_checkpoint_tokens or self.checkpoint_tokens)

    def pet_sizes(self, method: str, sweep: bool) -> tuple[int, ...]:
        """PET sizes of a method: all of them on the PET axis, else the reference one (0 for FMT)."""
        values = {"fmt": (0,), "lora": self.lora_ranks, "prompt": self.prompt_lengths}[method]
        return tuple(values) if sweep else tuple(values[:1])

    def pretrain_runs(self) -> list[tuple[str, str]]:
        """(size, corpus) of every pretraining run, smallest size first."""
        return [(size, corpus) for size in self.sizes for corpus in self.pretrain_corpora]

    def grid(self) -> list[GridPoint]:
        """Every finetuning run, in a fixed order (size, corpus, Dp, method, PET, Df, seed); no duplicates."""
        final = self.token_budget
        sweep_seeds = tuple(self.sweep_seeds if self.sweep_seeds is not None else self.seeds)
        points: set[GridPoint] = set()
        for size in self.sizes:
            for corpus in self.pretrain_corpora:
                cells = [(final, False, tuple(self.seeds))]
                if size in self.dp_sweep_sizes:
                    cells += [(dp, False, sweep_seeds) for dp in self.dp_values if dp != final]
                if size in self.pet_sweep_sizes:
                    cells.append((final, True, sweep_seeds))
                if self.scratch_baseline and size in self.dp_sweep_sizes and corpus == self.pretrain_corpora[0]:
                    cells.append((0, False, sweep_seeds))  # Dp = 0: from scratch (any corpus's checkpoint gives the config)
                for dp, pet_sweep, seeds in cells:
                    for method in (self.methods if dp else ("fmt",)):
                        for pet in self.pet_sizes(method, pet_sweep):
                            for df in self.finetune_examples:
                                for seed in seeds:
                                    points.add(GridPoint(size, corpus, dp, method, pet, df, seed))
        rank = {s: i for i, s in enumerate(self.sizes)}
        crank = {c: i for i, c in enumerate(self.pretrain_corpora)}
        mrank = {m: i for i, m in enumerate(METHODS)}
        return sorted(points, key=lambda p: (rank[p.size], crank[p.corpus], p.checkpoint_tokens, mrank[p.method],
                                             p.pet_size, p.finetune_examples, p.seed))

    def finetune_kwargs(self, point: GridPoint, pretrain_workdir: str | Path) -> dict[str, Any]:
        """The FinetuneConfig fields of one grid point (its run key is built from these)."""
        kwargs: dict[str, Any] = dict(self.finetune_overrides)
        kwargs.update(pretrain_workdir=str(pretrain_workdir), checkpoint_tokens=point.checkpoint_tokens or self.token_budget,
                      task=self.task, method=point.method, finetune_examples=point.finetune_examples,
                      subset_seed=point.seed, seed=point.seed, batch_size=self.batch_size, seq_len=self.seq_len)
        kwargs.update(epochs=self.epochs, num_steps=self.num_steps, max_steps=self.max_steps, min_steps=self.min_steps,
                      min_epochs=self.min_epochs, from_scratch=point.checkpoint_tokens == 0)
        if self.patience is not None:
            kwargs["patience"] = self.patience
        if point.method == "lora":
            kwargs["lora_rank"] = point.pet_size
        elif point.method == "prompt":
            kwargs["prompt_length"] = point.pet_size
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (lists for tuples), for study.json and spec comparison."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StudySpec":
        """Rebuild from to_dict(); unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown StudySpec field(s) {unknown}; valid: {sorted(names)}")
        return cls(**values)


def partition(points: Sequence[GridPoint], worker: int, num_workers: int) -> list[GridPoint]:
    """This worker's share of the grid: every num_workers-th point from index `worker`."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if isinstance(worker, bool) or not isinstance(worker, int) or not 0 <= worker < num_workers:
        raise ValueError(f"worker must be an integer in [0, {num_workers}), got {worker!r}")
    return list(points[worker::num_workers])


def load_spec(gin_files: Sequence[str], gin_params: Sequence[str] = ()) -> StudySpec:
    """Parse study gin files (paths relative to cwd or the repo root) into a StudySpec; clears gin after."""
    gin.clear_config()
    try:
        parse_gin(gin_files, gin_params)
        return StudySpec()
    finally:
        gin.clear_config()
