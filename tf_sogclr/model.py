"""The SogCLR Keras model: encoder, projection head, contrastive loss layer, linear head.

`SogCLRModel.train_step` takes a batch `{"view1", "view2", "index", "label"}` and makes one
contrastive step: both views through the encoder in one pass (batch norm sees both, as in
SimCLR), projections into the loss layer (SogCLR or NT-Xent: it gathers across replicas and
writes its u rows), and, in the same step, a linear head trained on
`stop_gradient(features)` (linear evaluation while pretraining). `test_step` scores the
linear head on `{"image", "label"}`. Both work under `model.fit` / `evaluate` and under the
multi-step loop of `tf_sogclr.train`, with any tf.distribute strategy.

Non-finite values never reach the weights: every step checks the terms of `NONFINITE_TERMS`
(and that every example index lies inside the u-table), agrees on the verdict across
replicas, and applies the optimiser update only when all are fine (`tf_sogclr.step_guard`).
A skipped step still advances `optimizer.iterations` (it counts steps taken, applied or not,
so the learning-rate schedule, checkpoint numbers and data position stay aligned) and is
counted in the `bad_steps` metric (`nonfinite_steps` counts those with a non-finite term).
The u-table is not written by a step whose projections or indices are bad (`losses`). Under
mixed_float16 the loss-scale optimiser owns non-finite *gradients* (it skips them and lowers
the scale, as usual); the losses and projections are still checked here.
"""

import keras
import tensorflow as tf

from tf_sogclr import distribute, optim, resnet, step_guard

PROJECTION_HEAD_MODES = ("none", "linear", "nonlinear")
# What `train_step_with_diagnostics` checks for non-finite values, in this order.
NONFINITE_TERMS = ("projections", "contrastive_loss", "linear_loss", "weight_decay", "gradients")
LINEAR_HEAD_NAME = "head_supervised"  # LARS leaves it out of decay and adaptation (SimCLR).


@keras.saving.register_keras_serializable(package="tf_sogclr")
class ProjectionHead(keras.layers.Layer):
    """SimCLR's projection head: features `[b, f]` -> projections `[b, proj_out_dim]`.

    "nonlinear": `num_proj_layers` dense + batch norm layers, ReLU between them; hidden
    layers keep the input width, the last has `proj_out_dim` units and no bias or beta.
    "linear": one such last layer. "none": identity. `call(..., return_hiddens=True)` also
    returns the list [features, hidden 1, ...] that SimCLR's `ft_proj_selector` indexes.
    """

    def __init__(self, mode="nonlinear", proj_out_dim=128, num_proj_layers=2,
                 batch_norm_decay=0.9, global_bn=False, **kwargs):
        if mode not in PROJECTION_HEAD_MODES:
            raise ValueError(
                f"proj_head_mode must be one of {PROJECTION_HEAD_MODES}, got {mode!r}.")
        if mode != "none" and not (isinstance(proj_out_dim, int) and proj_out_dim >= 1):
            raise ValueError(f"proj_out_dim must be an integer >= 1, got {proj_out_dim!r}.")
        if mode == "nonlinear" and not (isinstance(num_proj_layers, int) and num_proj_layers >= 1):
            raise ValueError(f"num_proj_layers must be an integer >= 1, got {num_proj_layers!r}.")
        super().__init__(**kwargs)
        self.mode = mode
        self.proj_out_dim = proj_out_dim
        self.num_proj_layers = num_proj_layers if mode == "nonlinear" else int(mode == "linear")
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = global_bn

    def build(self, input_shape):
        width = int(input_shape[-1])
        for j in range(self.num_proj_layers):
            last = j == self.num_proj_layers - 1
            dense = keras.layers.Dense(
                self.proj_out_dim if last else width, use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                name=f"projection_dense_{j}")
            norm = resnet.batch_norm_layer(f"projection_batch_norm_{j}", self.batch_norm_decay,
                                           self.global_bn, center=not last)
            dense.build(input_shape if j == 0 else (None, width))
            norm.build((None, self.proj_out_dim if last else width))
            # One attribute per layer: Keras 3 hides layers kept in lists from tf.train.Checkpoint.
            setattr(self, f"dense_{j}", dense)
            setattr(self, f"batch_norm_{j}", norm)

    def call(self, features, training=False, return_hiddens=False):
        hiddens = [features]
        x = features
        for j in range(self.num_proj_layers):
            x = getattr(self, f"batch_norm_{j}")(getattr(self, f"dense_{j}")(x), training=training)
            if j != self.num_proj_layers - 1:
                x = tf.nn.relu(x)
            hiddens.append(x)
        return (x, hiddens) if return_hiddens else x

    def compute_output_shape(self, input_shape):
        return input_shape if self.mode == "none" else (*input_shape[:-1], self.proj_out_dim)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, proj_out_dim=self.proj_out_dim,
                      num_proj_layers=self.num_proj_layers,
                      batch_norm_decay=self.batch_norm_decay, global_bn=self.global_bn)
        return config


