"""Tests for the learnable global temperature: log space, clamp, own learning rate, and the
iSogCLR and FastCLIP-v3 objectives against autodiff of the objectives as their papers write
them."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tiny
from tf_sogclr import losses
from tf_sogclr.config import TEMPERATURE_RANGE


def test_the_weight_is_log_tau_and_the_optimiser_clamps_it_to_the_range():
    layer = losses.LearnableTemperature(0.07, (0.02, 0.5))
    assert layer.log_temperature.numpy() == pytest.approx(math.log(0.07))
    assert float(layer.value()) == pytest.approx(0.07, rel=1e-6)
    np.testing.assert_allclose(layer(tf.constant([0.7, -0.35])), [10.0, -5.0], rtol=1e-5)
    optimizer = keras.optimizers.SGD(100.0)
    for gradient, bound in ((1.0, 0.02), (-1.0, 0.5)):  # a step far past each end
        optimizer.apply_gradients([(tf.constant(gradient), layer.log_temperature)])
        assert float(layer.value()) == pytest.approx(bound, rel=1e-6)
    assert TEMPERATURE_RANGE == (0.01, 1.0)  # CLIP's and FastCLIP's clamp


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"initial_temperature must be a number in "
                                         r"\(0.01, 1.0\), got 1.0"):
        losses.LearnableTemperature(1.0)
    with pytest.raises(ValueError, match="objective must be one of isogclr, fastclip_v3"):
        losses.LearnableTemperature(0.1, objective="v3")
    with pytest.raises(ValueError, match=r"rho must be a number in \[0.0, inf\)"):
        losses.LearnableTemperature(0.1, rho=-1.0)
    with pytest.raises(ValueError, match="temperature_range must be"):
        losses.LearnableTemperature(0.1, (0.5, 0.2))


def _objective_by_autodiff(objective, image, text, log_u_image, log_u_text, tau, rho):
    """The objective as iSogCLR and FastCLIP write it, with the u-tables' new rows `u` in
    place of g where its gradient needs them: per anchor and direction,
    `stop(tau) g(tau) / u + tau (log u + rho)`, g(tau) = mean over the other B - 1 pairs of
    exp(s / tau); iSogCLR sums the two directions, FastCLIP-v3 averages them."""
    batch = image.shape[0]
    off_diagonal = 1.0 - np.eye(batch)
    terms = []
    for sims, log_u in ((image @ text.T, log_u_image), (text @ image.T, log_u_text)):
        g = tf.reduce_sum(tf.exp(tf.constant(sims, tf.float32) / tau) * off_diagonal,
                          axis=1) / (batch - 1)
        terms.append(tf.stop_gradient(tau) * g / tf.exp(log_u) + tau * (log_u + rho))
    total = terms[0] + terms[1]
    return tf.reduce_mean(total if objective == "isogclr" else total / 2.0)


@pytest.mark.parametrize("objective", ["isogclr", "fastclip_v3"])
def test_the_objective_term_has_the_objectives_gradient(objective):
    rng = np.random.default_rng(0)
    batch, tau_value, rho = 8, 0.05, 0.5
    image, text = (rng.normal(size=(batch, 6)).astype(np.float32) for _ in range(2))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    index = tf.range(batch)
    loss = losses.BimodalGlobalContrastiveLoss(32, temperature=tau_value, gamma=0.6)
    for _ in range(2):  # the second call's u mixes the first's into its moving average
        _, stats = loss(tf.constant(image), tf.constant(text), index, return_metrics=True)
    log_u_image = loss.image_u_table.read(index)  # this call's new rows
    log_u_text = loss.text_u_table.read(index)

    temperature = losses.LearnableTemperature(tau_value, objective=objective, rho=rho)
    with tf.GradientTape() as tape:
        term = temperature.objective_term(temperature.value(), stats["temperature_gradient"])
    got = tape.gradient(term, temperature.log_temperature)

    log_tau = tf.Variable(math.log(tau_value))
    with tf.GradientTape() as tape:
        want_loss = _objective_by_autodiff(objective, image, text, log_u_image, log_u_text,
                                           tf.exp(log_tau), rho)
    want = tape.gradient(want_loss, log_tau)
    assert abs(float(want)) > 0.02  # tau * (d / dtau), far from where tau settles
    np.testing.assert_allclose(float(got), float(want), rtol=1e-4)


def test_fastclip_v3_steps_tau_as_isogclr_under_adam_but_half_as_far_under_sgd():
    """Its gradient is half iSogCLR's: the same Adam step (scale-free), half an SGD step."""
    batch = tiny.pair_batch()

    def tau_after_one_step(objective, optimizer):
        model = tiny.dual_encoder("sogclr", learnable=True, optimizer=optimizer,
                                  learning_rate=0.01, temperature_objective=objective)
        before = float(model.learned_temperature.log_temperature.numpy())
        model.train_step(batch)
        return float(model.learned_temperature.log_temperature.numpy()) - before

    isogclr, fastclip = (tau_after_one_step(o, "adam") for o in ("isogclr", "fastclip_v3"))
    assert abs(isogclr) > 1e-3 and fastclip == pytest.approx(isogclr, rel=1e-4)
    isogclr, fastclip = (tau_after_one_step(o, "momentum") for o in ("isogclr", "fastclip_v3"))
    assert abs(isogclr) > 1e-5 and fastclip == pytest.approx(isogclr / 2, rel=1e-3)


def test_the_temperature_takes_its_own_learning_rate():
    """Adam's first step moves each weight by about its learning rate: log tau by a tenth of
    the model's with multiplier 0.1, the other weights as without it."""
    batch = tiny.pair_batch()
    moved = {}
    for factor in (1.0, 0.1):
        model = tiny.dual_encoder(
            "simclr", learnable=True, optimizer="adam", learning_rate=0.01,
            learning_rate_multipliers={tiny.model_lib.TEMPERATURE_PATTERN: factor})
        before = [v.numpy() for v in model.trainable_variables]
        model.train_step(batch)
        # In creation order; automatic layer names differ between the two models.
        moved[factor] = [(v.path, np.abs(v.numpy() - b).max())
                         for v, b in zip(model.trainable_variables, before)]
    for (path, full), (_, tenth) in zip(moved[1.0], moved[0.1]):
        if path == "temperature/log_temperature":
            assert full == pytest.approx(0.01, rel=1e-3) and tenth == pytest.approx(0.001, rel=1e-3)
        else:
            assert tenth == pytest.approx(full, rel=1e-5, abs=1e-9), path
    assert any(path == "temperature/log_temperature" for path, _ in moved[1.0])
