"""The controls of every comparison: SimCLR's NT-Xent and CLIP's symmetric InfoNCE.

Both contrast each local anchor with the global batch, like the global losses, and have
their interface (`loss_fn(a, b, index=None, return_metrics=False)`, `set_epoch`,
`schedule_logs`, `table_estimates`, `num_examples` None), so a model switches between a
global loss and its control by argument. They keep no table. Like the global losses they
take `collective_free_backward` (`losses.local_backward`: no collective in the backward pass).
"""

import keras
import numpy as np
import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.config import BIMODAL_TEMPERATURE
from tf_sogclr.losses import inputs, local_backward

CLIP_TEMPERATURE = BIMODAL_TEMPERATURE  # CLIP's initial temperature, the bimodal default.


def _nt_xent(z1, z2, temperature, normalize, collective_free_backward=False):
    """SimCLR's NT-Xent: mean over local anchors of both directions, and accuracy.

    With `collective_free_backward` the projections are gathered without gradient and the
    remote term (`local_backward`) gives this replica's rows the gradient of every anchor.
    """
    z1 = inputs.normalize_projections(z1, normalize)
    z2 = inputs.normalize_projections(z2, normalize)
    z1_all = local_backward.gather(z1, collective_free_backward)
    z2_all = local_backward.gather(z2, collective_free_backward)
    batch, global_batch = tf.shape(z1)[0], tf.shape(z1_all)[0]
    not_self = inputs.not_self_mask(batch, global_batch)
    # Candidates: every other view (positive included), never the anchor itself.
    candidates = tf.concat([tf.ones_like(not_self), not_self], axis=1)
    negatives = tf.concat([not_self, not_self], axis=1)
    positive = tf.reduce_sum(z1 * z2, axis=1) / temperature
    losses, correct, log_sum_exp = [], [], []
    for anchors, same_view_all, other_view_all in ((z1, z1_all, z2_all), (z2, z2_all, z1_all)):
        logits = tf.matmul(anchors, tf.concat([other_view_all, same_view_all], 0),
                           transpose_b=True) / temperature
        log_sum_exp.append(tf.reduce_logsumexp(tf.where(candidates, logits, -np.inf), axis=1))
        losses.append(log_sum_exp[-1] - positive)
        hardest = tf.reduce_max(tf.where(negatives, tf.stop_gradient(logits), -np.inf), axis=1)
        correct.append(positive > hardest)
    loss = tf.reduce_mean(losses[0] + losses[1])
    accuracy = tf.reduce_mean(tf.cast(tf.concat(correct, 0), tf.float32))
    if collective_free_backward:
        lse1_all, lse2_all = tf.unstack(distribute.cross_replica_concat(
            tf.stop_gradient(tf.stack(log_sum_exp, axis=1))), num=2, axis=1)
        rows = local_backward.local_rows(batch)
        other_self = tf.not_equal(tf.range(global_batch)[:, None], rows[None, :])  # [B, b]
        in_sum = tf.concat([tf.ones_like(other_self), other_self], axis=1)  # [B, 2b]
        scale = 1.0 / temperature
        remote = (local_backward.remote_term(z1_all, tf.concat([z2, z1], 0), in_sum, lse1_all,
                                             temperature, scale)
                  + local_backward.remote_term(z2_all, tf.concat([z1, z2], 0), in_sum,
                                               lse2_all, temperature, scale))
        loss = local_backward.with_remote_gradient(loss, remote, batch)
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
    metric_names = ()  # no metrics beyond the standard ones

    def __init__(self, temperature, normalize=True, collective_free_backward=False, **kwargs):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.collective_free_backward = bool(collective_free_backward)
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
        config.update(temperature=self.temperature, normalize=self.normalize,
                      collective_free_backward=self.collective_free_backward)
        return config


@keras.saving.register_keras_serializable(package="tf_sogclr")
class NTXentLoss(_TablelessLoss):
    """NT-Xent as a layer with the interface of `GlobalContrastiveLoss` (index unused).

    Lets a model switch between SogCLR and the SimCLR control by argument; its `objective`
    metric is the NT-Xent loss itself.
    """

    def __init__(self, temperature=0.1, normalize=True, collective_free_backward=False,
                 **kwargs):
        super().__init__(temperature, normalize, collective_free_backward, **kwargs)

    def call(self, z1, z2, index=None, return_metrics=False):
        z1, z2, _ = inputs.check_pair(z1, z2, index, ("z1", "z2", "index"))
        loss, accuracy = _nt_xent(z1, z2, self.temperature, self.normalize,
                                  self.collective_free_backward)
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

    def __init__(self, temperature=CLIP_TEMPERATURE, normalize=True,
                 collective_free_backward=False, **kwargs):
        super().__init__(temperature, normalize, collective_free_backward, **kwargs)

    def call(self, image_emb, text_emb, index=None, return_metrics=False, temperature=None):
        image, text, _ = inputs.check_pair(image_emb, text_emb, index,
                                            ("image_emb", "text_emb", "index"))
        tau = self.temperature if temperature is None else tf.cast(temperature, tf.float32)
        image = inputs.normalize_projections(image, self.normalize)
        text = inputs.normalize_projections(text, self.normalize)
        image_all = local_backward.gather(image, self.collective_free_backward)
        text_all = local_backward.gather(text, self.collective_free_backward)
        batch, global_batch = tf.shape(image)[0], tf.shape(image_all)[0]
        not_self = inputs.not_self_mask(batch, global_batch)
        # The pair's logit from the local rows, so both sides get its gradient either way.
        positive = tf.reduce_sum(image * text, axis=1) / tau
        directions, log_sum_exp = [], []
        for anchors, others in ((image, text_all), (text, image_all)):
            logits = tf.matmul(anchors, others, transpose_b=True) / tau  # [b, B]
            log_sum_exp.append(tf.reduce_logsumexp(logits, axis=1))
            hardest = tf.reduce_max(tf.where(not_self, tf.stop_gradient(logits), -np.inf), 1)
            directions.append((log_sum_exp[-1] - positive, positive > hardest))
        loss = tf.reduce_mean(directions[0][0] + directions[1][0])
        if self.collective_free_backward:
            lse_image_all, lse_text_all = tf.unstack(distribute.cross_replica_concat(
                tf.stop_gradient(tf.stack(log_sum_exp, axis=1))), num=2, axis=1)
            every = tf.ones([global_batch, batch], tf.bool)  # the pair is a candidate too
            remote = (local_backward.remote_term(image_all, text, every, lse_image_all, tau,
                                                 1.0 / tau)
                      + local_backward.remote_term(text_all, image, every, lse_text_all, tau,
                                                   1.0 / tau))
            loss = local_backward.with_remote_gradient(loss, remote, batch)
        if not return_metrics:
            return loss
        accept = tf.logical_and(tf.reduce_all(tf.math.is_finite(image)),
                                tf.reduce_all(tf.math.is_finite(text)))
        accuracy = tf.reduce_mean(tf.cast(tf.concat([directions[0][1], directions[1][1]], 0),
                                          tf.float32))
        return loss, {"objective": loss, "contrastive_accuracy": accuracy,
                      "input_ok": tf.cast(accept, tf.float32)}
