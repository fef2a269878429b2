"""The base of every contrastive pretraining model: one guarded train step for all modalities.

`ContrastiveModel` owns what the unimodal `sogclr_model.SogCLRModel` and the image-text
`dual_encoder.DualEncoderModel` share: the snapshot of the statistics a forward pass writes, the
gradient tape, the replica and loss scaling, the guarded update (`step_guard`: a step with a
non-finite term or an index outside the u-table is not applied), the metric trackers,
`training_logs` and weight decay. A subclass says only how a batch becomes the loss layer's
inputs and which extra loss terms it adds (`compute_terms`), which layers write statistics in
training mode (`statistics_layers`) and what it scores after a good step (`track_step`).

The interface the training loop (`training.loop.run_schedule`) relies on, on every model:
`train_step_with_diagnostics`, `training_logs`, `NONFINITE_TERMS` and `loss_layer` (with
`set_epoch`, `schedule_logs`, `table_estimates`, `metric_names` and `num_examples`; see
`losses`).
"""

import dataclasses

import keras
import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.training import step_guard

# Trackers every contrastive model reports, in this order.
CONTRASTIVE_METRICS = ("contrastive_loss", "objective", "contrastive_accuracy",
                       "weight_decay_loss")


@dataclasses.dataclass
class StepTerms:
    """What `compute_terms` returns for one batch (inside the gradient tape).

    loss_inputs: the tensors given to the loss layer (checked first for non-finite values).
    contrastive: the loss layer's scalar loss; stats: its metrics ("objective",
      "contrastive_accuracy", "input_ok", ...).
    extra: {term name: scalar} added to the loss, in `NONFINITE_TERMS` order.
    outputs: anything `track_step` needs (logits, labels), not checked.
    """

    loss_inputs: list
    contrastive: tf.Tensor
    stats: dict
    extra: dict
    outputs: dict = dataclasses.field(default_factory=dict)


class ContrastiveModel(keras.Model):
    """A Keras model trained by one guarded contrastive step (module docstring).

    Subclasses set `NONFINITE_TERMS`: (name of the loss inputs, "contrastive_loss", the extra
    terms of `compute_terms` in order, "weight_decay", "gradients"), what a step's
    diagnostics report on.

    Args:
      loss_layer: a contrastive loss layer of `tf_sogclr.losses` (a global loss or a control).
      weight_decay: the L2 weight decay coefficient (>= 0); `weight_decay_loss` says what
        goes through the loss.
    """

    NONFINITE_TERMS = ("projections", "contrastive_loss", "weight_decay", "gradients")

    def __init__(self, loss_layer, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        terms = self.NONFINITE_TERMS
        if terms[1] != "contrastive_loss" or terms[-2:] != ("weight_decay", "gradients"):
            raise ValueError(f"{type(self).__name__}.NONFINITE_TERMS must be (inputs, "
                             f"'contrastive_loss', ..., 'weight_decay', 'gradients'), got {terms}.")
        self.loss_layer = loss_layer
        self.weight_decay = float(weight_decay)
        # The standard metrics, then the loss layer's own (individual temperatures' stats).
        self._trackers = {name: keras.metrics.Mean(name=name)
                          for name in CONTRASTIVE_METRICS + tuple(loss_layer.metric_names)}
        # Steps whose update was skipped (non-finite term or index outside the u-table), and
        # those with a non-finite term; each counted once per global step, not per replica.
        self._trackers["bad_steps"] = keras.metrics.Sum(name="bad_steps")
        self._trackers["nonfinite_steps"] = keras.metrics.Sum(name="nonfinite_steps")

    @property
    def extra_terms(self):
        """Names of the loss terms beyond the contrastive loss and weight decay."""
        return self.NONFINITE_TERMS[2:-2]

    # ------------------------------------------------------------------ what subclasses say

    def statistics_layers(self):
        """The layers whose non-trainable variables a training-mode forward pass writes."""
        raise NotImplementedError

    def compute_terms(self, data):
        """One batch -> `StepTerms`, inside the gradient tape (training mode)."""
        raise NotImplementedError

    def track_step(self, terms, ok):
        """Updates the subclass's own metrics after the guarded update (`ok`: applied)."""
        del terms, ok

    def weight_decay_loss(self):
        """The weight-decay term added to the loss (float32 scalar); 0 by default."""
        return tf.constant(0.0)

    def channel_checked_encoder(self):
        """The image encoder whose first convolution's input channels a checkpoint must
        match before it is restored (`training.checkpoints.check_checkpoint_fits`), or None."""
        return None

    # ------------------------------------------------------------------ the shared step

    def train_step(self, data):
        """One guarded contrastive step; returns `training_logs()`."""
        return self.train_step_with_diagnostics(data)[0]

    def train_step_with_diagnostics(self, data):
        """`train_step`, also returning what went wrong in it, identical on all replicas.

        Returns `(logs, diagnostics)`; diagnostics are float32: "nonfinite_terms" `[T]`, 1.0
        for each term of `NONFINITE_TERMS` that was non-finite on some replica;
        "index_out_of_range" (an index outside the u-table); "skipped" (not applied).
        """
        statistics = step_guard.written_statistics(*self.statistics_layers())
        saved = step_guard.snapshot(statistics)  # Put back if the step turns out bad.
        with tf.GradientTape() as tape:
            terms = self.compute_terms(data)
            if tuple(terms.extra) != self.extra_terms:
                raise ValueError(f"compute_terms gave extra terms {tuple(terms.extra)}, "
                                 f"expected {self.extra_terms}.")
            total = terms.contrastive
            for value in terms.extra.values():
                total += value
            decay = self.weight_decay_loss()
            total += decay
            # Gradients are summed over replicas: scale so the sum is the global mean's.
            scaled = total / distribute.num_replicas_in_sync()
            scaled = self.optimizer.scale_loss(scaled)  # Loss scaling under mixed_float16.
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        groups = [terms.loss_inputs, [terms.contrastive],
                  *[[value] for value in terms.extra.values()], [decay]]
        ok, report = step_guard.guarded_update(
            self.optimizer, gradients, variables, groups, terms.stats["input_ok"], statistics,
            saved, self._trackers,
            {"contrastive_loss": terms.contrastive, "objective": terms.stats["objective"],
             "contrastive_accuracy": terms.stats["contrastive_accuracy"],
             "weight_decay_loss": decay,
             **{name: terms.stats[name] for name in self.loss_layer.metric_names}})
        self.track_step(terms, ok)
        return self.training_logs(), report

    def training_logs(self):
        """Training metric results plus the learning rate and the loss layer's schedule
        (gamma), as float32 scalars."""
        logs = {m.name: m.result() for m in self.training_metrics()}
        logs["learning_rate"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        logs.update(self.loss_layer.schedule_logs())
        return logs

    def training_metrics(self):
        """The metrics `training_logs` reports (subclasses add theirs)."""
        return list(self._trackers.values())
