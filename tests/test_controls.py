"""Tests of tf_sogclr.losses.controls: NT-Xent (SimCLR) and the CLIP loss, the controls of SogCLR."""

import numpy as np
import tensorflow as tf

import loss_reference as ref
from tf_sogclr import losses

RTOL, ATOL = 1e-5, 1e-6


def test_clip_loss_is_symmetric_infonce():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(2, 6, 5)).astype(np.float32)
    loss, metrics = losses.ClipContrastiveLoss(temperature=0.05)(
        image, text, return_metrics=True)
    e = image / np.linalg.norm(image, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = e @ t.T / 0.05

    def cross_entropy(z):
        z = z - z.max(1, keepdims=True)
        return -(np.diag(z) - np.log(np.exp(z).sum(1)))

    np.testing.assert_allclose(loss, np.mean(cross_entropy(logits) + cross_entropy(logits.T)),
                               rtol=1e-5)
    assert 0.0 <= metrics["contrastive_accuracy"] <= 1.0 and metrics["input_ok"] == 1.0


def test_nt_xent_matches_reference():
    rng = np.random.default_rng(2)
    z1, z2 = ref.random_views(rng, 7)
    a, b = tf.constant(z1, tf.float32), tf.constant(z2, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = losses.nt_xent_loss(a, b, temperature=0.2)
    g1, g2 = tape.gradient(loss, [a, b])
    want_loss, want_g1, want_g2 = ref.nt_xent(z1, z2, 0.2)
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL)
    np.testing.assert_allclose(g1, want_g1, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(g2, want_g2, rtol=RTOL, atol=ATOL)
    layer_loss, metrics = losses.NTXentLoss(temperature=0.2)(a, b, return_metrics=True)
    np.testing.assert_allclose(layer_loss, want_loss, rtol=RTOL)
    assert 0.0 <= metrics["contrastive_accuracy"] <= 1.0


def test_mirrored_nt_xent_equals_one_device(mirrored_strategy):
    rng = np.random.default_rng(7)
    strategy = mirrored_strategy
    z1 = tf.constant(rng.normal(size=(6, 4)), tf.float32)
    z2 = tf.constant(rng.normal(size=(6, 4)), tf.float32)

    @tf.function
    def mirrored():
        def split(ctx):
            rows = slice(ctx.replica_id_in_sync_group * 3, (ctx.replica_id_in_sync_group + 1) * 3)
            return z1[rows], z2[rows]
        shards = strategy.experimental_distribute_values_from_function(split)
        per_replica = strategy.run(lambda s: losses.nt_xent_loss(*s) / 2.0, args=(shards,))
        return strategy.reduce("SUM", per_replica, axis=None)

    np.testing.assert_allclose(mirrored(), losses.nt_xent_loss(z1, z2), rtol=RTOL)


def test_contrastive_accuracy_counts_positives_ranked_first():
    # Two well-separated pairs: every anchor's positive beats its negatives.
    z1 = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    z2 = tf.constant([[0.9, 0.1], [0.1, 0.9]])
    _, metrics = losses.GlobalContrastiveLoss(2)(z1, z2, tf.constant([0, 1]), return_metrics=True)
    assert metrics["contrastive_accuracy"] == 1.0
    _, metrics = losses.GlobalContrastiveLoss(2)(z1, z2[::-1], tf.constant([0, 1]), return_metrics=True)
    assert metrics["contrastive_accuracy"] == 0.0
    _, metrics = losses.NTXentLoss()(z1, z2, return_metrics=True)
    assert metrics["contrastive_accuracy"] == 1.0
