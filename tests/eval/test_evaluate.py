"""evaluate_task / zero-shot / eval.run on the shared smoke checkpoint and on seeded random models:
every contract key, greedy KV-cache decoding equal to a full-forward argmax reference, errors."""
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from data import tasks as data_tasks
from eval import evaluate
from eval import run as eval_run
from checkpoints.exports import export_checkpoint
from checkpoints.load import load_checkpoint_model

sys.path.insert(0, str(Path(__file__).parent))
from random_models import random_model  # noqa: E402

SEQ_LEN, BATCH, NEW_TOKENS = 64, 4, 8
OPTS = dict(batch_size=BATCH, seq_len=SEQ_LEN, max_new_tokens=NEW_TOKENS)
CLI_OPTS = ["--batch_size=4", "--seq_len=64", "--max_new_tokens=8", "--max_examples=2"]
CONTRACT_KEYS = {"ppl", "log_ppl", "mean_log_likelihood", "target_tokens", "bleu", "chrf", "rouge_l",
                 "signatures", "examples"}


@pytest.fixture(scope="module")
def smoke_model(smoke_pretrain_dir):
    return load_checkpoint_model(smoke_pretrain_dir, step=16)[0]


def _check_likelihood(result):
    assert all(math.isfinite(result[k]) for k in ("ppl", "log_ppl", "mean_log_likelihood"))
    assert result["log_ppl"] == pytest.approx(-result["mean_log_likelihood"])
    assert result["ppl"] == pytest.approx(math.exp(result["log_ppl"]))
    assert result["target_tokens"] > 0


