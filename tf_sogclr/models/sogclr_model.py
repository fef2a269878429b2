"""The unimodal SogCLR model: encoder, projection head, contrastive loss layer, linear head.

`SogCLRModel.train_step` takes a batch `{"view1", "view2", "index", "label"}` and makes one
guarded contrastive step (`models.contrastive_model`): both views through the encoder in one
pass (batch norm sees both, as in SimCLR), projections into the loss layer (SogCLR or
NT-Xent: it gathers across replicas and writes its u rows), and, in the same step, a linear
head trained on `stop_gradient(features)` (linear evaluation while pretraining). `test_step`
scores the linear head on `{"image", "label"}`. Both work under `model.fit` / `evaluate` and
under the multi-step loop of `training.loop`, with any tf.distribute strategy. Under
mixed_float16 the loss-scale optimiser owns non-finite *gradients* (it skips them and lowers
the scale, as usual); the losses and projections are still checked.
"""

import keras
import tensorflow as tf

from tf_sogclr.models import contrastive_model
from tf_sogclr.training import optim, step_guard


# What `train_step_with_diagnostics` checks for non-finite values, in this order.
NONFINITE_TERMS = ("projections", "contrastive_loss", "linear_loss", "weight_decay", "gradients")
LINEAR_HEAD_NAME = "head_supervised"  # LARS leaves it out of decay and adaptation (SimCLR).


class SogCLRModel(contrastive_model.ContrastiveModel):
    """Contrastive pretraining model with linear evaluation while pretraining.

    Args:
      encoder: a Keras model, images `[b, H, W, C]` in [0, 1] -> features `[b, f]`.
      projection_head: e.g. `ProjectionHead(...)`, features -> projections `[b, d]`.
      loss_layer: `losses.GlobalContrastiveLoss` (SogCLR) or `losses.NTXentLoss` (SimCLR).
      num_classes: classes of the linear head; None for no linear evaluation.
      weight_decay: weight decay as SimCLR applies it: inside LARS (the linear head's as
        L2 through the loss) or AdamW (decoupled, every kernel, the head's too), or as L2
        through the loss for other optimisers (every variable but batch norm).
    """

    NONFINITE_TERMS = NONFINITE_TERMS  # What the diagnostics of a step report on.

    def __init__(self, encoder, projection_head, loss_layer, num_classes=None,
                 weight_decay=0.0, **kwargs):
        if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}.")
        super().__init__(loss_layer, weight_decay=weight_decay, **kwargs)
        self.encoder = encoder
        self.projection_head = projection_head
        self.num_classes = num_classes
        self.linear_head = None
        if num_classes is not None:
            # float32 under mixed precision (Keras's advice for the output layer): its
            # logits feed a softmax loss and top-k metrics, which need float32.
            self.linear_head = keras.layers.Dense(
                num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                dtype="float32", name=LINEAR_HEAD_NAME)
        self._trackers["linear_loss"] = keras.metrics.Mean(name="linear_loss")
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

    def training_metrics(self):
        return [m for m in self.metrics if m is not self._top5]

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

    def weight_decay_loss(self):
        if self.weight_decay == 0.0:
            return tf.constant(0.0)
        return optim.weight_decay_loss(optim.optimizer_name(self.optimizer),
                                       self.trainable_variables, self.weight_decay)

    def _linear_loss(self, logits, labels):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels, tf.cast(logits, tf.float32), from_logits=True))

    def statistics_layers(self):
        return [self.encoder, self.projection_head]

    def channel_checked_encoder(self):
        return self.encoder

    def compute_terms(self, data):
        """`{"view1", "view2": [b, H, W, C], "index": [b], "label": [b]}`: both views through
        the encoder in one pass, projections into the loss layer, and the linear head on
        `stop_gradient(features)`."""
        views = tf.concat([data["view1"], data["view2"]], axis=0)
        features = self.encoder(views, training=True)
        projection = self.projection_head(features, training=True)
        z1, z2 = tf.split(projection, 2, axis=0)
        contrastive, stats = self.loss_layer(z1, z2, data["index"], return_metrics=True)
        linear, outputs = tf.constant(0.0), {}
        if self.linear_head is not None:
            labels = tf.concat([data["label"], data["label"]], axis=0)
            logits = self.linear_head(tf.stop_gradient(features))
            linear = self._linear_loss(logits, labels)
            outputs = {"labels": labels, "logits": logits}
        return contrastive_model.StepTerms(
            loss_inputs=[projection], contrastive=contrastive, stats=stats,
            extra={"linear_loss": linear}, outputs=outputs)

    def track_step(self, terms, ok):
        if self.linear_head is None:
            return
        labels, logits = terms.outputs["labels"], terms.outputs["logits"]
        step_guard.track_if(self._trackers["linear_loss"], terms.extra["linear_loss"], ok)
        weight = tf.fill(tf.shape(labels), tf.cast(ok, tf.float32))
        self._top1.update_state(labels, tf.where(ok, logits, tf.zeros_like(logits)),
                                sample_weight=weight)

    def test_step(self, data):
        """Linear-head scores on `{"image": [b, H, W, C], "label": [b]}`."""
        if self.linear_head is None:
            raise ValueError("test_step needs a linear head: build the model with num_classes.")
        logits = self.linear_head(self.encoder(data["image"], training=False))
        self._trackers["linear_loss"].update_state(self._linear_loss(logits, data["label"]))
        self._top1.update_state(data["label"], logits)
        self._top5.update_state(data["label"], logits)
        return {m.name: m.result() for m in (self._trackers["linear_loss"], self._top1, self._top5)}
