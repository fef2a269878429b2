"""SogCLR's global contrastive loss (ICML 2022), and what the image-text loss shares with it.

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
from tf_sogclr.config import GAMMA_SCHEDULES, GRADIENT_SCALES, TEMPERATURE_RHO
from tf_sogclr.losses import inputs, local_backward
from tf_sogclr.losses.temperature_table import TemperatureTable
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


def sogclr_direction(sims, negatives, positive, log_u_old, gamma, temperature, num_negatives):
    """The step of docs/algorithm.md ("The step") for a batch of anchors: one direction's,
    or the unimodal loss's two directions stacked as `2b` rows.

    sims: raw similarities `[b, K]` (differentiable); negatives: bool `[b, K]`;
    positive: `[b]`; log_u_old: `[b]`; temperature: a scalar or one tau per anchor `[b]`.
    Returns per-anchor surrogate loss `[b]`, the new log u `[b]`, whether the positive
    outranks every negative `[b]`, and the estimate of dF_i / dtau_i without rho `[b]`:
    `log u_i - sum_j p_ij s_ij / (tau_i K)` (docs/algorithm.md, "Individual temperatures").
    """
    tau = tf.convert_to_tensor(temperature, tf.float32)
    tau_column = tau[:, None] if tau.shape.rank == 1 else tau
    masked = tf.where(negatives, tf.stop_gradient(sims) / tau_column, -np.inf)
    # One exp of [b, K], shared by log g and the weights (a second one costs ~10% under XLA).
    row_max = tf.reduce_max(masked, axis=1)
    shifted = tf.exp(masked - row_max[:, None])  # exp(s / tau - max); 0 off the negatives.
    log_g = row_max + tf.math.log(tf.reduce_sum(shifted, axis=1)) - tf.math.log(num_negatives)
    log_u = moving_average_log_u(log_u_old, log_g, gamma)
    weights = shifted * tf.exp(row_max - log_u)[:, None]  # p[i, j] = exp(s / tau - log u).
    weighted = tf.reduce_sum(weights * sims, axis=1) / num_negatives
    loss = -positive + weighted
    correct = positive / tau > row_max
    temperature_gradient = log_u - tf.stop_gradient(weighted) / tau
    return loss, log_u, correct, temperature_gradient


def u_statistics(log_u):
    """log of the mean, min and max of u for a `[b]` batch of log u: in log scale, since u
    itself overflows float32 at CLIP temperatures (e^100 at tau = 0.01)."""
    count = tf.cast(tf.shape(log_u)[0], tf.float32)
    return {
        "log_u_mean": tf.reduce_logsumexp(log_u) - tf.math.log(count),
        "log_u_min": tf.reduce_min(log_u),
        "log_u_max": tf.reduce_max(log_u),
    }


def temperature_statistics(tau):
    """Mean, min and max of a `[B]` global batch of individual temperatures (the same on
    every replica)."""
    return {"temperature_mean": tf.reduce_mean(tau), "temperature_min": tf.reduce_min(tau),
            "temperature_max": tf.reduce_max(tau)}


class GlobalContrastiveBase(keras.layers.Layer):
    """Hyper-parameters, gamma variable and schedule shared by the global contrastive losses
    (this module's and `bimodal_global_contrastive`'s), and the individual temperatures'
    tables (`TemperatureTable`) when asked for."""

    def __init__(
        self,
        num_examples,
        temperature=0.1,
        gamma=0.9,
        gamma_schedule="constant",
        gamma_decay_epochs=None,
        normalize=True,
        gradient_scale="infonce",
        individual_temperatures=None,
        temperature_rho=TEMPERATURE_RHO["unimodal"],
        collective_free_backward=False,
        **kwargs,
    ):
        _validate_hyperparameters(
            num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs, gradient_scale
        )
        if individual_temperatures is not None and not isinstance(individual_temperatures, dict):
            raise ValueError("individual_temperatures must be None or a dict of "
                             "TemperatureTable arguments (temperature_range, learning_rate, "
                             f"momentum, gradient_clip), got {individual_temperatures!r}.")
        if not 0 <= temperature_rho < float("inf"):
            raise ValueError(f"temperature_rho must be a number >= 0, got {temperature_rho!r}.")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_examples = int(num_examples)
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.gamma_schedule = gamma_schedule
        self.gamma_decay_epochs = gamma_decay_epochs
        self.normalize = bool(normalize)
        self.gradient_scale = gradient_scale
        self.individual_temperatures = None
        if individual_temperatures is not None:  # a serialised tuple may come back a list
            self.individual_temperatures = {
                key: tuple(value) if key == "temperature_range" else value
                for key, value in individual_temperatures.items()}
        self.temperature_rho = float(temperature_rho)
        self.collective_free_backward = bool(collective_free_backward)
        self.current_gamma = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.gamma_for_epoch(0)),
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name="current_gamma",
        )

    @property
    def metric_names(self):
        """Metrics beyond the standard ones that `return_metrics` gives (models track them):
        the batch's individual temperatures' mean, min and max when there are any."""
        if self.individual_temperatures is None:
            return ()
        return ("temperature_mean", "temperature_min", "temperature_max")

    def _temperature_table(self, name):
        """A `TemperatureTable` starting at `temperature`, or None for one global tau."""
        if self.individual_temperatures is None:
            return None
        return TemperatureTable(self.num_examples, initial_temperature=self.temperature,
                                name=name, **self.individual_temperatures)

    def gamma_for_epoch(self, epoch):
        """The schedule's gamma for `epoch` (0-based), a Python float."""
        return gamma_for_epoch(epoch, self.gamma, self.gamma_schedule, self.gamma_decay_epochs)

    def set_epoch(self, epoch):
        """Sets the gamma used by the next steps; call at the start of every epoch."""
        self.current_gamma.assign(self.gamma_for_epoch(epoch))

    def schedule_logs(self):
        """{"gamma": float32 scalar}: the schedule's current value, for training logs."""
        return {"gamma": tf.convert_to_tensor(self.current_gamma.value)}

    def _scaled(self, per_anchor, temperature):
        """The mean of per-anchor surrogates `[b]` as the loss: each divided by its anchor's
        tau for "infonce" (InfoNCE's gradient at that tau), as is for "libauc" (the
        authors' value; gradient tau times smaller). `temperature`: scalar or `[b]`."""
        if self.gradient_scale == "infonce":
            per_anchor = per_anchor / temperature
        return tf.reduce_mean(per_anchor)

    def _update_temperatures(self, table, index_all, gradient_all, accept):
        """Steps `table`'s rows of the global batch with the anchors' dF/dtau estimates
        `[B]` (without rho; added here)."""
        table.update(index_all, gradient_all + self.temperature_rho, accept)

    def _remote_scale(self, temperature, num_negatives):
        """Each anchor's factor in the remote term: 1/K, over tau for "infonce"."""
        scale = 1.0 / num_negatives
        return scale / temperature if self.gradient_scale == "infonce" else scale

    def _prepare(self, z1, z2, index, names):
        """Checks, normalises and gathers; returns local and global tensors and accept flag."""
        z1, z2, index = inputs.check_pair(z1, z2, index, names)
        checks = inputs.check_index_range(index, self.num_examples, names[2])
        with tf.control_dependencies(checks):
            index = tf.identity(index)
        z1 = inputs.normalize_projections(z1, self.normalize)
        z2 = inputs.normalize_projections(z2, self.normalize)
        z1_all = local_backward.gather(z1, self.collective_free_backward)
        z2_all = local_backward.gather(z2, self.collective_free_backward)
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
            individual_temperatures=self.individual_temperatures,
            temperature_rho=self.temperature_rho,
            collective_free_backward=self.collective_free_backward,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_sogclr")
