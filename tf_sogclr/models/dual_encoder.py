"""The image-text dual encoder: two towers with projection heads into one space.

CLIP-style training (docs/algorithm.md, "Image-text") of an image encoder (the ResNets) and a
text encoder (`models.text`), each followed by a projection head. The loss layer is
`losses.BimodalGlobalContrastiveLoss` (two u-tables, one row per image: see `data.captions`
for the pair indices) or, as the control, CLIP's InfoNCE (`losses.ClipContrastiveLoss`).

Temperature: fixed by default (the loss layer's, e.g. 0.03; the u-tables hold log u, so
CLIP's 0.01-0.07 is safe in float32). With `learnable_temperature`, one global tau is learnt
in log space and clamped to its range (`losses.LearnableTemperature`; docs/algorithm.md,
"Image-text"):

* CLIP loss: tau's gradient flows through the logits s / tau, as in CLIP.
* SogCLR: the surrogate's weights are stop-gradient, so it gives tau no gradient; tau
  follows the estimate of d objective / d tau (the loss's `temperature_gradient` metric)
  under iSogCLR's or FastCLIP-v3's objective, added to the loss as
  `LearnableTemperature.objective_term`.
"""

import keras
import tensorflow as tf

from tf_sogclr.config import TEMPERATURE_RANGE
from tf_sogclr.losses.learnable_temperature import LearnableTemperature
from tf_sogclr.models import contrastive_model
from tf_sogclr.training import optim

# Paths the optimiser neither decays nor adapts (LARS); the temperature's path also takes
# its own learning rate (`TEMPERATURE_PATTERN` in `optim.build_optimizer`'s multipliers).
TEMPERATURE_PATTERN = "temperature"
NO_DECAY_PATTERNS = ("batch_norm", "layer_norm", "bias", TEMPERATURE_PATTERN)


