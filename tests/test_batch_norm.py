"""`models.batch_norm.BatchNormalization`: the fused training pass computes what Keras's does.

Keras's own `keras.layers.BatchNormalization` is the reference: outputs, gradients (inputs,
gamma, beta) and moving statistics after a training pass; which kernel runs is read off the
traced graph.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr.models import batch_norm

SHAPES = {"images": (6, 5, 5, 4), "features": (12, 4)}


def _pair(shape, center=True):
    """Our layer and Keras's, same settings and weights (gamma not all ones)."""
    ours = batch_norm.batch_norm_layer("ours", batch_norm_decay=0.9, center=center)
    keras_layer = keras.layers.BatchNormalization(
        axis=-1, momentum=0.9, epsilon=batch_norm.BATCH_NORM_EPSILON, center=center)
    for layer in (ours, keras_layer):
        layer.build(shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, shape[-1]))
        if center:
            layer.beta.assign(np.linspace(-0.2, 0.2, shape[-1]))
    return ours, keras_layer


def _train_pass(layer, x):
    """Outputs, gradients of a non-linear loss (inputs, gamma[, beta]), moving statistics."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(tf.cast(y, tf.float32)))
    gradients = tape.gradient(loss, [x] + layer.trainable_variables)
    return y, gradients, [layer.moving_mean.numpy(), layer.moving_variance.numpy()]


def _graph_ops(layer, x, training):
    fn = tf.function(lambda t: layer(t, training=training))
    return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_fused_training_pass_equals_keras(shape, center):
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, shape), tf.float32)
    ours, reference = _pair(shape, center)
    y, gradients, statistics = _train_pass(ours, x)
    want_y, want_gradients, want_statistics = _train_pass(reference, x)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    assert len(gradients) == len(want_gradients) == 2 + int(center)
    for got, want in zip(gradients, want_gradients):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Biased variance, as Keras: the kernel's unbiased one would be 6*25/149 larger here.
    for got, want in zip(statistics, want_statistics):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "FusedBatchNormV3" in _graph_ops(ours, x, training=True)


def test_one_value_per_channel_has_zero_batch_variance():
    # The kernel's unbiased variance divides by count - 1 = 0; the layer's must stay 0.
    x = tf.constant([[[[3.0, -1.0, 0.5, 2.0]]]])
    ours, _ = _pair(x.shape)
    y = ours(x, training=True)
    np.testing.assert_allclose(y, ours.beta.numpy()[None, None, None], atol=1e-6)
    np.testing.assert_allclose(ours.moving_mean, 0.1 * x.numpy()[0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(ours.moving_variance, np.full(4, 0.9), rtol=1e-6)


def test_inference_uses_the_moving_statistics_as_keras():
    shape = SHAPES["images"]
    x = tf.constant(np.random.default_rng(1).normal(1.0, 2.0, shape), tf.float32)
    ours, reference = _pair(shape)
    for layer in (ours, reference):
        layer.moving_mean.assign(np.full(shape[-1], 0.5))
        layer.moving_variance.assign(np.full(shape[-1], 4.0))
    np.testing.assert_allclose(ours(x, training=False), reference(x, training=False), rtol=1e-6)
    assert "FusedBatchNormV3" not in _graph_ops(ours, x, training=False)


def test_mixed_bfloat16_keeps_float32_statistics_and_returns_bfloat16():
    shape = SHAPES["images"]
    x = np.random.default_rng(2).normal(2.0, 3.0, shape).astype(np.float32)
    ours, reference = _pair(shape)
    policy_layer = batch_norm.BatchNormalization(
        momentum=0.9, epsilon=batch_norm.BATCH_NORM_EPSILON, dtype="mixed_bfloat16")
    policy_layer.build(shape)
    policy_layer.set_weights(reference.get_weights())
    y = policy_layer(tf.cast(x, tf.bfloat16), training=True)
    want = reference(tf.cast(tf.cast(x, tf.bfloat16), tf.float32), training=True)
    assert y.dtype == tf.bfloat16 and policy_layer.moving_variance.dtype == "float32"
    np.testing.assert_allclose(tf.cast(y, tf.float32), want, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(policy_layer.moving_variance, reference.moving_variance, rtol=1e-5)


@pytest.mark.parametrize("synchronized", [True, False])
def test_under_two_replicas_only_synchronized_statistics_leave_the_fused_kernel(
        synchronized, mirrored_strategy):
    shape = SHAPES["images"]
    x = np.random.default_rng(3).normal(0.0, 1.0, (2 * shape[0],) + shape[1:]).astype(np.float32)
    x[shape[0]:] = 0.3 * x[shape[0]:] + 0.6  # The replicas' halves differ.
    with mirrored_strategy.scope():
        layer = batch_norm.BatchNormalization(momentum=0.0, synchronized=synchronized)
        layer.build(shape)
    halves = mirrored_strategy.experimental_distribute_values_from_function(
        lambda ctx: x[shape[0] * ctx.replica_id_in_sync_group:][:shape[0]])

    @tf.function
    def train_call(images):
        return mirrored_strategy.run(lambda batch: layer(batch, training=True), args=(images,))

    train_call(halves)
    ops = {op.type for op in train_call.get_concrete_function(halves).graph.get_operations()}
    assert ("FusedBatchNormV3" in ops) != synchronized
    # Momentum 0: the moving mean is the last batch's, all-reduced or the replicas' average.
    np.testing.assert_allclose(layer.moving_mean, x.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
