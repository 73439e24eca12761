"""The study report: DIR/report/report.md with its PNG figures, results.csv and fits.json.

Sections reproduce the papers' views on this study's own runs: Df scaling per size and
method (Zhang Fig. 1), multiplicative vs additive held-out error (Table 2), joint-law
parameters with bootstrap intervals (Table 4), model size vs pretraining data at each Df,
the critical Df of FMT vs PET, alignment (Isik, alignment studies only), training
trajectories (Xia, several sizes), then plain statements of agreement. A section that
fails is replaced by its error, so one bad fit never costs the whole report.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd

from checkpoints.atomic import write_text_atomic
from study.pretraining import pretrain_dir
from study.report import findings, plots
from study.report import fits as fits_lib
from study.results import ResultsStore
from study.spec import StudySpec
from study.trajectories.section import trajectory_section

log = logging.getLogger(__name__)
REPORT_DIRNAME = "report"
SECTION_TITLES = (
    "Study", "Finetuning protocol", "Finetuning-data scaling per model size and method", "Multiplicative vs additive joint law",
    "Joint-law parameters", "Model size vs pretraining data", "Critical finetuning-data size",
    "Pretraining-data alignment", "Trajectories", "Agreement with the papers", "Notes",
)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A pipe table; floats to `digits` significant digits, NaN/None as '-'."""
    if frame is None or frame.empty:
        return "(no rows)"

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _image(path: Path | None, out: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(out)})" if path is not None else "(no figure: not enough points)"


