"""Schedule endpoints, Adafactor's configuration, and the weighted loss."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model.loss import weighted_cross_entropy
from train.optimizer import learning_rate_schedule, make_optimizer


def test_cosine_schedule_runs_from_peak_to_final():
    schedule = learning_rate_schedule(100)
    values = np.array([float(schedule(s)) for s in range(101)])
    assert values[0] == pytest.approx(0.01)
    assert values[100] == pytest.approx(0.001)
    assert values[50] == pytest.approx(0.001 + 0.009 * 0.5, rel=1e-5)  # cosine midpoint
    assert np.all(np.diff(values) <= 1e-9)


def test_warmup_is_linear_then_cosine():
    schedule = learning_rate_schedule(100, warmup_steps=10)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.005)
    assert float(schedule(10)) == pytest.approx(0.01)
    assert float(schedule(100)) == pytest.approx(0.001)


@pytest.mark.parametrize("kwargs", [dict(total_steps=0), dict(total_steps=10, warmup_steps=10),
                                    dict(total_steps=10, peak_learning_rate=0.0)])
def test_bad_schedule_raises(kwargs):
    with pytest.raises(ValueError):
        learning_rate_schedule(**kwargs)


def test_adafactor_factors_large_matrices_and_keeps_no_momentum():
    params = {"w": jnp.ones((256, 384)), "b": jnp.ones((384,))}
    opt_state = make_optimizer(learning_rate_schedule(10)).init(params)
    shapes = sorted(tuple(x.shape) for x in jax.tree.leaves(opt_state))
    # factored row/column second moments for w; a full v only for the vector b
    assert (256,) in shapes and (384,) in shapes
    assert (256, 384) not in shapes  # no momentum buffer, no unfactored v for the matrix


def test_update_clipping_bounds_the_first_update():
    # With parameter-scale multiplication, the step is lr * RMS(param) * clipped direction.
    params = {"w": jnp.full((128, 128), 2.0)}
    optimizer = make_optimizer(learning_rate_schedule(10))
    state = optimizer.init(params)
    grads = {"w": jax.random.normal(jax.random.key(0), (128, 128)) * 1e3}
    updates, _ = optimizer.update(grads, state, params)
    rms = float(jnp.sqrt(jnp.mean(updates["w"] ** 2)))
    assert rms <= 0.01 * 2.0 * 1.0 + 1e-6  # lr x param RMS x clipping threshold


def test_loss_ignores_unweighted_tokens_and_adds_z_loss():
    logits = jax.random.normal(jax.random.key(1), (2, 5, 11))
    targets = jnp.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    weights = jnp.array([[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]], jnp.float32)
    loss, parts = weighted_cross_entropy(logits, targets, weights)
    token_ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    expected = float((token_ce * weights).sum() / weights.sum())
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    changed = targets.at[0, 0].set(9).at[1, 4].set(0)  # only unweighted positions change
    assert float(weighted_cross_entropy(logits, changed, weights)[0]) == pytest.approx(expected, rel=1e-6)
    with_z, _ = weighted_cross_entropy(logits, targets, weights, z_loss=1e-2)
    log_z = jax.nn.logsumexp(logits, -1)
    z_term = float((log_z**2 * weights).sum() / weights.sum())
    assert float(with_z) == pytest.approx(expected + 1e-2 * z_term, rel=1e-6)
    assert float(parts["log_z_squared"]) == pytest.approx(z_term, rel=1e-6)


@pytest.mark.parametrize("scale", [True, False])
def test_schedule_in_the_state_updates_exactly_as_the_schedule_in_the_program(scale):
    """Finetuning's optimizer (peak, final rate and length as state, one program for every run)
    takes the steps of Adafactor with the same cosine schedule compiled in (to float32 rounding of
    the rate: the schedule is computed from float32 state), and reports the rate it applied."""
    from train.optimizer import learning_rate_in_state, schedule_in_state_optimizer, with_schedule
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.zeros((3,))}
    grads = {"w": jnp.arange(12.0).reshape(4, 3) / 10, "b": jnp.ones((3,))}
    in_state = schedule_in_state_optimizer(multiply_by_parameter_scale=scale)
    state = with_schedule(in_state.init(params), peak_learning_rate=1e-2, final_learning_rate=1e-3, decay_steps=10)
    schedule = learning_rate_schedule(10, peak_learning_rate=1e-2, final_learning_rate=1e-3)
    compiled_in = make_optimizer(schedule, multiply_by_parameter_scale=scale)
    reference = compiled_in.init(params)
    a = b = params
    update = in_state.update
    for step in range(12):  # past the end: the rate stays at the final one
        assert float(learning_rate_in_state(state, step)) == pytest.approx(float(schedule(step)), rel=1e-6)
        updates, state = update(grads, state, a)
        a = optax.apply_updates(a, updates)
        updates, reference = compiled_in.update(grads, reference, b)
        b = optax.apply_updates(b, updates)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-10)
    with pytest.raises(ValueError, match="decay_steps >= 1, got peak=0.01 final=0.001 decay_steps=0"):
        with_schedule(state, peak_learning_rate=1e-2, final_learning_rate=1e-3, decay_steps=0)
