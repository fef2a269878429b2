"""Global contrastive losses (SogCLR, ICML 2022) and the SimCLR NT-Xent control.

All losses take per-replica projections and contrast each local anchor against the *global*
batch (every replica's rows, gathered differentiably). Maths follow docs/algorithm.md
("The step", "Image-text"): similarities are dot products of L2-normalised float32 vectors,
whatever the input dtype.

Where each input check lives (GPU and TPU scatters drop or clamp bad rows silently):

* ranks, dtypes and static batch sizes: at trace time, `ValueError`;
* indices outside [0, num_examples): eagerly a `ValueError` before anything runs; in a
  `tf.function` a `tf.debugging` assertion that fails the step before the table is read;
* under `jit_compile=True` XLA drops assertions, so every step also reports
  `metrics["input_ok"]` (1.0 or 0.0: indices in range and projections finite) and a step
  with `input_ok == 0` leaves the table unchanged. Training loops raise on it.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.u_table import UTable, log_add_exp, moving_average_log_u

GAMMA_SCHEDULES = ("constant", "cosine")

__all__ = [
    "GAMMA_SCHEDULES",
    "GlobalContrastiveLoss",
    "BimodalGlobalContrastiveLoss",
    "NTXentLoss",
    "nt_xent_loss",
    "gamma_for_epoch",
]


def gamma_for_epoch(epoch, gamma, gamma_schedule="constant", gamma_decay_epochs=None):
    """Moving-average weight for `epoch` (0-based).

    "constant": `gamma` every epoch. "cosine" (LibAUC): from 1.0 at epoch 0 down to `gamma`
    at `gamma_decay_epochs` along a half cosine, then `gamma`.
    """
    if gamma_schedule == "constant":
        return float(gamma)
    progress = min(float(epoch), float(gamma_decay_epochs)) / float(gamma_decay_epochs)
    return float(gamma + (1.0 - gamma) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _validate_hyperparameters(num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs):
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


def _check_pair(z1, z2, index, names):
    """Trace-time checks of two `[b, d]` projections and `[b]` indices; returns them as tensors."""
    z1 = tf.convert_to_tensor(z1)
    z2 = tf.convert_to_tensor(z2)
    for name, z in zip(names[:2], (z1, z2)):
        if z.shape.rank != 2:
            raise ValueError(f"{name} must have shape [batch, dim], got shape {z.shape}.")
        if not z.dtype.is_floating:
            raise ValueError(f"{name} must be a float tensor, got dtype {z.dtype.name}.")
    if not z1.shape.is_compatible_with(z2.shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {z1.shape} and {z2.shape}."
        )
    if index is None:
        return z1, z2, None
    index = tf.convert_to_tensor(index)
    if index.shape.rank != 1:
        raise ValueError(f"{names[2]} must have shape [batch], got shape {index.shape}.")
    if not index.dtype.is_integer:
        raise ValueError(f"{names[2]} must be an integer tensor, got dtype {index.dtype.name}.")
    if not index.shape[:1].is_compatible_with(z1.shape[:1]):
        raise ValueError(
            f"{names[2]} has {index.shape[0]} rows but {names[0]} has {z1.shape[0]}; "
            "they must match."
        )
    return z1, z2, index


def _check_index_range(index, num_examples, name):
    """Raises eagerly, or returns assertion ops (dropped by XLA) for indices in [0, N)."""
    if tf.executing_eagerly():
        values = index.numpy()
        bad = values[(values < 0) | (values >= num_examples)]
        if bad.size:
            raise ValueError(
                f"{name} must be in [0, num_examples={num_examples}), got {bad[:8].tolist()}."
            )
        return []
    message = f"{name} must be in [0, num_examples={num_examples})"
    return [
        tf.debugging.assert_non_negative(index, message=message),
        tf.debugging.assert_less(index, tf.cast(num_examples, index.dtype), message=message),
    ]


def _normalize(z, normalize):
    z = tf.cast(z, tf.float32)
    return tf.math.l2_normalize(z, axis=-1) if normalize else z


def _not_self_mask(local_batch_size, global_batch_size):
    """Bool `[b, B]`: False at each local anchor's own row of the global batch."""
    rows = distribute.replica_row_offset(local_batch_size) + tf.range(local_batch_size)
    return tf.not_equal(rows[:, None], tf.range(global_batch_size)[None, :])


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


