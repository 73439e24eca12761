"""The model-backed multiple-choice scorer picks the planted answer once the tiny smoke model is
trained on it (and not before); held-out translation MC tasks are well formed."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from eval import multiple_choice as mc
from eval import probes, token_scoring

SEQ_LEN = 64
ANSWERS = ["red apple", "blue river", "green house", "yellow sun", "black cat", "white snow"]


def planted_task():
    """Six questions; every question offers four of the six answers, one planted as correct."""
    examples = []
    for i, answer in enumerate(ANSWERS):
        others = [a for a in ANSWERS if a != answer][i % 3: i % 3 + 3]
        position = i % 4
        choices = others[:position] + [answer] + others[position:]
        examples.append(mc.MCExample(f"code word {i} {'xyz'[i % 3]}", tuple(choices),
                                     tuple(1.0 if k == position else 0.0 for k in range(4))))
    return mc.MCTask("planted", tuple(examples), mc.PromptFormat(append_choices_to_input=False))


@pytest.fixture(scope="module")
def tokenizer():
    return token_scoring.load_tokenizer("en-de")


def train_on(task, tokenizer, workdir, steps=60):
    """The smoke model (barely pretrained) trained further on the task's 2-shot contexts followed by
    their correct answers; also returns it before that training."""
    from eval.trajectory_scoring import load_model

    model = load_model(workdir, 16)
    pairs = []
    for index, example in enumerate(task.examples):
        context = mc.build_context(task, index, mc.draw_demonstrations(task, index, 2, 0))
        pairs.append((tokenizer.encode(context), tokenizer.encode(example.choices[example.correct[0]])))
    batch = token_scoring.encode_rows([p for p, _ in pairs], [t for _, t in pairs], seq_len=SEQ_LEN,
                                      mode_id=token_scoring.mode_id(tokenizer))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    optimizer = optax.sgd(0.3)  # plain SGD compiles much faster than Adam here
    # Logits only at the answer positions (the vocabulary projection dominates this model's cost).
    width = int(batch["decoder_loss_weights"].sum(axis=1).max())
    positions = np.stack([np.nonzero(w)[0][np.minimum(np.arange(width), int(w.sum()) - 1)]
                          for w in batch["decoder_loss_weights"]])
    mask = np.arange(width)[None, :] < batch["decoder_loss_weights"].sum(axis=1, keepdims=True)
    targets = np.take_along_axis(batch["decoder_target_tokens"], positions, axis=1)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest)
            hidden = m.hidden_and_cache(batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                                        batch["decoder_positions"], batch["decoder_causal_attention"], True)[0]
            logits = m.logits(jnp.take_along_axis(hidden, positions[..., None], axis=1))
            lp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
            return -(lp * mask).sum() / mask.sum()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = jax.jit(optimizer.init)(params)  # placed like the step's outputs: the step compiles once
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
    return model, params, float(loss)


def test_scorer_picks_planted_answer_after_training(tokenizer, smoke_pretrain_dir):
    task = planted_task()
    model, trained, loss = train_on(task, tokenizer, smoke_pretrain_dir)
    assert loss < 0.5
    scorer = token_scoring.TokenScorer(model, batch_size=8)  # the weights before training on the task first
    score_fn = token_scoring.text_score_fn(scorer, tokenizer, seq_len=SEQ_LEN)
    before = mc.score_multiple_choice(task, score_fn, num_shots=2, batch_size=8)
    scorer.set_params(trained)
    after = mc.score_multiple_choice(task, score_fn, num_shots=2, batch_size=8)
    assert after.accuracy == 1.0 and before.accuracy < 1.0
    assert after.correct_option_ppl < after.incorrect_option_ppl
    # Per-token log-probs of each continuation: one per continuation token, all <= 0.
    context = mc.build_context(task, 0, after.demonstrations[0])  # (a row shape already compiled)
    lp = score_fn([(context, "red apple"), (context, "blue")])
    assert [len(x) for x in lp] == [len(tokenizer.encode("red apple")), len(tokenizer.encode("blue"))]
    assert all(np.all(x <= 0) for x in lp)


def test_translation_tasks_from_held_out_dev_text():
    forward, backward = probes.translation_mc_tasks("en-de", num_questions=12, seed=1)
    assert forward.name == "translate_english_german" and backward.name == "translate_german_english"
    assert len(forward.examples) == len(backward.examples) == 12
    for task in (forward, backward):
        for example in task.examples:
            assert len(example.choices) == 4 and len(set(example.choices)) == 4 and len(example.correct) == 1
    # The two directions pose the same sentence pairs.
    assert forward.examples[0].choices[forward.examples[0].correct[0]] == backward.examples[0].input
    assert probes.task_fingerprint(forward, 2, 0) != probes.task_fingerprint(forward, 0, 0)
    with pytest.raises(ValueError, match="num_questions"):
        probes.translation_mc_tasks("en-de", num_questions=2)
