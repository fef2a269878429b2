"""Tests of tf_sogclr.losses against the NumPy reference in loss_reference.py."""

import numpy as np
import pytest
import tensorflow as tf

import loss_reference as ref
import precision
import tiny
from tf_sogclr import losses

RTOL, ATOL = 1e-5, 1e-6
NUM_EXAMPLES = 24


# Index sequences: new rows, repeated rows, a mix, and a batch with a duplicate.
STEPS = [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], [9, 10, 9, 1, 11, 12]]


def _scale(gradient_scale, tau):
    """What the loss and its gradients are, relative to the reference's (the authors')."""
    return {"libauc": 1.0, "infonce": 1.0 / tau}[gradient_scale]


@pytest.mark.parametrize("mode, gradient_scale", [
    ("eager", "libauc"), ("function", "libauc"), ("jit", "libauc"),
    ("eager", "infonce"), ("jit", "infonce")])
def test_sogclr_matches_reference_over_steps(mode, gradient_scale):
    rng = np.random.default_rng(0)
    num_examples, gamma, tau = 16, 0.9, 0.1
    loss_fn = losses.GlobalContrastiveLoss(num_examples, temperature=tau, gamma=gamma,
                                           gradient_scale=gradient_scale)
    scale = _scale(gradient_scale, tau)
    table = np.full(num_examples, np.nan)
    wrap = {"eager": None, "function": tf.function,
            "jit": lambda f: tf.function(f, jit_compile=True)}[mode]
    for index in STEPS:
        z1, z2 = ref.random_views(rng, len(index))
        loss, metrics, g1, g2 = tiny.loss_and_grads(loss_fn, z1, z2, index, wrap)
        want_loss, want_objective, want_g1, want_g2 = ref.sogclr_step(
            z1, z2, index, table, gamma, tau)
        np.testing.assert_allclose(loss, scale * want_loss, rtol=RTOL, atol=ATOL)
        # The objective estimate is F itself, whatever the loss's scale.
        np.testing.assert_allclose(metrics["objective"], want_objective, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g1, scale * want_g1, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g2, scale * want_g2, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(loss_fn.estimates(), np.nan_to_num(table), rtol=RTOL)
        assert metrics["input_ok"] == 1.0
    assert loss_fn.visited_fraction().numpy() == pytest.approx(13 / 16)


@pytest.mark.parametrize("gradient_scale", ["libauc", "infonce"])
def test_bimodal_matches_reference_over_steps(gradient_scale):
    rng = np.random.default_rng(1)
    num_examples, gamma, tau = 16, 0.8, 0.05
    loss_fn = losses.BimodalGlobalContrastiveLoss(num_examples, temperature=tau, gamma=gamma,
                                                  gradient_scale=gradient_scale)
    scale = _scale(gradient_scale, tau)
    image_table = np.full(num_examples, np.nan)
    text_table = np.full(num_examples, np.nan)
    for index in STEPS:
        image, text = ref.random_views(rng, len(index))
        loss, _, g_image, g_text = tiny.loss_and_grads(loss_fn, image, text, index)
        want_loss, want_image, want_text = ref.bimodal_step(
            image, text, index, image_table, text_table, gamma, tau)
        np.testing.assert_allclose(loss, scale * want_loss, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g_image, scale * want_image, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g_text, scale * want_text, rtol=RTOL, atol=ATOL)
        estimates = loss_fn.estimates()
        np.testing.assert_allclose(estimates["image"], np.nan_to_num(image_table), rtol=RTOL)
        np.testing.assert_allclose(estimates["text"], np.nan_to_num(text_table), rtol=RTOL)


@pytest.mark.parametrize("gradient_scale", ["libauc", "infonce"])
def test_gamma_one_gives_decoupled_contrastive_gradient(gradient_scale):
    """gamma = 1: the gradient of the decoupled contrastive loss tau * (logsumexp(neg / tau)
    - log K) - pos (libauc), or of that over tau, InfoNCE's scale (infonce)."""
    rng = np.random.default_rng(3)
    loss_fn = losses.GlobalContrastiveLoss(8, temperature=0.1, gamma=1.0,
                                           gradient_scale=gradient_scale)
    scale = _scale(gradient_scale, 0.1)
    for index in ([0, 1, 2, 3], [2, 3, 4, 5], [0, 1, 2, 3]):
        z1, z2 = ref.random_views(rng, 4)
        _, _, g1, g2 = tiny.loss_and_grads(loss_fn, z1, z2, index)
        a, b = tf.constant(z1, tf.float32), tf.constant(z2, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            dcl = _decoupled_contrastive_loss_tf(a, b, 0.1)
        want_g1, want_g2 = tape.gradient(dcl, [a, b])
        np.testing.assert_allclose(dcl, ref.decoupled_contrastive_loss(z1, z2, 0.1), rtol=RTOL)
        np.testing.assert_allclose(g1, scale * want_g1, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g2, scale * want_g2, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("tau", [0.03, 0.1, 0.5])
def test_infonce_scale_keeps_the_controls_step(tau):
    """With gradient_scale="infonce" switching to the control (NT-Xent) at one learning rate
    keeps the step's size: early in training (gamma = 1, a large batch of random views, where
    coupled and decoupled softmaxes nearly agree) SogCLR's gradient norm is NT-Xent's to 10%;
    with "libauc" it is tau times that."""
    rng = np.random.default_rng(7)
    z1, z2 = ref.random_views(rng, 64, dim=16)
    a, b = tf.constant(z1, tf.float32), tf.constant(z2, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        control = losses.NTXentLoss(tau)(a, b)
    control_norm = tf.linalg.global_norm(tape.gradient(control, [a, b])).numpy()
    for gradient_scale, want in (("infonce", 1.0), ("libauc", tau)):
        loss_fn = losses.GlobalContrastiveLoss(64, temperature=tau, gamma=1.0,
                                               gradient_scale=gradient_scale)
        _, _, g1, g2 = tiny.loss_and_grads(loss_fn, z1, z2, np.arange(64))
        ratio = tf.linalg.global_norm([g1, g2]).numpy() / control_norm
        assert ratio == pytest.approx(want, rel=0.1), gradient_scale


def _decoupled_contrastive_loss_tf(z1, z2, tau):
    a, b = tf.math.l2_normalize(z1, 1), tf.math.l2_normalize(z2, 1)
    batch = a.shape[0]
    V = tf.concat([a, b], 0)
    S = tf.matmul(V, V, transpose_b=True)
    rows = np.arange(2 * batch)
    mask = np.ones((2 * batch, 2 * batch), bool)
    mask[rows, rows] = False
    mask[rows, (rows + batch) % (2 * batch)] = False
    negatives = tf.reshape(tf.boolean_mask(S, mask), (2 * batch, 2 * batch - 2))
    positives = tf.gather_nd(S, np.stack([rows, (rows + batch) % (2 * batch)], 1))
    per_anchor = tau * (tf.reduce_logsumexp(negatives / tau, 1) - np.log(2 * batch - 2))
    return tf.reduce_sum(per_anchor - positives) / batch


@pytest.mark.parametrize("layout", ["near_identical", "opposite"])
def test_clip_temperature_stays_finite(layout):
    rng = np.random.default_rng(4)
    base = rng.normal(size=(1, 8))
    if layout == "near_identical":
        z1 = base + 1e-4 * rng.normal(size=(6, 8))
        z2 = base + 1e-4 * rng.normal(size=(6, 8))
    else:
        z1 = np.concatenate([base, -base] * 3)
        z2 = -z1
    for loss_fn in (losses.GlobalContrastiveLoss(6, temperature=0.01),
                    losses.BimodalGlobalContrastiveLoss(6, temperature=0.01)):
        for _ in range(3):
            loss, metrics, g1, g2 = tiny.loss_and_grads(loss_fn, z1, z2, list(range(6)))
            assert np.isfinite(loss) and np.isfinite(metrics["objective"])
            assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
            assert metrics["input_ok"] == 1.0
        for weight in loss_fn.non_trainable_weights:
            assert np.all(np.isfinite(weight.numpy())), weight.path


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
    rng = np.random.default_rng(5)
    z1, z2 = ref.random_views(rng, 6)
    low1, low2 = tf.cast(z1, dtype), tf.cast(z2, dtype)
    as_f32 = losses.GlobalContrastiveLoss(8)(tf.cast(low1, tf.float32), tf.cast(low2, tf.float32),
                                            tf.range(6))
    low_loss_fn = losses.GlobalContrastiveLoss(8)
    loss = low_loss_fn(low1, low2, tf.range(6))
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(loss, as_f32, rtol=RTOL)
    assert low_loss_fn.u_table.log_u.dtype == "float32"
    # Against float32 inputs: only the inputs' rounding to `dtype` (3 of its epsilons).
    precision.assert_close_in(dtype, loss, losses.GlobalContrastiveLoss(8)(z1, z2, tf.range(6)),
                              ulps=3)


def test_cosine_gamma_schedule_and_set_epoch_reach_traced_step():
    loss_fn = losses.GlobalContrastiveLoss(
        8, gamma=0.2, gamma_schedule="cosine", gamma_decay_epochs=4)
    assert [round(loss_fn.gamma_for_epoch(e), 6) for e in (0, 2, 4, 9)] == [1.0, 0.6, 0.2, 0.2]
    assert loss_fn.current_gamma.numpy() == pytest.approx(1.0)
    rng = np.random.default_rng(8)
    step = tf.function(lambda z1, z2, i: loss_fn(z1, z2, i))
    table = np.full(8, np.nan)
    for epoch in range(3):
        loss_fn.set_epoch(epoch)
        z1, z2 = ref.random_views(rng, 4)
        step(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32), tf.range(4))
        ref.sogclr_step(z1, z2, list(range(4)), table, loss_fn.gamma_for_epoch(epoch), 0.1)
        np.testing.assert_allclose(loss_fn.estimates(), np.nan_to_num(table), rtol=RTOL)
    assert step.experimental_get_tracing_count() == 1
    assert losses.gamma_for_epoch(3, 0.9) == 0.9


@pytest.mark.parametrize("kwargs, argument", [
    (dict(num_examples=0), "num_examples"),
    (dict(num_examples=2.5), "num_examples"),
    (dict(num_examples=10, temperature=0.0), "temperature"),
    (dict(num_examples=10, gamma=0.0), "gamma"),
    (dict(num_examples=10, gamma=1.5), "gamma"),
    (dict(num_examples=10, gamma_schedule="linear"), "gamma_schedule"),
    (dict(num_examples=10, gamma_schedule="cosine"), "gamma_decay_epochs"),
    (dict(num_examples=10, gamma_decay_epochs=5), "gamma_decay_epochs"),
    (dict(num_examples=10, gradient_scale="tau"), "gradient_scale"),
])
@pytest.mark.parametrize("cls", [losses.GlobalContrastiveLoss, losses.BimodalGlobalContrastiveLoss])
def test_bad_hyperparameters_raise(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


def test_bad_shapes_raise_at_trace_time():
    loss_fn = losses.GlobalContrastiveLoss(10)
    z = tf.zeros([4, 3])
    with pytest.raises(ValueError, match=r"z1 must have shape \[batch, dim\]"):
        loss_fn(tf.zeros([4]), z, tf.range(4))
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(z, tf.zeros([3, 3]), tf.range(4))
    with pytest.raises(ValueError, match="index has 3 rows"):
        loss_fn(z, z, tf.range(3))
    with pytest.raises(ValueError, match=r"index must have shape \[batch\]"):
        loss_fn(z, z, tf.zeros([4, 1], tf.int32))
    with pytest.raises(ValueError, match="integer"):
        loss_fn(z, z, tf.zeros([4]))
    with pytest.raises(ValueError, match=r"temperature"):
        losses.nt_xent_loss(z, z, temperature=-1.0)


def test_sogclr_temperature_gradient_is_the_objective_derivative_on_a_first_visit():
    """With a fresh table u = g, so the estimate is exactly dF/dtau of the global objective."""
    rng = np.random.default_rng(1)
    image, text = (tf.math.l2_normalize(rng.normal(size=(6, 4)).astype(np.float32), -1)
                   for _ in range(2))
    loss_layer = losses.BimodalGlobalContrastiveLoss(NUM_EXAMPLES, temperature=0.5)
    _, metrics = loss_layer(image, text, tf.range(6), return_metrics=True,
                            temperature=tf.constant(0.07))
    tau = tf.Variable(0.07)
    with tf.GradientTape() as tape:
        sims = tf.matmul(image, text, transpose_b=True)
        off = ~tf.eye(6, dtype=tf.bool)

        def log_g(s):
            return tf.reduce_logsumexp(tf.where(off, s / tau, -np.inf), 1) - tf.math.log(5.0)

        objective = tf.reduce_mean(tau * (log_g(sims) + log_g(tf.transpose(sims)))
                                   - 2.0 * tf.linalg.diag_part(sims))
    np.testing.assert_allclose(metrics["temperature_gradient"], tape.gradient(objective, tau),
                               rtol=1e-4)
    np.testing.assert_allclose(metrics["objective"], objective, rtol=1e-5)
