"""SimCLR's batch norm as a Keras 3 layer: replica-averaged moving statistics, fused kernel.

`BatchNormalization` is Keras's layer with two changes, both invisible in what it computes:

* Moving statistics stay identical on every replica. Keras 3 creates moving_mean /
  moving_variance with aggregation NONE, so without `synchronized=True` each replica's copy
  drifts to its own shard's statistics, and what a checkpoint or export holds depends on the
  replica read. Here updates are averaged over replicas (tf.keras's behaviour, which SimCLR
  relied on).
* A training-mode pass over images `[b, H, W, C]` (or features `[b, C]`) runs TensorFlow's
  fused kernel (`FusedBatchNormV3`, oneDNN's batch norm on CPU, one op forward and one
  backward) where Keras 3 composes ~10 element-wise ops and their gradients (tf.keras 2 fused
  by default; Keras 3 no longer does). It is used whenever the batch statistics are this
  replica's own: always without `synchronized=True`, and with it when there is one replica.
  Across replicas `synchronized=True` keeps Keras's all-reduced moments. The moving variance
  is the biased batch variance, as in Keras (the kernel returns the unbiased one; rescaled).
"""

import keras
import tensorflow as tf

from tf_sogclr import distribute

BATCH_NORM_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="tf_sogclr")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras batch norm with replica-averaged moving statistics and a fused training pass."""

    def add_weight(self, *args, **kwargs):
        if kwargs.get("name") in ("moving_mean", "moving_variance"):
            kwargs.setdefault("aggregation", "mean")
        return super().add_weight(*args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        if not self._fuses(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        return self._fused_training_call(inputs)

    def _fuses(self, inputs, training, mask):
        """Whether this call can run the fused kernel (module docstring)."""
        rank = len(inputs.shape)
        return (training is True and self.trainable and mask is None and not self.renorm
                and rank in (2, 4) and self.axis in (-1, rank - 1)
                and (not self.synchronized or distribute.num_replicas_in_sync() == 1))

    def _fused_training_call(self, inputs):
        """`[b, H, W, C]` or `[b, C]` -> the same shape, normalised by the batch statistics;
        updates the moving statistics as Keras does (momentum, biased variance)."""
        x = tf.cast(inputs, tf.float32)  # As Keras: statistics in float32 under mixed precision.
        features_only = len(inputs.shape) == 2
        if features_only:
            x = x[:, tf.newaxis, tf.newaxis, :]
        channels = tf.shape(x)[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        count = tf.cast(tf.size(x, out_type=tf.int64) // tf.cast(channels, tf.int64), tf.float32)
        # The kernel's variance is the batch's times count / (count - 1) (count 1: times 1).
        variance = unbiased_variance * tf.maximum(count - 1.0, 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        if features_only:
            outputs = outputs[:, 0, 0, :]
        return tf.cast(outputs, self.compute_dtype)


def batch_norm_layer(name, batch_norm_decay=0.9, global_bn=False, center=True,
                     gamma_initializer="ones", trainable=True):
    """SimCLR's batch norm: momentum `batch_norm_decay`, epsilon 1e-5, synchronised if global."""
    return BatchNormalization(
        axis=-1,
        momentum=batch_norm_decay,
        epsilon=BATCH_NORM_EPSILON,
        center=center,
        gamma_initializer=gamma_initializer,
        synchronized=global_bn,
        trainable=trainable,
        name=name,
    )