class _Report:
    """Collects sections; a failing section is written as its error instead of aborting."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str]] = []
        self.errors: list[str] = []

    def add(self, title: str, build: Callable[[], str]) -> None:
        try:
            body = build()
        except Exception as error:  # noqa: BLE001  (report the failure in place, keep going)
            log.exception("report section %r failed", title)
            body = f"**This section failed:** `{type(error).__name__}: {error}`\n\n```\n{traceback.format_exc()[-3000:]}\n```"
            self.errors.append(title)
        self.sections.append((title, body))

    def markdown(self, name: str) -> str:
        parts = [f"# Finetuning scaling study: {name}"]
        parts += [f"## {title}\n\n{body}" for title, body in self.sections]
        return "\n\n".join(parts) + "\n"


@dataclasses.dataclass
class _Context:
    """What every section reads (spec, the prepared rows, the output directory) and the fits
    earlier sections leave for later ones."""
    spec: StudySpec
    study_dir: Path
    frame: pd.DataFrame
    out: Path
    df_fits: list = dataclasses.field(default_factory=list)
    joint: fits_lib.JointResults = dataclasses.field(default_factory=lambda: fits_lib.JointResults(None))
    scale: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    critical: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    alignment: list | None = None
    signal: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    lengths: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def _protocol_section(ctx: _Context) -> str:
    spec = ctx.spec
    ctx.lengths = fits_lib.run_length_table(ctx.frame)
    ctx.signal = fits_lib.df_signal(ctx.frame, spec)
    if spec.max_steps is not None:
        rule = (f"each run trains until dev PPL has not improved for {spec.patience} evaluations in a row, after at "
                f"least {spec.min_steps or 0} steps" + (f" and {spec.min_epochs} epochs" if spec.min_epochs else "")
                + f", at most {spec.max_steps} steps (a budget that does not shrink with Df), and keeps the "
                  "best-by-dev-PPL checkpoint")
    else:
        rule = (f"fixed length: {spec.epochs} epoch(s)" if spec.epochs is not None else f"fixed length: {spec.num_steps} steps")
    return (f"Finetuning length rule: {rule}. Steps run, epochs seen and why runs stopped, per method and Df:\n\n"
            f"{markdown_table(ctx.lengths)}\n\nFMT: test log-PPL at the smallest and the largest Df (seed means) and "
            f"the seed-to-seed spread at those points (the Df axis is measured when the drop is at least 3x the "
            f"spread):\n\n{markdown_table(ctx.signal)}")


def _df_section(ctx: _Context) -> str:
    spec, out = ctx.spec, ctx.out
    ctx.df_fits = fits_lib.df_scaling_fits(ctx.frame, spec)
    figure = plots.plot_df_scaling(ctx.df_fits, spec, out / "df_scaling.png")
    held = ("open markers (the largest Df) are held out and scored by mean absolute deviation in the metric's units, "
            "next to the naive prediction 'the value at the largest fitted Df' (naive_MAD) and the metric's move over the "
            "fitted Df (fit_range)" if spec.holdout == "max" else "no point is held out (StudySpec.holdout = 'none')")
    return (f"{spec.fit_metric} against the number of finetuning examples Df, at the final checkpoint "
            f"({spec.token_budget:,} tokens) and the reference PET size, seeds averaged (bars: seed range), with "
            f"the single-variable law `{spec.df_law}` fitted per size and method; {held} (Zhang et al. Fig. 1)."
            f"\n\n{_image(figure, out, 'Df scaling')}\n\n{markdown_table(fits_lib.df_fit_table(ctx.df_fits))}")


def _joint_section(ctx: _Context) -> str:
    ctx.joint = joint = fits_lib.joint_fits(ctx.frame, ctx.spec)
    table = fits_lib.comparison_table(joint)
    if table.empty:
        return "Not fitted: " + "; ".join(joint.notes)
    return ("The multiplicative law L = A / (X^alpha Df^beta) + E and the additive law L = A / X^alpha + B / Df^beta + E, "
            "fitted per method by the same procedure (Zhang et al. Eq. 2: Huber delta 1e-3 on the "
            f"{ctx.spec.residual} residual, L-BFGS from a grid; per factor X its own A, alpha; the Df terms and E "
            "shared across factors and estimated without the PET-size factor; the largest X and the largest Df of "
            "each factor held out and left out of every stage of the fit that scores them). Held-out MAD in "
            f"{ctx.spec.fit_metric} units, next to the naive nearest-fitted-point MAD and the metric's range over the "
            "fit points; parameters: of the whole joint law (Zhang et al. Table 2, like for like).\n\n"
            + markdown_table(table))


def _params_section(ctx: _Context) -> str:
    spec, joint = ctx.spec, ctx.joint
    table = fits_lib.joint_parameter_table(joint)
    if table.empty:
        return "Not fitted: " + "; ".join(joint.notes)
    figure = plots.plot_joint(joint, spec, ctx.out / "joint_fits.png")
    boot = (f"{spec.bootstrap_resamples} bootstrap resamples of whole runs (a run shared by two factors is one unit), "
            "each refitted from the full-data optimum and grid starts; 95% percentile intervals in brackets, shown "
            "only where most resamples converged" if spec.bootstrap_resamples else "bootstrap off (bootstrap_resamples = 0)")
    return (f"Fitted multiplicative joint law per method and factor ({boot}; Zhang et al. Table 4).\n\n"
            f"{markdown_table(table)}\n\n{_image(figure, ctx.out, 'joint fits')}")


def _scale_section(ctx: _Context) -> str:
    spec = ctx.spec
    ctx.scale = table = fits_lib.scale_vs_data(ctx.frame, spec)
    figure = plots.plot_scale_vs_data(ctx.frame, spec, ctx.out / "scale_vs_data.png")
    return ("Which helps finetuning more at each Df: the exponent a of y = A / X^a along model size (every size, "
            "final checkpoint) and along pretraining tokens (intermediate checkpoints of "
            f"{', '.join(spec.dp_sweep_sizes) or 'no size'}), and the change of {spec.fit_metric} per 10x of each."
            f"\n\n{markdown_table(table)}\n\n{_image(figure, ctx.out, 'model size vs pretraining data')}")


def _critical_section(ctx: _Context) -> str:
    ctx.critical = table = fits_lib.critical_points(ctx.joint, ctx.frame, ctx.spec)
    if table.empty:
        return "Not computed: FMT and LoRA / prompt tuning were not both fitted."
    return ("Df where the fitted FMT curve crosses LoRA's / prompt tuning's, per factor value, searched from the "
            f"smallest Df up to 100x the largest ({100 * max(ctx.spec.finetune_examples):,}; beyond the studied range "
            "is extrapolation), with bootstrap intervals over paired resamples.\n\n" + markdown_table(table))


def _alignment_section(ctx: _Context) -> str:
    spec = ctx.spec
    if not spec.alignment:
        return "Not part of this study (one pretraining corpus); see the `alignment` preset."
    ctx.alignment = fits = fits_lib.alignment_fits(ctx.frame, spec)
    figure = plots.plot_alignment(fits, ctx.out / "alignment.png")
    rows = []
    for f in fits:
        row = {"size": f.size, "corpus": f.corpus, "Dp points": len(f.points)}
        for key, fit in (("CE", f.ce_fit), ("BLEU", f.bleu_fit)):
            if fit is not None:
                row.update({f"{key} {k}": v for k, v in fit.params.items()})
                row.update({f"{key} fit MAD": fit.fit_mad, f"{key} held-out MAD": fit.heldout_mad,
                            f"{key} naive MAD": fit.heldout_naive_mad})
        if f.scratch is not None:
            row.update({"scratch CE": f.scratch["ce"], "scratch BLEU": f.scratch["bleu"]})
        row.update(monotonicity=f.monotonicity, notes="; ".join(f.notes))
        rows.append(row)
    return (f"Downstream cross-entropy (test log-PPL) and BLEU against pretraining tokens for aligned vs "
            f"misaligned pretraining ({spec.methods[0]}, Df = {max(spec.finetune_examples)}, seeds "
            f"{list(spec.sweep_seeds if spec.sweep_seeds is not None else spec.seeds)}), with the CE power law "
            f"E + A / Dp^alpha and the BLEU log-law (log(A Dp^alpha))^beta fitted on the runs of the first "
            f"{spec.isik_fit_points} Dp values and scored (MAD) on the seed means of the rest, as Isik et al. "
            "extrapolate; the misalignment signature is judged against the seed-to-seed spread; 'scratch' is the same "
            "size finetuned from its initialisation (Isik et al.'s baseline; dashed line).\n\n"
            f"{_image(figure, ctx.out, 'alignment')}\n\n{markdown_table(pd.DataFrame(rows))}")


def _findings_section(ctx: _Context) -> str:
    return "\n".join(f"- {s}" for s in findings.findings(
        ctx.spec, ctx.frame, ctx.df_fits, ctx.joint, ctx.scale, ctx.critical, ctx.alignment, ctx.signal, ctx.lengths))


def _notes_section(ctx: _Context, failures: list[dict], failed_sections: list[str]) -> str:
    lines = [f"- {n}" for n in ctx.joint.notes]
    lines += [f"- FAILED run {f['run_key'][:12]} ({f['attempts']} attempt(s)): "
              f"{(f['error'] or '').strip().splitlines()[-1:] or ['?']}" for f in failures]
    lines += [f"- section {t!r} failed (see above)" for t in failed_sections]
    return "\n".join(lines) or "None."


def write_report(spec: StudySpec, study_dir: str | Path, store: ResultsStore) -> Path:
    """Fit everything on the done rows and write report.md, figures, results.csv and fits.json."""
    study_dir = Path(study_dir)
    out = study_dir / REPORT_DIRNAME
    raw = store.to_dataframe()
    counts = store.counts()
    if raw.empty and _reported_rows(out / "results.csv"):
        raise ValueError(f"{store.path} has no finished runs, but {out} holds a report of "
                         f"{_reported_rows(out / 'results.csv')} runs; it was left as it is (check the results store)")
    out.mkdir(parents=True, exist_ok=True)
    csv_path = store.to_csv(out / "results.csv")
    report = _Report()
    if raw.empty:
        report.add("Study", lambda: f"No finished runs yet ({counts}).")
        return write_text_atomic(out / "report.md", report.markdown(spec.name))
    ctx = _Context(spec=spec, study_dir=study_dir, frame=fits_lib.prepare(raw, spec), out=out)
    report.add("Study", lambda: _overview(spec, ctx.frame, counts, csv_path, out))
    sections = (_protocol_section, _df_section, _joint_section, _params_section, _scale_section, _critical_section,
                _alignment_section)
    for title, build in zip(SECTION_TITLES[1:8], sections):
        report.add(title, lambda build=build: build(ctx))
    report.add(SECTION_TITLES[8], lambda: _trajectories(spec, study_dir, out))
    report.add(SECTION_TITLES[9], lambda: _findings_section(ctx))
    report.add(SECTION_TITLES[10], lambda: _notes_section(ctx, store.failures(), report.errors))
    if ctx.joint.fits is not None:
        write_text_atomic(out / "fits.json", json.dumps(ctx.joint.fits.to_dict(), indent=1, default=str))
    return write_text_atomic(out / "report.md", report.markdown(spec.name))


def _reported_rows(csv_path: Path) -> int:
    """Runs in an earlier report's results.csv (0 when there is none): never replaced by an empty report."""
    try:
        return len(pd.read_csv(csv_path))
    except (OSError, ValueError):  # absent, or an empty / unreadable file: nothing worth keeping
        return 0