class GlobalContrastiveLoss(GlobalContrastiveBase):
    """SogCLR's unimodal global contrastive loss with its u-table (docs/algorithm.md).

    `loss_fn(z1, z2, index)`: projections of two views `[b, d]` (any float dtype) and int
    example indices `[b]` in [0, num_examples); returns the scalar surrogate loss, the mean
    over local anchors of both directions (over tau with `gradient_scale="infonce"`), and
    writes the global batch's rows of the table.
    With `return_metrics=True` it returns `(loss, metrics)`; metrics are float32 scalars:
    `objective` (estimate of F), `log_u_mean`, `log_u_min`, `log_u_max` (log of u's mean,
    min and max over the batch), `contrastive_accuracy`,
    `input_ok` (and `metric_names`' temperature statistics with individual temperatures).
    Under a strategy, divide the loss by the number of replicas before taking gradients (as
    Keras does) so that summed gradients equal the global-batch gradient.

    Args:
      num_examples: rows of the table, the size of the training split (>= 1).
      temperature: tau > 0 (with individual temperatures, every tau_i's starting value).
      gamma: moving-average weight in (0, 1]; with `gamma_schedule="cosine"` the value
        reached after `gamma_decay_epochs` (LibAUC's gamma_min).
      gamma_schedule: "constant" or "cosine"; `set_epoch` applies it.
      normalize: L2-normalise projections (SimCLR's `hidden_norm`).
      gradient_scale: "infonce" (the surrogate over tau: the gradient of NT-Xent / InfoNCE
        at the same tau) or "libauc" (the authors' surrogate, gradient tau times smaller).
      individual_temperatures: None (one global tau), or a dict of `TemperatureTable`
        arguments: iSogCLR's per-example tau_i, one per example for both views, learned
        with `temperature_rho` (docs/algorithm.md, "Individual temperatures").
      temperature_rho: iSogCLR's rho (LibAUC's unimodal default 0.3).
    """

    def __init__(self, num_examples, temperature=0.1, gamma=0.9, gamma_schedule="constant",
                 gamma_decay_epochs=None, normalize=True, gradient_scale="infonce",
                 individual_temperatures=None, temperature_rho=TEMPERATURE_RHO["unimodal"],
                 collective_free_backward=False, **kwargs):
        super().__init__(num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs,
                         normalize, gradient_scale, individual_temperatures, temperature_rho,
                         collective_free_backward, **kwargs)
        self.u_table = UTable(self.num_examples, name="u_table")
        self.temperature_table = self._temperature_table("temperature_table")
        self.built = True

    def call(self, z1, z2, index, return_metrics=False):
        z1, z2, index, z1_all, z2_all, index_all, accept = self._prepare(
            z1, z2, index, ("z1", "z2", "index"))
        batch = tf.shape(z1)[0]
        global_batch = tf.shape(z1_all)[0]
        not_self = inputs.not_self_mask(batch, global_batch)
        num_negatives = 2.0 * (tf.cast(global_batch, tf.float32) - 1.0)
        positive = tf.reduce_sum(z1 * z2, axis=1)
        log_u_old = self.u_table.read(index)
        tau = self.temperature
        if self.temperature_table is not None:
            tau_all = self.temperature_table.read(index_all)  # metrics, remote term
            tau = self.temperature_table.read(index)
        gamma = tf.convert_to_tensor(self.current_gamma.value)
        # Both directions in one pass over [2b, 2B]: anchors z1 then z2 against
        # [z1_all; z2_all]. Each anchor's negatives are every column but its own row in
        # either half (its view's self and its positive), so one mask serves both, and the
        # column order does not matter to the sums.
        sims = tf.matmul(tf.concat([z1, z2], 0), tf.concat([z1_all, z2_all], 0),
                         transpose_b=True)
        negatives = tf.tile(not_self, [2, 2])  # [2b, 2B]
        twice = lambda per_anchor: tf.concat([per_anchor, per_anchor], 0)
        both_tau = tau if isinstance(tau, float) else twice(tau)
        loss12, log_u12, correct12, tau_gradient12 = sogclr_direction(
            sims, negatives, twice(positive), twice(log_u_old), gamma, both_tau, num_negatives)
        loss1, loss2 = tf.split(loss12, 2)
        log_u1, log_u2 = tf.split(log_u12, 2)
        tau_gradient1, tau_gradient2 = tf.split(tau_gradient12, 2)
        loss = self._scaled(loss1 + loss2, tau)
        # Per-anchor scalars of the global batch, in one all-gather without gradient: the
        # table write's, the remote term's and the temperature update's.
        log_u1_all, log_u2_all, tau_gradient_all = tf.unstack(distribute.cross_replica_concat(
            tf.stop_gradient(tf.stack([log_u1, log_u2, 0.5 * (tau_gradient1 + tau_gradient2)],
                                      axis=1))), num=3, axis=1)
        if self.collective_free_backward:
            tau_anchors = self.temperature if self.temperature_table is None else tau_all
            rows = tf.tile(local_backward.local_rows(batch), [2])
            in_sum = tf.not_equal(tf.range(global_batch)[:, None], rows[None, :])  # [B, 2b]
            scale = self._remote_scale(tau_anchors, num_negatives)
            remote = (local_backward.remote_term(z1_all, tf.concat([z2, z1], 0), in_sum,
                                                 log_u1_all, tau_anchors, scale)
                      + local_backward.remote_term(z2_all, tf.concat([z1, z2], 0), in_sum,
                                                   log_u2_all, tau_anchors, scale))
            loss = local_backward.with_remote_gradient(loss, remote, batch)
        log_u = log_add_exp(log_u1, log_u2) - math.log(2.0)  # log((u1 + u2) / 2)
        self.u_table.write(index_all, log_add_exp(log_u1_all, log_u2_all) - math.log(2.0),
                           accept)
        if self.temperature_table is not None:  # one tau for both views: mean estimate
            self._update_temperatures(self.temperature_table, index_all, tau_gradient_all,
                                      accept)
        if not return_metrics:
            return loss
        metrics = {
            "objective": tf.reduce_mean(tau * (log_u1 + log_u2) - 2.0 * positive),
            "contrastive_accuracy": tf.reduce_mean(tf.cast(correct12, tf.float32)),
            "input_ok": tf.cast(accept, tf.float32),
            **u_statistics(log_u),
        }
        if self.temperature_table is not None:  # the global batch's, read before its update
            metrics.update(temperature_statistics(tau_all))
        return loss, metrics

    def estimates(self):
        """The table in linear scale, float32 `[num_examples]`, 0 where never visited."""
        return self.u_table.estimates()

    def table_estimates(self):
        """{summary name: `[num_examples]`} of every table (summaries): u in linear scale,
        and the individual temperatures when there are any."""
        tables = {"u_table": self.estimates()}
        if self.temperature_table is not None:
            tables["temperature_table"] = self.temperature_table.estimates()
        return tables

    def visited_fraction(self):
        """Fraction of training examples visited so far (reads the whole table)."""
        return self.u_table.visited_fraction()