class DualEncoderModel(contrastive_model.ContrastiveModel):
    """Image and text encoders with projection heads into one space, trained contrastively.

    A step with a non-finite term of `NONFINITE_TERMS` (or an index outside the u-tables) is
    not applied (`contrastive_model.ContrastiveModel`).

    Args:
      image_encoder: images `[b, H, W, C]` in [0, 1] -> features `[b, f]` (a ResNet).
      text_encoder: token ids int `[b, L]` -> features `[b, f_t]` (`text.TextEncoder`).
      image_head, text_head: features -> projections `[b, d]` (`heads.ProjectionHead`).
      loss_layer: `BimodalGlobalContrastiveLoss` or `ClipContrastiveLoss`.
      tokenizer: `text.TextTokenizer`, strings -> token ids (kept in checkpoints, exports).
      learnable_temperature: learn one global tau (module docstring), starting at the loss
        layer's temperature, within `temperature_range`; `temperature_rho` is the rho and
        `temperature_objective` ("isogclr" or "fastclip_v3") the objective of SogCLR's tau.
      weight_decay: L2 decay through the loss for momentum/Adam (LARS and AdamW decay
        internally); batch norm, layer norm, biases and the temperature are not decayed.
    """

    NONFINITE_TERMS = ("embeddings", "contrastive_loss", "temperature_term", "weight_decay",
                       "gradients")

    def __init__(self, image_encoder, text_encoder, image_head, text_head, loss_layer,
                 tokenizer=None, learnable_temperature=False, temperature_rho=2.0,
                 temperature_range=TEMPERATURE_RANGE, temperature_objective="isogclr",
                 weight_decay=0.0, **kwargs):
        super().__init__(loss_layer, weight_decay=weight_decay, **kwargs)
        self.learnable_temperature = bool(learnable_temperature)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_head = image_head
        self.text_head = text_head
        self.tokenizer = tokenizer
        self.learned_temperature = None
        if self.learnable_temperature:
            self.learned_temperature = LearnableTemperature(
                loss_layer.temperature, temperature_range, objective=temperature_objective,
                rho=temperature_rho, name=TEMPERATURE_PATTERN)
        self._eval_trackers = {name: keras.metrics.Mean(name=name) for name in (
            "eval_infonce_loss", "eval_image_to_text_top1", "eval_text_to_image_top1")}

    def build(self, image_shape, text_shape=None):
        """Builds every part for images `[b, H, W, C]` and token ids `[b, L]`."""
        if text_shape is None:
            text_shape = (image_shape[0], self.text_encoder.max_text_length)
        self.image_head.build(self.image_encoder.compute_output_shape(image_shape))
        self.text_encoder.build(text_shape)
        self.text_head.build(self.text_encoder.compute_output_shape(text_shape))
        self.built = True

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._eval_trackers.values())

    def temperature(self):
        """The current tau: a float32 scalar tensor."""
        if self.learned_temperature is None:
            return tf.constant(self.loss_layer.temperature, tf.float32)
        return self.learned_temperature.value()

    def image_projection(self, images, training=False):
        """Images `[b, H, W, C]` -> projections `[b, d]` (not normalised)."""
        return self.image_head(self.image_encoder(images, training=training), training=training)

    def text_projection(self, tokens, training=False):
        """Token ids `[b, L]` -> projections `[b, d]` (not normalised)."""
        return self.text_head(self.text_encoder(tokens, training=training), training=training)

    def encode_image(self, images, training=False):
        """Images `[b, H, W, C]` -> unit embeddings float32 `[b, d]` (inference mode unless
        `training`)."""
        return tf.math.l2_normalize(
            tf.cast(self.image_projection(images, training=training), tf.float32), -1)

    def encode_tokens(self, tokens, training=False):
        """Token ids `[b, L]` -> unit embeddings float32 `[b, d]` (inference mode unless
        `training`)."""
        return tf.math.l2_normalize(
            tf.cast(self.text_projection(tokens, training=training), tf.float32), -1)

    def encode_text(self, texts):
        """Raw strings `[b]` -> unit embeddings float32 `[b, d]`, through the tokenizer."""
        if self.tokenizer is None:
            raise ValueError("encode_text needs a tokenizer: build the model with one.")
        return self.encode_tokens(self.tokenizer(texts))

    def call(self, inputs, training=False):
        """{"image": [b, H, W, C], "tokens": [b, L]} (either) -> {"image_embedding",
        "text_embedding"}: unit vectors `[b, d]`."""
        if not isinstance(inputs, dict):
            inputs = {"image": inputs}
        outputs = {}
        if "image" in inputs:
            outputs["image_embedding"] = tf.math.l2_normalize(tf.cast(
                self.image_projection(inputs["image"], training), tf.float32), -1)
        if "tokens" in inputs:
            outputs["text_embedding"] = tf.math.l2_normalize(tf.cast(
                self.text_projection(inputs["tokens"], training), tf.float32), -1)
        return outputs

    def weight_decay_loss(self):
        if self.weight_decay == 0.0 or optim.weight_decay_in_optimizer(
                optim.optimizer_name(self.optimizer)):
            return tf.constant(0.0)
        return optim.l2_weight_decay_loss(self.trainable_variables, self.weight_decay,
                                          exclude=NO_DECAY_PATTERNS)

    def statistics_layers(self):
        return [self.image_encoder, self.image_head, self.text_encoder, self.text_head]

    def compute_terms(self, data):
        """`{"image": [b, H, W, C], "tokens": [b, L], "index": [b]}`: both towers into the
        two-way loss, plus the learnable temperature's term (module docstring)."""
        image = self.image_projection(data["image"], training=True)
        text = self.text_projection(data["tokens"], training=True)
        tau = self.temperature() if self.learnable_temperature else None
        contrastive, stats = self.loss_layer(image, text, data["index"],
                                             return_metrics=True, temperature=tau)
        temperature_term = tf.constant(0.0)
        if "temperature_gradient" in stats and self.learnable_temperature:
            temperature_term = self.learned_temperature.objective_term(
                tau, stats["temperature_gradient"])
        return contrastive_model.StepTerms(
            loss_inputs=[image, text], contrastive=contrastive, stats=stats,
            extra={"temperature_term": temperature_term})

    def training_logs(self):
        """Training metric results plus learning rate, temperature and gamma (scalars)."""
        logs = super().training_logs()
        logs["temperature"] = self.temperature()
        return logs

    def test_step(self, data):
        """In-batch scores on `{"image", "tokens"}` (local batch, no u-table touched)."""
        image = self.encode_image(data["image"])
        text = self.encode_tokens(data["tokens"])
        logits = tf.matmul(image, text, transpose_b=True) / self.temperature()
        labels = tf.range(tf.shape(logits)[0])
        infonce = 0.5 * tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            + tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.transpose(logits)))
        self._eval_trackers["eval_infonce_loss"].update_state(infonce)
        for name, scores in (("eval_image_to_text_top1", logits),
                             ("eval_text_to_image_top1", tf.transpose(logits))):
            hit = tf.equal(tf.argmax(scores, axis=1, output_type=tf.int32), labels)
            self._eval_trackers[name].update_state(tf.cast(hit, tf.float32))
        return {m.name: m.result() for m in self._eval_trackers.values()}