def _accept_step(index_global, num_examples, *projections):
    """Scalar bool, identical on every replica: all indices in range, all projections finite."""
    ok = tf.logical_and(
        tf.reduce_all(index_global >= 0),
        tf.reduce_all(index_global < tf.cast(num_examples, index_global.dtype)),
    )
    for z in projections:
        ok = tf.logical_and(ok, tf.reduce_all(tf.math.is_finite(z)))
    return ok


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
        **kwargs,
    ):
        _validate_hyperparameters(
            num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs
        )
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_examples = int(num_examples)
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.gamma_schedule = gamma_schedule
        self.gamma_decay_epochs = gamma_decay_epochs
        self.normalize = bool(normalize)
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

    def _prepare(self, z1, z2, index, names):
        """Checks, normalises and gathers; returns local and global tensors and accept flag."""
        z1, z2, index = _check_pair(z1, z2, index, names)
        checks = _check_index_range(index, self.num_examples, names[2])
        with tf.control_dependencies(checks):
            index = tf.identity(index)
        z1 = _normalize(z1, self.normalize)
        z2 = _normalize(z2, self.normalize)
        z1_all = distribute.cross_replica_concat(z1)
        z2_all = distribute.cross_replica_concat(z2)
        index_all = distribute.cross_replica_concat(index)
        accept = _accept_step(index_all, self.num_examples, z1_all, z2_all)
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
        )
        return config


@keras.saving.register_keras_serializable(package="tf_sogclr")
class GlobalContrastiveLoss(_GlobalContrastiveBase):
    """SogCLR's unimodal global contrastive loss with its u-table (docs/algorithm.md).

    `loss_fn(z1, z2, index)`: projections of two views `[b, d]` (any float dtype) and int
    example indices `[b]` in [0, num_examples); returns the scalar surrogate loss, the mean
    over local anchors of both directions, and writes the global batch's rows of the table.
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
    """

    def __init__(self, num_examples, temperature=0.1, gamma=0.9, gamma_schedule="constant",
                 gamma_decay_epochs=None, normalize=True, **kwargs):
        super().__init__(num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs,
                         normalize, **kwargs)
        self.u_table = UTable(self.num_examples, name="u_table")
        self.built = True

    def call(self, z1, z2, index, return_metrics=False):
        z1, z2, index, z1_all, z2_all, index_all, accept = self._prepare(
            z1, z2, index, ("z1", "z2", "index"))
        batch = tf.shape(z1)[0]
        global_batch = tf.shape(z1_all)[0]
        not_self = _not_self_mask(batch, global_batch)
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
        loss = tf.reduce_mean(loss1 + loss2)
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

    def visited_fraction(self):
        """Fraction of training examples visited so far (reads the whole table)."""
        return self.u_table.visited_fraction()


