"""The controls of every comparison: SimCLR's NT-Xent and CLIP's symmetric InfoNCE.

Both contrast each local anchor with the global batch, like the global losses, and have
their interface (`loss_fn(a, b, index=None, return_metrics=False)`, `set_epoch`,
`schedule_logs`, `table_estimates`, `num_examples` None), so a model switches between a
global loss and its control by argument. They keep no table.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.config import BIMODAL_TEMPERATURE
from tf_sogclr.losses import inputs

CLIP_TEMPERATURE = BIMODAL_TEMPERATURE  # CLIP's initial temperature, the bimodal default.


def _nt_xent(z1, z2, temperature, normalize):
    """SimCLR's NT-Xent: mean over local anchors of both directions, and accuracy."""
    z1 = inputs.normalize_projections(z1, normalize)
    z2 = inputs.normalize_projections(z2, normalize)
    z1_all = distribute.cross_replica_concat(z1)
    z2_all = distribute.cross_replica_concat(z2)
    not_self = inputs.not_self_mask(tf.shape(z1)[0], tf.shape(z1_all)[0])
    # Candidates: every other view (positive included), never the anchor itself.
    candidates = tf.concat([tf.ones_like(not_self), not_self], axis=1)
    negatives = tf.concat([not_self, not_self], axis=1)
    positive = tf.reduce_sum(z1 * z2, axis=1) / temperature
    losses, correct = [], []
    for anchors, same_view_all, other_view_all in ((z1, z1_all, z2_all), (z2, z2_all, z1_all)):
        logits = tf.matmul(anchors, tf.concat([other_view_all, same_view_all], 0),
                           transpose_b=True) / temperature
        losses.append(tf.reduce_logsumexp(tf.where(candidates, logits, -np.inf), axis=1)
                      - positive)
        hardest = tf.reduce_max(tf.where(negatives, tf.stop_gradient(logits), -np.inf), axis=1)
        correct.append(positive > hardest)
    loss = tf.reduce_mean(losses[0] + losses[1])
    accuracy = tf.reduce_mean(tf.cast(tf.concat(correct, 0), tf.float32))
    return loss, accuracy


def nt_xent_loss(z1, z2, temperature=0.1, normalize=True):
    """SimCLR's NT-Xent of two views `[b, d]` against the global batch: scalar."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    z1, z2, _ = inputs.check_pair(z1, z2, None, ("z1", "z2", "index"))
    return _nt_xent(z1, z2, temperature, normalize)[0]


class _TablelessLoss(keras.layers.Layer):
    """What the controls share: a fixed temperature, optional normalisation, no table and
    no schedule (`num_examples` None; `set_epoch`, `schedule_logs`, `table_estimates` are
    there so training loops treat every loss layer alike)."""

    num_examples = None

    def __init__(self, temperature, normalize=True, **kwargs):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.built = True

    def set_epoch(self, epoch):
        """No schedule."""
        del epoch

    def schedule_logs(self):
        """No schedule: nothing to log."""
        return {}

    def table_estimates(self):
        """No table: nothing to summarise."""
        return {}

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, normalize=self.normalize)
        return config


@keras.saving.register_keras_serializable(package="tf_sogclr")
class NTXentLoss(_TablelessLoss):
    """NT-Xent as a layer with the interface of `GlobalContrastiveLoss` (index unused).

    Lets a model switch between SogCLR and the SimCLR control by argument; its `objective`
    metric is the NT-Xent loss itself.
    """

    def __init__(self, temperature=0.1, normalize=True, **kwargs):
        super().__init__(temperature, normalize, **kwargs)

    def call(self, z1, z2, index=None, return_metrics=False):
        z1, z2, _ = inputs.check_pair(z1, z2, index, ("z1", "z2", "index"))
        loss, accuracy = _nt_xent(z1, z2, self.temperature, self.normalize)
        if not return_metrics:
            return loss
        accept = tf.logical_and(tf.reduce_all(tf.math.is_finite(z1)),
                                tf.reduce_all(tf.math.is_finite(z2)))
        return loss, {"objective": loss, "contrastive_accuracy": accuracy,
                      "input_ok": tf.cast(accept, tf.float32)}


@keras.saving.register_keras_serializable(package="tf_sogclr")
class ClipContrastiveLoss(_TablelessLoss):
    """CLIP's symmetric InfoNCE, the control: image and text anchors against the global batch.

    `loss_fn(image_emb, text_emb, index=None)`: `[b, d]` embeddings; cross-entropy of the
    logits `e_i . t_j / tau` over the B global texts (images) with the pair as label, summed
    over both directions and averaged over local pairs (twice CLIP's mean, the scale of
    the SogCLR surrogate). `temperature` may be a tensor with a gradient (learnable tau).
    """

    def __init__(self, temperature=CLIP_TEMPERATURE, normalize=True, **kwargs):
        super().__init__(temperature, normalize, **kwargs)

    def call(self, image_emb, text_emb, index=None, return_metrics=False, temperature=None):
        image, text, _ = inputs.check_pair(image_emb, text_emb, index,
                                            ("image_emb", "text_emb", "index"))
        tau = self.temperature if temperature is None else tf.cast(temperature, tf.float32)
        image = inputs.normalize_projections(image, self.normalize)
        text = inputs.normalize_projections(text, self.normalize)
        image_all = distribute.cross_replica_concat(image)
        text_all = distribute.cross_replica_concat(text)
        batch = tf.shape(image)[0]
        rows = distribute.replica_row_offset(batch) + tf.range(batch)
        not_self = inputs.not_self_mask(batch, tf.shape(image_all)[0])
        directions = []
        for anchors, others in ((image, text_all), (text, image_all)):
            logits = tf.matmul(anchors, others, transpose_b=True) / tau  # [b, B]
            cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(rows, logits)
            positive = tf.gather(logits, rows, axis=1, batch_dims=1)
            hardest = tf.reduce_max(tf.where(not_self, tf.stop_gradient(logits), -np.inf), 1)
            directions.append((cross_entropy, positive > hardest))
        loss = tf.reduce_mean(directions[0][0] + directions[1][0])
        if not return_metrics:
            return loss
        accept = tf.logical_and(tf.reduce_all(tf.math.is_finite(image)),
                                tf.reduce_all(tf.math.is_finite(text)))
        accuracy = tf.reduce_mean(tf.cast(tf.concat([directions[0][1], directions[1][1]], 0),
                                          tf.float32))
        return loss, {"objective": loss, "contrastive_accuracy": accuracy,
                      "input_ok": tf.cast(accept, tf.float32)}