class SogCLRModel(keras.Model):
    """Contrastive pretraining model with linear evaluation while pretraining.

    Args:
      encoder: a Keras model, images `[b, H, W, C]` in [0, 1] -> features `[b, f]`.
      projection_head: e.g. `ProjectionHead(...)`, features -> projections `[b, d]`.
      loss_layer: `losses.GlobalContrastiveLoss` (SogCLR) or `losses.NTXentLoss` (SimCLR).
      num_classes: classes of the linear head; None for no linear evaluation.
      weight_decay: L2 weight decay as SimCLR applies it: inside LARS (only the linear head
        is decayed through the loss), or through the loss for other optimisers (every
        variable but batch norm).
    """

    NONFINITE_TERMS = NONFINITE_TERMS  # What the diagnostics of a step report on.

    def __init__(self, encoder, projection_head, loss_layer, num_classes=None,
                 weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}.")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        self.encoder = encoder
        self.projection_head = projection_head
        self.loss_layer = loss_layer
        self.num_classes = num_classes
        self.weight_decay = float(weight_decay)
        self.linear_head = None
        if num_classes is not None:
            # float32 under mixed precision (Keras's advice for the output layer): its
            # logits feed a softmax loss and top-k metrics, which need float32.
            self.linear_head = keras.layers.Dense(
                num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                dtype="float32", name=LINEAR_HEAD_NAME)
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("contrastive_loss", "objective", "contrastive_accuracy",
                         "linear_loss", "weight_decay_loss")
        }
        # Steps whose update was skipped (non-finite term or index outside the u-table), and
        # those with a non-finite term; each counted once per global step, not per replica.
        self._trackers["bad_steps"] = keras.metrics.Sum(name="bad_steps")
        self._trackers["nonfinite_steps"] = keras.metrics.Sum(name="nonfinite_steps")
        self._top1 = keras.metrics.SparseCategoricalAccuracy(name="linear_top1")
        self._top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="linear_top5")

    def build(self, input_shape):
        """Builds every part for images of `input_shape` `[b, H, W, C]` (no data needed)."""
        features_shape = self.encoder.compute_output_shape(input_shape)
        self.projection_head.build(features_shape)
        if self.linear_head is not None:
            self.linear_head.build(features_shape)
        self.built = True

    @property
    def metrics(self):
        extra = [self._top1, self._top5] if self.linear_head is not None else []
        return list(self._trackers.values()) + extra

    def call(self, images, training=False):
        """Images `[b, H, W, C]` -> {"features", "projection"[, "logits"]}.

        A batch dict is accepted too (its "image", else "view1"): Keras calls the model on
        whole batches when it builds symbolically under a distribution strategy.
        """
        if isinstance(images, dict):
            images = images["image"] if "image" in images else images["view1"]
        features = self.encoder(images, training=training)
        outputs = {"features": features,
                   "projection": self.projection_head(features, training=training)}
        if self.linear_head is not None:
            outputs["logits"] = self.linear_head(features)
        return outputs

    def _weight_decay_loss(self):
        if self.weight_decay == 0.0:
            return tf.constant(0.0)
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        name = "lars" if isinstance(optimizer, optim.LARS) else "momentum"
        return optim.weight_decay_loss(name, self.trainable_variables, self.weight_decay)

    def _linear_loss(self, logits, labels):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels, tf.cast(logits, tf.float32), from_logits=True))

    def train_step(self, data):
        """One step on `{"view1", "view2": [b, H, W, C], "index": [b], "label": [b]}`."""
        return self.train_step_with_diagnostics(data)[0]

    def train_step_with_diagnostics(self, data):
        """`train_step`, also returning what went wrong in this step, identical on all replicas.

        Returns `(logs, diagnostics)`; diagnostics are float32: "nonfinite_terms" `[T]`, 1.0 for
        each term of `NONFINITE_TERMS` that was non-finite on some replica; "index_out_of_range"
        (an index outside the u-table); "skipped" (the update was not applied).
        """
        views = tf.concat([data["view1"], data["view2"]], axis=0)
        statistics = step_guard.written_statistics(self.encoder, self.projection_head)
        saved = step_guard.snapshot(statistics)  # Put back if the step turns out bad.
        with tf.GradientTape() as tape:
            features = self.encoder(views, training=True)
            projection = self.projection_head(features, training=True)
            z1, z2 = tf.split(projection, 2, axis=0)
            contrastive, stats = self.loss_layer(z1, z2, data["index"], return_metrics=True)
            total = contrastive
            linear = tf.constant(0.0)
            if self.linear_head is not None:
                labels = tf.concat([data["label"], data["label"]], axis=0)
                logits = self.linear_head(tf.stop_gradient(features))
                linear = self._linear_loss(logits, labels)
                total += linear
            decay = self._weight_decay_loss()
            total += decay
            # Gradients are summed over replicas: scale so the sum is the global mean's.
            scaled = total / distribute.num_replicas_in_sync()
            scaled = self.optimizer.scale_loss(scaled)  # Loss scaling under mixed_float16.
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)

        ok, report = step_guard.guarded_update(
            self.optimizer, gradients, variables, [[projection], [contrastive], [linear], [decay]],
            stats["input_ok"], statistics, saved, self._trackers,
            {"contrastive_loss": contrastive, "objective": stats["objective"],
             "contrastive_accuracy": stats["contrastive_accuracy"], "weight_decay_loss": decay})
        if self.linear_head is not None:
            step_guard.track_if(self._trackers["linear_loss"], linear, ok)
            weight = tf.fill(tf.shape(labels), tf.cast(ok, tf.float32))
            self._top1.update_state(labels, tf.where(ok, logits, tf.zeros_like(logits)),
                                    sample_weight=weight)
        return self.training_logs(), report

    def training_logs(self):
        """Metric results plus the current learning rate and gamma (scalars)."""
        logs = {m.name: m.result() for m in self.metrics if m is not self._top5}
        logs["learning_rate"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        gamma = getattr(self.loss_layer, "current_gamma", None)
        if gamma is not None:
            logs["gamma"] = tf.convert_to_tensor(gamma.value)
        return logs

    def test_step(self, data):
        """Linear-head scores on `{"image": [b, H, W, C], "label": [b]}`."""
        if self.linear_head is None:
            raise ValueError("test_step needs a linear head: build the model with num_classes.")
        logits = self.linear_head(self.encoder(data["image"], training=False))
        self._trackers["linear_loss"].update_state(self._linear_loss(logits, data["label"]))
        self._top1.update_state(data["label"], logits)
        self._top5.update_state(data["label"], logits)
        return {m.name: m.result() for m in (self._trackers["linear_loss"], self._top1, self._top5)}