@keras.saving.register_keras_serializable(package="tf_sogclr")
class BimodalGlobalContrastiveLoss(_GlobalContrastiveBase):
    """Two-way global contrastive loss for image-text pairs (docs/algorithm.md, "Image-text").

    `loss_fn(image_emb, text_emb, index)`: `[b, d]` embeddings of paired images and texts and
    int pair indices `[b]`. Table `image_u_table` holds u^I (image anchors against the B-1
    other texts), `text_u_table` u^T (text anchors against the other images). Returns the
    mean over local pairs of loss^I + loss^T; metrics and guarantees as
    `GlobalContrastiveLoss`, plus `temperature_gradient`: the estimate of d objective / d tau,
    `mean_i [log u^I_i + log u^T_i - sum_j (p^I_ij s^I_ij + p^T_ij s^T_ij) / (tau (B - 1))]`.
    `temperature` (optional scalar, e.g. a learnable tau's value) overrides the constructor's
    for this call; no gradient flows to it through the loss.
    """

    def __init__(self, num_examples, temperature=0.1, gamma=0.9, gamma_schedule="constant",
                 gamma_decay_epochs=None, normalize=True, **kwargs):
        super().__init__(num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs,
                         normalize, **kwargs)
        self.image_u_table = UTable(self.num_examples, name="image_u_table")
        self.text_u_table = UTable(self.num_examples, name="text_u_table")
        self.built = True

    def call(self, image_emb, text_emb, index, return_metrics=False, temperature=None):
        image, text, index, image_all, text_all, index_all, accept = self._prepare(
            image_emb, text_emb, index, ("image_emb", "text_emb", "index"))
        tau = (self.temperature if temperature is None
               else tf.stop_gradient(tf.cast(temperature, tf.float32)))
        global_batch = tf.shape(image_all)[0]
        negatives = _not_self_mask(tf.shape(image)[0], global_batch)  # [b, B]
        num_negatives = tf.cast(global_batch, tf.float32) - 1.0
        positive = tf.reduce_sum(image * text, axis=1)
        gamma = tf.convert_to_tensor(self.current_gamma.value)
        loss_i, log_u_i, correct_i = _sogclr_direction(
            tf.matmul(image, text_all, transpose_b=True), negatives, positive,
            self.image_u_table.read(index), gamma, tau, num_negatives)
        loss_t, log_u_t, correct_t = _sogclr_direction(
            tf.matmul(text, image_all, transpose_b=True), negatives, positive,
            self.text_u_table.read(index), gamma, tau, num_negatives)
        loss = tf.reduce_mean(loss_i + loss_t)
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

    def visited_fraction(self):
        """Fraction of pairs visited so far (reads the image table)."""
        return self.image_u_table.visited_fraction()


def _nt_xent(z1, z2, temperature, normalize):
    """SimCLR's NT-Xent: mean over local anchors of both directions, and accuracy."""
    z1 = _normalize(z1, normalize)
    z2 = _normalize(z2, normalize)
    z1_all = distribute.cross_replica_concat(z1)
    z2_all = distribute.cross_replica_concat(z2)
    not_self = _not_self_mask(tf.shape(z1)[0], tf.shape(z1_all)[0])
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
    z1, z2, _ = _check_pair(z1, z2, None, ("z1", "z2", "index"))
    return _nt_xent(z1, z2, temperature, normalize)[0]


@keras.saving.register_keras_serializable(package="tf_sogclr")
class NTXentLoss(keras.layers.Layer):
    """NT-Xent as a layer with the interface of `GlobalContrastiveLoss` (index unused).

    Lets a model switch between SogCLR and the SimCLR control by argument; it has no table,
    and its `objective` metric is the NT-Xent loss itself.
    """

    def __init__(self, temperature=0.1, normalize=True, **kwargs):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.built = True

    def call(self, z1, z2, index=None, return_metrics=False):
        z1, z2, _ = _check_pair(z1, z2, index, ("z1", "z2", "index"))
        loss, accuracy = _nt_xent(z1, z2, self.temperature, self.normalize)
        if not return_metrics:
            return loss
        accept = tf.logical_and(tf.reduce_all(tf.math.is_finite(z1)),
                                tf.reduce_all(tf.math.is_finite(z2)))
        return loss, {"objective": loss, "contrastive_accuracy": accuracy,
                      "input_ok": tf.cast(accept, tf.float32)}

    def set_epoch(self, epoch):
        """No schedule: present so training loops treat every loss layer alike."""
        del epoch

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, normalize=self.normalize)
        return config