def test_evaluate_task_mt_on_smoke_checkpoint_has_every_key(smoke_model):
    result = evaluate.evaluate_task(smoke_model, "mt_en_de", max_examples=4, **OPTS)
    assert CONTRACT_KEYS <= set(result)
    _check_likelihood(result)
    assert result["examples"] == 4 and result["rouge_l"] is None
    assert 0 <= result["bleu"] <= 100 and 0 <= result["chrf"] <= 100
    assert set(result["signatures"]) == {"bleu", "chrf"} and "tok:13a" in result["signatures"]["bleu"]
    # Target tokens only: the 4 references' tokens + EOS each (inputs are not counted).
    vocab = data_tasks.FINETUNE_VOCAB["mt_en_de"]
    refs = [e["targets"] for e in data_tasks.raw_examples("mt_en_de", "test")[:4]]
    assert result["target_tokens"] == sum(min(len(vocab.encode(r)) + 1, SEQ_LEN // 2) for r in refs)
    no_decode = evaluate.evaluate_task(smoke_model, "mt_en_de", max_examples=4, decode=False, **OPTS)
    assert no_decode["bleu"] is None and no_decode["signatures"] == {}
    assert no_decode["log_ppl"] == pytest.approx(result["log_ppl"])


def test_evaluate_task_summarization_reports_rouge_l(smoke_model):
    result = evaluate.evaluate_task(smoke_model, "summarize_en_de", max_examples=2, **OPTS)
    _check_likelihood(result)
    assert result["bleu"] is None and result["chrf"] is None and 0 <= result["rouge_l"] <= 100
    assert set(result["signatures"]) == {"rouge_l"} and result["examples"] == 2


def _reference_greedy(model, prompts, max_new_tokens):
    """Greedy decoding without a cache: a full forward over the whole sequence for every new token."""
    width = 1 + max(len(p) for p in prompts) + max_new_tokens
    forward = nnx.jit(lambda m, t, s, c: m(t, segment_ids=s, causal_attention=c))
    rows = [[0] + [int(t) for t in p] for p in prompts]
    prefix = [len(r) for r in rows]
    done = [False] * len(rows)
    for _ in range(max_new_tokens):
        tokens = np.zeros((len(rows), width), np.int32)
        segments = np.zeros_like(tokens)
        causal = np.zeros_like(tokens)
        for i, row in enumerate(rows):
            tokens[i, :len(row)], segments[i, :len(row)], causal[i, :prefix[i]] = row, 1, 1
        logits = np.asarray(forward(model, tokens, segments, causal))
        for i, row in enumerate(rows):
            if not done[i]:
                row.append(int(np.argmax(logits[i, len(row) - 1])))
                done[i] = row[-1] == evaluate.EOS_ID
    return [row[prefix[i]:] if not done[i] else row[prefix[i]:-1] for i, row in enumerate(rows)]


def _randomized(model: nnx.Module, seed: int) -> nnx.Module:
    """The same model (structure, shardings: compiled programs are reused) with seeded random weights,
    so greedy decoding emits real tokens instead of stopping at once as the barely trained model does."""
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    scale = lambda x: 1.0 if x.shape[0] == model.config.vocab_size else 0.3  # noqa: E731
    return nnx.merge(graphdef, jax.tree.map(
        lambda x: jax.device_put((scale(x) * rng.standard_normal(x.shape)).astype(x.dtype), x.sharding), state))


def test_greedy_decoding_equals_full_forward_argmax_reference(smoke_model):
    model = _randomized(smoke_model, seed=1)
    view = evaluate.eval_view("mt_en_de", max_examples=3)
    prompts, raw = evaluate.task_prompts(view, "test", seq_len=SEQ_LEN)
    assert len(prompts) == 3 and all(p[-1] == evaluate.EOS_ID for p in prompts)
    expected = _reference_greedy(model, prompts, NEW_TOKENS)
    assert any(len(e) > 2 for e in expected)  # a random model does not stop at once: real tokens compared
    got = evaluate.greedy_decode(model, prompts, batch_size=BATCH, max_new_tokens=NEW_TOKENS,
                                 prompt_width=SEQ_LEN // 2)
    assert got == expected
    result = evaluate.evaluate_task(model, "mt_en_de", max_examples=3, keep_outputs=True, **OPTS)
    vocab = data_tasks.FINETUNE_VOCAB["mt_en_de"]
    assert result["hypotheses"] == [vocab.decode(ids) for ids in expected]
    assert result["references"] == [e["reference"] for e in raw]


def test_greedy_decoding_of_a_lora_and_soft_prompt_model_equals_the_reference():
    model = random_model(lora_rank=2, prompt_length=5, seed=3)
    prompts, _ = evaluate.task_prompts(evaluate.eval_view("mt_en_de", max_examples=3), "test", seq_len=SEQ_LEN)
    expected = _reference_greedy(model, prompts, NEW_TOKENS)
    assert any(len(e) > 2 for e in expected)
    assert evaluate.greedy_decode(model, prompts, batch_size=BATCH, max_new_tokens=NEW_TOKENS,
                                  prompt_width=SEQ_LEN // 2) == expected


def test_zero_shot_targets_for_each_task():
    assert evaluate.zero_shot_targets("mt_en_de") == {
        "mt_de_en": ("mt_de_en", "test", None), "everyday": ("mt_en_de", "test", "everyday")}
    assert evaluate.zero_shot_targets("mt_de_en") == {
        "mt_en_de": ("mt_en_de", "test", None), "everyday": ("mt_de_en", "test", "everyday")}
    assert evaluate.zero_shot_targets("mt_en_zh") == {"mt_zh_en": ("mt_zh_en", "test", None)}
    assert evaluate.zero_shot_targets("mt_zh_en") == {"mt_en_zh": ("mt_en_zh", "test", None)}
    assert evaluate.zero_shot_targets("summarize_en_de") == {} == evaluate.zero_shot_targets("summarize_en_zh")
    # Finetuned on everyday text only: software is out of domain.
    everyday = evaluate.eval_view("mt_en_de", stratum="everyday")
    assert evaluate.zero_shot_targets(everyday) == {
        "mt_de_en": ("mt_de_en", "test", None), "software": ("mt_en_de", "test", "software")}
    assert {e["stratum"] for e in data_tasks.raw_examples(everyday, "test")} == {"everyday"}


def test_evaluate_zero_shot_flat_metrics(smoke_model):
    flat = evaluate.evaluate_zero_shot(smoke_model, "mt_en_de", max_examples=2, **OPTS)
    for name in ("mt_de_en", "everyday"):
        for metric in ("ppl", "log_ppl", "mean_log_likelihood", "bleu", "chrf"):
            assert math.isfinite(flat[f"{name}.{metric}"])
        assert flat[f"{name}.examples"] == 2.0
    assert all(isinstance(v, float) for v in flat.values())


def test_eval_run_cli_prints_json(smoke_pretrain_dir, smoke_model, capsys, tmp_path):
    out = tmp_path / "metrics.json"
    code = eval_run.main([f"--checkpoint={smoke_pretrain_dir}", "--task=mt_en_de", "--zero_shot",
                          f"--output={out}", *CLI_OPTS])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads(printed)
    assert report == json.loads(out.read_text())
    assert report["step"] == 16 and report["tokens_seen"] == 8192  # default: the last checkpoint
    assert CONTRACT_KEYS <= set(report["metrics"]) and "everyday.bleu" in report["zero_shot"]
    direct = evaluate.evaluate_task(smoke_model, "mt_en_de", max_examples=2, decode=False, **OPTS)
    assert report["metrics"]["log_ppl"] == pytest.approx(direct["log_ppl"], rel=1e-6)


def test_eval_run_cli_data_parallel_gives_the_same_report(smoke_pretrain_dir, capsys):
    """--data_parallel: the model replicated on 8 simulated devices, 3 examples split over them
    (padded rows dropped): the same PPL, the same decoded tokens (hence BLEU/chrF) as one device."""
    args = [f"--checkpoint={smoke_pretrain_dir}", "--task=mt_en_de", "--batch_size=3", "--seq_len=64",
            "--max_new_tokens=8", "--max_examples=3", "--learned_metrics="]
    assert eval_run.main(args) == 0
    single = json.loads(capsys.readouterr().out)
    assert eval_run.main(args + ["--data_parallel"]) == 0
    parallel = json.loads(capsys.readouterr().out)
    assert single["devices"] == 1 and parallel["devices"] == len(jax.local_devices()) > 1
    assert parallel["metrics"]["log_ppl"] == pytest.approx(single["metrics"]["log_ppl"], rel=1e-6)
    for key in ("bleu", "chrf", "examples", "target_tokens"):
        assert parallel["metrics"][key] == single["metrics"][key], key


def test_eval_run_cli_on_an_export_and_at_a_step(smoke_pretrain_dir, capsys, tmp_path):
    export = export_checkpoint(smoke_pretrain_dir, tmp_path / "export", step=8)
    assert eval_run.main([f"--checkpoint={export}", "--task=mt_en_de", "--no_decode", *CLI_OPTS]) == 0
    from_export = json.loads(capsys.readouterr().out)
    assert from_export["kind"] == "export" and from_export["metrics"]["bleu"] is None
    assert eval_run.main([f"--checkpoint={smoke_pretrain_dir}", "--tokens=4096", "--task=mt_en_de",
                          "--no_decode", *CLI_OPTS]) == 0
    from_workdir = json.loads(capsys.readouterr().out)
    assert from_workdir["step"] == 8
    assert from_workdir["metrics"]["log_ppl"] == pytest.approx(from_export["metrics"]["log_ppl"], rel=1e-6)
    assert eval_run.main([f"--checkpoint={export}", "--step=8", "--task=mt_en_de"]) == 2
    assert "drop --step" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--task=mt_xx_yy"], "unknown task 'mt_xx_yy'"),
    (["--task=mt_en_zh"], "pretrained with the 'en-de' vocabulary"),
    (["--task=mt_en_de", "--step=5"], "no checkpoint with step 5"),
    (["--task=mt_en_de", "--adapter=/nonexistent/adapter"], "--adapter /nonexistent/adapter is not a directory"),
])
def test_eval_run_cli_bad_input(smoke_pretrain_dir, capsys, args, message):
    assert eval_run.main([f"--checkpoint={smoke_pretrain_dir}", *args]) == 2
    assert message in capsys.readouterr().err


def test_eval_run_cli_missing_checkpoint(tmp_path, capsys):
    assert eval_run.main([f"--checkpoint={tmp_path / 'missing'}", "--task=mt_en_de"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert eval_run.main([f"--checkpoint={tmp_path}", "--task=mt_en_de"]) == 2
    assert "neither a training workdir" in capsys.readouterr().err


def test_evaluate_task_bad_input(smoke_model):
    with pytest.raises(ValueError, match="vocab_size=100"):
        evaluate.evaluate_task(random_model(vocab_size=100), "mt_en_de", max_examples=1, **OPTS)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        evaluate.evaluate_task(smoke_model, "nope")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        evaluate.evaluate_task(smoke_model, "mt_en_de", split="dev")
    with pytest.raises(ValueError, match="unknown stratum 'legal'"):
        evaluate.evaluate_task(smoke_model, "mt_en_de", stratum="legal")
    with pytest.raises(ValueError, match="max_examples=0"):
        evaluate.evaluate_task(smoke_model, "mt_en_de", max_examples=0)


def test_eval_run_cli_loads_an_adapter_onto_the_checkpoint(smoke_pretrain_dir, capsys, tmp_path, monkeypatch):
    calls = []

    def load_adapter(base_model, adapter_dir):
        calls.append((base_model.config.name, str(adapter_dir)))
        return base_model

    monkeypatch.setattr(eval_run, "load_adapter", load_adapter)
    assert eval_run.main([f"--checkpoint={smoke_pretrain_dir}", "--task=mt_en_de", f"--adapter={tmp_path}",
                          "--no_decode", *CLI_OPTS]) == 0
    assert calls == [("tiny", str(tmp_path))]
    assert json.loads(capsys.readouterr().out)["adapter"] == str(tmp_path)
