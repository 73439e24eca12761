"""`python -m study.trajectories` end to end on a study-shaped directory holding the smoke workdir,
and the trajectory_section contract the study report calls."""
from pathlib import Path

import numpy as np
import pytest

from study.trajectories import __main__ as trajectories
from study.trajectories.section import trajectory_section

FIXTURE = Path(__file__).parents[1] / "eval" / "fixtures" / "bigbench_task.json"
# Shapes shared with test_traj_scoring, so the jitted programs are reused within one session.
LIMITS = ["--num_sequences=12", "--prefix_tokens=8", "--target_tokens=24", "--corrupt_sequences=12",
          "--contrastive_prompts=4", "--contrastive_tokens=3", "--mc_questions=4", "--batch_size=16",
          "--bigbench_max_examples=5", "--max_checkpoints=4", "--regressor=log_step", "--stagnation_band=0.9,1.1",
          "--no_progress"]


def test_cli_end_to_end_on_a_study_dir(smoke_pretrain_dir, tmp_path, capsys):
    study = tmp_path / "study"
    (study / "pretrain").mkdir(parents=True)
    (study / "pretrain" / "tiny_aligned").symlink_to(smoke_pretrain_dir)
    out = tmp_path / "report"
    argv = [f"--workdir={study}", f"--out={out}", f"--bigbench={FIXTURE}", "--no_opt_check", *LIMITS]
    assert trajectories.main(argv) == 0
    assert "1 size(s): tiny" in capsys.readouterr().out
    report = (out / "trajectories.md").read_text()
    for heading in ("# Training trajectories", "### Per-token trends", "### Hallucinated vs real text",
                    "### Validation perplexity vs 2-shot multiple-choice accuracy"):
        assert heading in report
    assert "OLS of ppl_i / ppl_j on log_step from 30% to 100%" in report and "(0.9, 1.1)" in report
    assert "| tiny |" in report and "package_purpose (5 q.)" in report and "translate_german_english (4 q.)" in report
    assert "OPT" not in report
    for name in ("trends_vs_ppl.png", "corrupted_ppl.png", "contrastive_ppl.png", "accuracy.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in report
    with np.load(out / "trends.npz") as data:
        labels = data["labels|tiny"]
        assert labels.shape == (12 * 24,) and set(np.unique(labels)) <= {0, 1, 2, 3}
    with np.load(out / "scores_tiny.npz") as data:
        assert len([k for k in data.files if k.startswith("lp|validation|")]) == 4  # one per checkpoint scored
        assert len([k for k in data.files if k.startswith("mc|package_purpose|")]) == 4


def test_trajectory_section_contract(smoke_pretrain_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown trajectory limits"):
        trajectory_section({"tiny": smoke_pretrain_dir}, tmp_path, num_sequence=3)
    with pytest.raises(ValueError, match="num_sequences must be a positive integer"):
        trajectory_section({"tiny": smoke_pretrain_dir}, tmp_path, num_sequences=0)
    with pytest.raises(ValueError, match="regressor"):
        trajectory_section({"tiny": smoke_pretrain_dir}, tmp_path, regressor="step")
    with pytest.raises(ValueError, match="pretrain_dirs is empty"):
        trajectory_section({}, tmp_path)
    with pytest.raises(SystemExit):  # argparse error naming the directory without workdirs
        trajectories.main([f"--workdir={tmp_path}"])


def test_sizes_must_be_corpus_models_of_one_vocabulary(smoke_pretrain_dir, tmp_path, monkeypatch):
    from study.trajectories import section as trajectory_report

    record = {"pair": "en-de", "corpus": "aligned", "source": "synthetic", "vocab_size": 8192}
    monkeypatch.setattr(trajectory_report, "_data_record", lambda workdir: dict(record))
    with pytest.raises(ValueError, match="'synthetic' data"):
        trajectory_section({"tiny": smoke_pretrain_dir}, tmp_path)
    record.update(source="corpus", vocab_size=512)
    with pytest.raises(ValueError, match="vocab_size 512"):
        trajectory_section({"tiny": smoke_pretrain_dir}, tmp_path)


def test_returned_links_are_relative_to_the_embedding_report(tmp_path):
    from study.trajectories.section import rebase_links

    text = "![a](trends_vs_ppl.png) and ![b](sub/x.png) and [c](notes.md)"
    assert rebase_links(text, tmp_path / "report" / "trajectories", tmp_path / "report") == (
        "![a](trajectories/trends_vs_ppl.png) and ![b](sub/x.png) and [c](notes.md)")