def _overview(spec: StudySpec, frame: pd.DataFrame, counts: dict, csv_path: Path, out: Path) -> str:
    sizes = frame.groupby("size", sort=False).agg(params=("model_params", "first"), total=("total_params", "first"))
    size_text = ", ".join(f"{s} ({int(r.params):,} non-embedding / {int(r.total):,} total)" for s, r in sizes.iterrows())
    lines = [
        f"- runs: {counts['done']} done of {counts['total']} ({counts['failed']} failed, "
        f"{counts['pending'] + counts['running'] + counts['stale']} not finished)",
        f"- model sizes: {size_text}",
        f"- pretraining: {', '.join(spec.pretrain_corpora)} corpus, {spec.token_budget:,} tokens, checkpoints at "
        f"{', '.join(f'{t:,}' for t in spec.checkpoint_tokens)} tokens",
        f"- task: {spec.task}; methods: {', '.join(spec.methods)} (LoRA ranks {list(spec.lora_ranks)}, prompt lengths "
        f"{list(spec.prompt_lengths)}; the first is the reference)",
        f"- Df grid: {list(spec.finetune_examples)}; seeds {list(spec.seeds)} (Dp/PET axes: "
        f"{list(spec.sweep_seeds if spec.sweep_seeds is not None else spec.seeds)})",
        f"- fitted metric: {spec.fit_metric} (Huber loss, delta 1e-3, on the {spec.residual} residual "
        f"({'prediction - observation, Zhang et al. Eq. 2' if spec.residual == 'raw' else 'log prediction - log observation, Hoffmann et al. / Epoch'}), "
        "L-BFGS from a grid; laws/)",
        "- zero-shot columns (zero_shot.*): the reverse translation direction and the out-of-domain test stratum. "
        "Zhang et al. measure translation into the finetuned target language from other source languages "
        "(Flores-200); the bundled corpora have one language pair per vocabulary, so that construct is not measured "
        "here (the TFDS Flores tasks are registered for users with the data)",
        f"- results: [{csv_path.name}]({csv_path.relative_to(out)}) (one row per finished run)",
    ]
    means = frame.groupby(["size", "method"], sort=False)[[m for m in spec.metrics if m in frame]].mean().reset_index()
    return "\n".join(lines) + "\n\nMean of each metric over all runs per size and method:\n\n" + markdown_table(means)


def _trajectories(spec: StudySpec, study_dir: Path, out: Path) -> str:
    if not spec.trajectories:
        return "Off for this study (StudySpec.trajectories = False)."
    if len(spec.sizes) < 2:
        return "Needs several model sizes; this study has one."
    dirs = {size: pretrain_dir(study_dir, size, spec.pretrain_corpora[0]) for size in spec.sizes}
    try:
        text = trajectory_section(dirs, out / "trajectories", **spec.trajectory_limits)
    except Exception as error:  # noqa: BLE001  (optional section: say why it is missing, keep the report)
        log.warning("trajectory section failed: %s", error)
        return f"**Trajectory analysis failed:** `{type(error).__name__}: {error}`"
    if not isinstance(text, str) or not text.strip():
        return f"**Trajectory analysis returned no text** (got {type(text).__name__})."
    return text
