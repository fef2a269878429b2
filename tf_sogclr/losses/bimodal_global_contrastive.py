"""SogCLR's two-way global contrastive loss for image-text pairs (docs/algorithm.md,
"Image-text"): the unimodal loss's step (`global_contrastive.sogclr_direction`) once per
direction, image anchors against the global batch's texts and text anchors against its
images, each with its own u-table (and its own temperature table with individual
temperatures).
"""

import math

import keras
import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.config import TEMPERATURE_RHO
from tf_sogclr.losses import global_contrastive, inputs, local_backward
from tf_sogclr.losses.u_table import UTable, log_add_exp


@keras.saving.register_keras_serializable(package="tf_sogclr")
class BimodalGlobalContrastiveLoss(global_contrastive.GlobalContrastiveBase):
    """Two-way global contrastive loss for image-text pairs (docs/algorithm.md, "Image-text").

    `loss_fn(image_emb, text_emb, index)`: `[b, d]` embeddings of paired images and texts and
    int pair indices `[b]`. Table `image_u_table` holds u^I (image anchors against the B-1
    other texts), `text_u_table` u^T (text anchors against the other images). Returns the
    mean over local pairs of loss^I + loss^T (over tau with `gradient_scale="infonce"`);
    metrics and guarantees as
    `GlobalContrastiveLoss`, plus `temperature_gradient`: the estimate of d objective / d tau,
    `mean_i [log u^I_i + log u^T_i - sum_j (p^I_ij s^I_ij + p^T_ij s^T_ij) / (tau (B - 1))]`.
    `temperature` (optional scalar, e.g. a learnable tau's value) overrides the constructor's
    for this call; no gradient flows to it through the loss. With `individual_temperatures`
    (`GlobalContrastiveLoss`'s argument) each direction has its own per-pair table, as in
    LibAUC and iSogCLR: `image_temperature_table` (image anchors) and
    `text_temperature_table` (text anchors); `temperature` must then be None.
    """

    def __init__(self, num_examples, temperature=0.1, gamma=0.9, gamma_schedule="constant",
                 gamma_decay_epochs=None, normalize=True, gradient_scale="infonce",
                 individual_temperatures=None, temperature_rho=TEMPERATURE_RHO["bimodal"],
                 collective_free_backward=False, **kwargs):
        super().__init__(num_examples, temperature, gamma, gamma_schedule, gamma_decay_epochs,
                         normalize, gradient_scale, individual_temperatures, temperature_rho,
                         collective_free_backward, **kwargs)
        self.image_u_table = UTable(self.num_examples, name="image_u_table")
        self.text_u_table = UTable(self.num_examples, name="text_u_table")
        self.image_temperature_table = self._temperature_table("image_temperature_table")
        self.text_temperature_table = self._temperature_table("text_temperature_table")
        self.built = True

    def call(self, image_emb, text_emb, index, return_metrics=False, temperature=None):
        image, text, index, image_all, text_all, index_all, accept = self._prepare(
            image_emb, text_emb, index, ("image_emb", "text_emb", "index"))
        individual = self.individual_temperatures is not None
        if individual and temperature is not None:
            raise ValueError("temperature must be None with individual_temperatures: each "
                             "pair's tau comes from the loss's own tables.")
        if individual:
            tau_i_all = self.image_temperature_table.read(index_all)
            tau_t_all = self.text_temperature_table.read(index_all)
            tau_i = self.image_temperature_table.read(index)
            tau_t = self.text_temperature_table.read(index)
        else:
            tau_i = tau_t = tau_i_all = tau_t_all = (
                self.temperature if temperature is None
                else tf.stop_gradient(tf.cast(temperature, tf.float32)))
        batch = tf.shape(image)[0]
        global_batch = tf.shape(image_all)[0]
        negatives = inputs.not_self_mask(tf.shape(image)[0], global_batch)  # [b, B]
        num_negatives = tf.cast(global_batch, tf.float32) - 1.0
        positive = tf.reduce_sum(image * text, axis=1)
        gamma = tf.convert_to_tensor(self.current_gamma.value)
        loss_i, log_u_i, correct_i, tau_gradient_i = global_contrastive.sogclr_direction(
            tf.matmul(image, text_all, transpose_b=True), negatives, positive,
            self.image_u_table.read(index), gamma, tau_i, num_negatives)
        loss_t, log_u_t, correct_t, tau_gradient_t = global_contrastive.sogclr_direction(
            tf.matmul(text, image_all, transpose_b=True), negatives, positive,
            self.text_u_table.read(index), gamma, tau_t, num_negatives)
        loss = self._scaled(loss_i, tau_i) + self._scaled(loss_t, tau_t)
        # Per-anchor scalars of the global batch, in one all-gather without gradient.
        log_u_i_all, log_u_t_all, tau_gradient_i_all, tau_gradient_t_all = tf.unstack(
            distribute.cross_replica_concat(tf.stop_gradient(tf.stack(
                [log_u_i, log_u_t, tau_gradient_i, tau_gradient_t], axis=1))), num=4, axis=1)
        if self.collective_free_backward:
            in_sum = tf.not_equal(tf.range(global_batch)[:, None],
                                  local_backward.local_rows(batch)[None, :])  # [B, b]
            remote = (
                local_backward.remote_term(image_all, text, in_sum, log_u_i_all, tau_i_all,
                                           self._remote_scale(tau_i_all, num_negatives))
                + local_backward.remote_term(text_all, image, in_sum, log_u_t_all, tau_t_all,
                                             self._remote_scale(tau_t_all, num_negatives)))
            loss = local_backward.with_remote_gradient(loss, remote, batch)
        self.image_u_table.write(index_all, log_u_i_all, accept)
        self.text_u_table.write(index_all, log_u_t_all, accept)
        if individual:
            self._update_temperatures(self.image_temperature_table, index_all,
                                      tau_gradient_i_all, accept)
            self._update_temperatures(self.text_temperature_table, index_all,
                                      tau_gradient_t_all, accept)
        if not return_metrics:
            return loss
        metrics = {
            "objective": tf.reduce_mean(tau_i * log_u_i + tau_t * log_u_t - 2.0 * positive),
            "contrastive_accuracy": tf.reduce_mean(
                tf.cast(tf.concat([correct_i, correct_t], 0), tf.float32)),
            "input_ok": tf.cast(accept, tf.float32),
            "temperature_gradient": tf.reduce_mean(tau_gradient_i + tau_gradient_t),
            **global_contrastive.u_statistics(log_add_exp(log_u_i, log_u_t) - math.log(2.0)),
        }
        if individual:  # the global batch's, read before this step's update
            metrics.update(global_contrastive.temperature_statistics(tf.concat([tau_i_all, tau_t_all], 0)))
        return loss, metrics

    def estimates(self):
        """Both tables in linear scale: `{"image": [N], "text": [N]}`, 0 where never visited."""
        return {"image": self.image_u_table.estimates(), "text": self.text_u_table.estimates()}

    def table_estimates(self):
        """{summary name: `[num_examples]`} of every table (summaries): u in linear scale,
        and the individual temperatures when there are any."""
        tables = {f"u_table_{name}": values for name, values in self.estimates().items()}
        if self.individual_temperatures is not None:
            tables["temperature_table_image"] = self.image_temperature_table.estimates()
            tables["temperature_table_text"] = self.text_temperature_table.estimates()
        return tables

    def visited_fraction(self):
        """Fraction of pairs visited so far (reads the image table)."""
        return self.image_u_table.visited_fraction()
