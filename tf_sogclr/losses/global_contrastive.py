"""SogCLR's global contrastive losses (ICML 2022): unimodal and two-way (image-text).

Each local anchor is contrasted with the *global* batch (every replica's rows, gathered
differentiably); the per-example moving averages live in `u_table.UTable` layers, read and
written for the global batch's rows only. Maths: docs/algorithm.md ("The step", "Numerics",
"Image-text"); similarities are dot products of L2-normalised float32 vectors, whatever the
input dtype. Input checks: `losses.inputs`.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.config import GAMMA_SCHEDULES, GRADIENT_SCALES
from tf_sogclr.losses import inputs
from tf_sogclr.losses.u_table import UTable, log_add_exp, moving_average_log_u


def gamma_for_epoch(epoch, gamma, gamma_schedule="constant", gamma_decay_epochs=None):
    """Moving-average weight for `epoch` (0-based).

    "constant": `gamma` every epoch. "cosine" (LibAUC): from 1.0 at epoch 0 down to `gamma`
    at `gamma_decay_epochs` along a half cosine, then `gamma`.
    """
    if gamma_schedule == "constant":
        return float(gamma)
    progress = min(float(epoch), float(gamma_decay_epochs)) / float(gamma_decay_epochs)
    return float(gamma + (1.0 - gamma) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _validate_hyperparameters(num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs,
                              gradient_scale):
    if gradient_scale not in GRADIENT_SCALES:
        raise ValueError(
            f"gradient_scale must be one of {GRADIENT_SCALES}, got {gradient_scale!r}.")
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)):
        raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}.")
    if not 1 <= num_examples <= np.iinfo(np.int32).max:
        raise ValueError(f"num_examples must be in [1, 2**31 - 1], got {num_examples}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}.")
    if gamma_schedule not in GAMMA_SCHEDULES:
        raise ValueError(
            f"gamma_schedule must be one of {GAMMA_SCHEDULES}, got {gamma_schedule!r}."
        )
    if gamma_schedule == "cosine":
        if gamma_decay_epochs is None or not gamma_decay_epochs > 0:
            raise ValueError(
                "gamma_schedule='cosine' needs gamma_decay_epochs > 0 (the epochs over which "
                f"gamma falls from 1.0 to gamma), got gamma_decay_epochs={gamma_decay_epochs!r}."
            )
    elif gamma_decay_epochs is not None:
        raise ValueError(
            "gamma_decay_epochs is only used with gamma_schedule='cosine'; "
            f"got gamma_decay_epochs={gamma_decay_epochs!r} with gamma_schedule={gamma_schedule!r}."
        )


def _sogclr_direction(sims, negatives, positive, log_u_old, gamma, temperature, num_negatives):
    """One anchor direction of docs/algorithm.md, "The step".

    sims: raw similarities `[b, K]` (differentiable); negatives: bool `[b, K]`;
    positive: `[b]`; log_u_old: `[b]`. Returns per-anchor surrogate loss `[b]`, the new
    log u `[b]` and whether the positive outranks every negative `[b]`.
    """
    masked = tf.where(negatives, tf.stop_gradient(sims) / temperature, -np.inf)
    # One exp of [b, K], shared by log g and the weights (a second one costs ~10% under XLA).
    row_max = tf.reduce_max(masked, axis=1)
    shifted = tf.exp(masked - row_max[:, None])  # exp(s / tau - max); 0 off the negatives.
    log_g = row_max + tf.math.log(tf.reduce_sum(shifted, axis=1)) - tf.math.log(num_negatives)
    log_u = moving_average_log_u(log_u_old, log_g, gamma)
    weights = shifted * tf.exp(row_max - log_u)[:, None]  # p[i, j] = exp(s / tau - log u).
    loss = -positive + tf.reduce_sum(weights * sims, axis=1) / num_negatives
    correct = positive * (1.0 / temperature) > row_max
    return loss, log_u, correct


def _u_stats(log_u):
    """Mean, min and max of u (linear scale) for a `[b]` batch of log u."""
    count = tf.cast(tf.shape(log_u)[0], tf.float32)
    return {
        "u_mean": tf.exp(tf.reduce_logsumexp(log_u) - tf.math.log(count)),
        "u_min": tf.exp(tf.reduce_min(log_u)),
        "u_max": tf.exp(tf.reduce_max(log_u)),
    }


class _GlobalContrastiveBase(keras.layers.Layer):
    """Hyper-parameters, gamma variable and schedule shared by the global contrastive losses."""

    def __init__(
        self,
        num_examples,
        temperature=0.1,
        gamma=0.9,
        gamma_schedule="constant",
        gamma_decay_epochs=None,
        normalize=True,
        gradient_scale="infonce",
        **kwargs,
    ):
        _validate_hyperparameters(
            num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs, gradient_scale
        )
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_examples = int(num_examples)
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.gamma_schedule = gamma_schedule
        self.gamma_decay_epochs = gamma_decay_epochs
        self.normalize = bool(normalize)
        self.gradient_scale = gradient_scale
        self.current_gamma = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.gamma_for_epoch(0)),
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name="current_gamma",
        )

    def gamma_for_epoch(self, epoch):
        """The schedule's gamma for `epoch` (0-based), a Python float."""
        return gamma_for_epoch(epoch, self.gamma, self.gamma_schedule, self.gamma_decay_epochs)

    def set_epoch(self, epoch):
        """Sets the gamma used by the next steps; call at the start of every epoch."""
        self.current_gamma.assign(self.gamma_for_epoch(epoch))

    def schedule_logs(self):
        """{"gamma": float32 scalar}: the schedule's current value, for training logs."""
        return {"gamma": tf.convert_to_tensor(self.current_gamma.value)}

    def _scaled(self, surrogate, temperature):
        """The surrogate as the loss: divided by tau for "infonce" (InfoNCE's gradient), as
        is for "libauc" (the authors' value; gradient tau times smaller)."""
        return surrogate / temperature if self.gradient_scale == "infonce" else surrogate

    def _prepare(self, z1, z2, index, names):
        """Checks, normalises and gathers; returns local and global tensors and accept flag."""
        z1, z2, index = inputs.check_pair(z1, z2, index, names)
        checks = inputs.check_index_range(index, self.num_examples, names[2])
        with tf.control_dependencies(checks):
            index = tf.identity(index)
        z1 = inputs.normalize_projections(z1, self.normalize)
        z2 = inputs.normalize_projections(z2, self.normalize)
        z1_all = distribute.cross_replica_concat(z1)
        z2_all = distribute.cross_replica_concat(z2)
        index_all = distribute.cross_replica_concat(index)
        accept = inputs.accept_step(index_all, self.num_examples, z1_all, z2_all)
        safe = lambda i: tf.clip_by_value(tf.cast(i, tf.int32), 0, self.num_examples - 1)
        return z1, z2, safe(index), z1_all, z2_all, safe(index_all), accept

    def get_config(self):
        config = super().get_config()
        config.update(
            num_examples=self.num_examples,
            temperature=self.temperature,
            gamma=self.gamma,
            gamma_schedule=self.gamma_schedule,
            gamma_decay_epochs=self.gamma_decay_epochs,
            normalize=self.normalize,
            gradient_scale=self.gradient_scale,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_sogclr")
class GlobalContrastiveLoss(_GlobalContrastiveBase):
    """SogCLR's unimodal global contrastive loss with its u-table (docs/algorithm.md).

    `loss_fn(z1, z2, index)`: projections of two views `[b, d]` (any float dtype) and int
    example indices `[b]` in [0, num_examples); returns the scalar surrogate loss, the mean
    over local anchors of both directions (over tau with `gradient_scale="infonce"`), and
    writes the global batch's rows of the table.
    With `return_metrics=True` it returns `(loss, metrics)`; metrics are float32 scalars:
    `objective` (estimate of F), `u_mean`, `u_min`, `u_max`, `contrastive_accuracy`,
    `input_ok`. Under a strategy, divide the loss by the number of replicas before taking
    gradients (as Keras does) so that summed gradients equal the global-batch gradient.

    Args:
      num_examples: rows of the table, the size of the training split (>= 1).
      temperature: tau > 0.
      gamma: moving-average weight in (0, 1]; with `gamma_schedule="cosine"` the value
        reached after `gamma_decay_epochs` (LibAUC's gamma_min).
      gamma_schedule: "constant" or "cosine"; `set_epoch` applies it.
      normalize: L2-normalise projections (SimCLR's `hidden_norm`).
      gradient_scale: "infonce" (the surrogate over tau: the gradient of NT-Xent / InfoNCE
        at the same tau) or "libauc" (the authors' surrogate, gradient tau times smaller).
    """

    def __init__(self, num_examples, temperature=0.1, gamma=0.9, gamma_schedule="constant",
                 gamma_decay_epochs=None, normalize=True, gradient_scale="infonce", **kwargs):
        super().__init__(num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs,
                         normalize, gradient_scale, **kwargs)
        self.u_table = UTable(self.num_examples, name="u_table")
        self.built = True

    def call(self, z1, z2, index, return_metrics=False):
        z1, z2, index, z1_all, z2_all, index_all, accept = self._prepare(
            z1, z2, index, ("z1", "z2", "index"))
        batch = tf.shape(z1)[0]
        global_batch = tf.shape(z1_all)[0]
        not_self = inputs.not_self_mask(batch, global_batch)
        negatives = tf.concat([not_self, not_self], axis=1)  # [b, 2B]
        num_negatives = 2.0 * (tf.cast(global_batch, tf.float32) - 1.0)
        positive = tf.reduce_sum(z1 * z2, axis=1)
        log_u_old = self.u_table.read(index)
        gamma = tf.convert_to_tensor(self.current_gamma.value)
        # Anchors z1 against [z2_all; z1_all], anchors z2 against [z1_all; z2_all].
        sims1 = tf.matmul(z1, tf.concat([z2_all, z1_all], 0), transpose_b=True)
        sims2 = tf.matmul(z2, tf.concat([z1_all, z2_all], 0), transpose_b=True)
        loss1, log_u1, correct1 = _sogclr_direction(
            sims1, negatives, positive, log_u_old, gamma, self.temperature, num_negatives)
        loss2, log_u2, correct2 = _sogclr_direction(
            sims2, negatives, positive, log_u_old, gamma, self.temperature, num_negatives)
        loss = self._scaled(tf.reduce_mean(loss1 + loss2), self.temperature)
        log_u = log_add_exp(log_u1, log_u2) - math.log(2.0)  # log((u1 + u2) / 2)
        self.u_table.write(index_all, distribute.cross_replica_concat(log_u), accept)
        if not return_metrics:
            return loss
        metrics = {
            "objective": tf.reduce_mean(
                self.temperature * (log_u1 + log_u2) - 2.0 * positive),
            "contrastive_accuracy": tf.reduce_mean(
                tf.cast(tf.concat([correct1, correct2], 0), tf.float32)),
            "input_ok": tf.cast(accept, tf.float32),
            **_u_stats(log_u),
        }
        return loss, metrics

    def estimates(self):
        """The table in linear scale, float32 `[num_examples]`, 0 where never visited."""
        return self.u_table.estimates()

    def table_estimates(self):
        """{summary name: u in linear scale `[num_examples]`} of every table (summaries)."""
        return {"u_table": self.estimates()}

    def visited_fraction(self):
        """Fraction of training examples visited so far (reads the whole table)."""
        return self.u_table.visited_fraction()


@keras.saving.register_keras_serializable(package="tf_sogclr")
class BimodalGlobalContrastiveLoss(_GlobalContrastiveBase):
    """Two-way global contrastive loss for image-text pairs (docs/algorithm.md, "Image-text").

    `loss_fn(image_emb, text_emb, index)`: `[b, d]` embeddings of paired images and texts and
    int pair indices `[b]`. Table `image_u_table` holds u^I (image anchors against the B-1
    other texts), `text_u_table` u^T (text anchors against the other images). Returns the
    mean over local pairs of loss^I + loss^T (over tau with `gradient_scale="infonce"`);
    metrics and guarantees as
    `GlobalContrastiveLoss`, plus `temperature_gradient`: the estimate of d objective / d tau,
    `mean_i [log u^I_i + log u^T_i - sum_j (p^I_ij s^I_ij + p^T_ij s^T_ij) / (tau (B - 1))]`.
    `temperature` (optional scalar, e.g. a learnable tau's value) overrides the constructor's
    for this call; no gradient flows to it through the loss.
    """

    def __init__(self, num_examples, temperature=0.1, gamma=0.9, gamma_schedule="constant",
                 gamma_decay_epochs=None, normalize=True, gradient_scale="infonce", **kwargs):
        super().__init__(num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs,
                         normalize, gradient_scale, **kwargs)
        self.image_u_table = UTable(self.num_examples, name="image_u_table")
        self.text_u_table = UTable(self.num_examples, name="text_u_table")
        self.built = True

    def call(self, image_emb, text_emb, index, return_metrics=False, temperature=None):
        image, text, index, image_all, text_all, index_all, accept = self._prepare(
            image_emb, text_emb, index, ("image_emb", "text_emb", "index"))
        tau = (self.temperature if temperature is None
               else tf.stop_gradient(tf.cast(temperature, tf.float32)))
        global_batch = tf.shape(image_all)[0]
        negatives = inputs.not_self_mask(tf.shape(image)[0], global_batch)  # [b, B]
        num_negatives = tf.cast(global_batch, tf.float32) - 1.0
        positive = tf.reduce_sum(image * text, axis=1)
        gamma = tf.convert_to_tensor(self.current_gamma.value)
        loss_i, log_u_i, correct_i = _sogclr_direction(
            tf.matmul(image, text_all, transpose_b=True), negatives, positive,
            self.image_u_table.read(index), gamma, tau, num_negatives)
        loss_t, log_u_t, correct_t = _sogclr_direction(
            tf.matmul(text, image_all, transpose_b=True), negatives, positive,
            self.text_u_table.read(index), gamma, tau, num_negatives)
        loss = self._scaled(tf.reduce_mean(loss_i + loss_t), tau)
        self.image_u_table.write(index_all, distribute.cross_replica_concat(log_u_i), accept)
        self.text_u_table.write(index_all, distribute.cross_replica_concat(log_u_t), accept)
        if not return_metrics:
            return loss
        # sum_j p_ij s_ij / (B - 1) is each direction's surrogate plus the positive.
        weighted = tf.stop_gradient(loss_i + loss_t + 2.0 * positive)
        metrics = {
            "objective": tf.reduce_mean(tau * (log_u_i + log_u_t) - 2.0 * positive),
            "contrastive_accuracy": tf.reduce_mean(
                tf.cast(tf.concat([correct_i, correct_t], 0), tf.float32)),
            "input_ok": tf.cast(accept, tf.float32),
            "temperature_gradient": tf.reduce_mean(log_u_i + log_u_t - weighted / tau),
            **_u_stats(log_add_exp(log_u_i, log_u_t) - math.log(2.0)),
        }
        return loss, metrics

    def estimates(self):
        """Both tables in linear scale: `{"image": [N], "text": [N]}`, 0 where never visited."""
        return {"image": self.image_u_table.estimates(), "text": self.text_u_table.estimates()}

    def table_estimates(self):
        """{summary name: u in linear scale `[num_examples]`} of every table (summaries)."""
        return {f"u_table_{name}": values for name, values in self.estimates().items()}

    def visited_fraction(self):
        """Fraction of pairs visited so far (reads the image table)."""
        return self.image_u_table.visited_fraction()
