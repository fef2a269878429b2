"""Bimodal (image-text) SogCLR: dual encoders trained with the two-way global contrastive loss.

CLIP-style training (docs/algorithm.md, "Image-text") of an image encoder (the ResNets) and
a text encoder (`tf_sogclr.text`), each followed by a projection head into a shared space.
The loss is `losses.BimodalGlobalContrastiveLoss` (two u-tables, one row per image: see
`tf_sogclr.captions` for the pair indices) or, as the control, CLIP's symmetric InfoNCE
(`ClipContrastiveLoss`, "simclr" in `LossConfig.loss`).

Temperature: fixed by default (`LossConfig.temperature`, e.g. 0.03; the u-tables hold log u,
so CLIP's 0.01-0.07 is safe in float32). With `learnable_temperature`, one global tau in
[0.005, 1] is learnt through `tau = exp(lo + (hi - lo) * sigmoid(v))`:

* CLIP loss: tau's gradient flows through the logits s / tau, as in CLIP.
* SogCLR: the surrogate's weights are stop-gradient, so it gives tau no gradient. We follow
  iSogCLR (docs/algorithm.md, "Image-text") with one global tau: the objective
  `F(tau) = mean_i [tau (log g^I_i(tau) + rho) + tau (log g^T_i(tau) + rho) - 2 e_i . t_i]`
  has `dF/dtau = mean_i [log g^I_i + log g^T_i + 2 rho - sum_j (p^I_ij s^I_ij +
  p^T_ij s^T_ij) / (tau (B - 1))]`, estimated with the u-tables in place of g (the loss's
  `temperature_gradient` metric plus 2 rho), and applied by adding
  `tau * stop_gradient(estimate)` to the loss. Per direction the estimate is rho minus the
  KL divergence of the weights p from uniform, so tau settles where that KL equals rho
  (rho < log(B - 1)); with rho = 0 tau would only grow (tau log g falls as tau rises).

Lifecycle: `pretrain_bimodal(cfg)` (resumes from model_dir; checkpoints hold weights,
optimizer, both u-tables and the tokenizer's vocabulary), `evaluate_bimodal(cfg)` (zero-shot
top-1, image-to-text recall@1/5), `export_dual_encoder(...)` (SavedModel with `encode_image`
and `encode_text` signatures, the latter on raw strings).
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from tf_sogclr import augment, captions, config, distribute, export, losses, optim, resnet
from tf_sogclr import step_guard
from tf_sogclr import model as model_lib
from tf_sogclr import text as text_lib
from tf_sogclr import train

MODALITIES = ("unimodal", "bimodal")
DEFAULT_TEMPERATURE = 0.03
TEMPERATURE_RANGE = (0.005, 1.0)  # Bounds of a learnable tau (CLIP clamps 1 / tau at 100).
NO_DECAY_PATTERNS = ("batch_norm", "layer_norm", "bias", "temperature")
ENCODE_IMAGE, ENCODE_TEXT = "encode_image", "encode_text"
_VOCABULARY_KEY_SUFFIX = "tokenizer/vocabulary_checkpoint/.ATTRIBUTES/vocabulary"


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text encoder, tokenizer and temperature learning of the bimodal model."""

    text_encoder: str = "transformer"
    vocab_size: int = 1000
    max_text_length: int = 16
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    learnable_temperature: bool = False
    temperature_rho: float = 2.0

    def validate(self):
        config._choice("text_encoder", self.text_encoder, text_lib.TEXT_ENCODERS)
        config._positive_int("vocab_size", self.vocab_size)
        if self.vocab_size < 3:
            config._fail("vocab_size", "an integer >= 3 (padding, unknown, one token)",
                         self.vocab_size)
        config._positive_int("max_text_length", self.max_text_length)
        config._positive_int("text_width", self.text_width)
        config._positive_int("text_layers", self.text_layers)
        config._positive_int("text_heads", self.text_heads)
        if self.text_encoder == "transformer" and self.text_width % self.text_heads:
            config._fail("text_width", f"divisible by the {self.text_heads} attention heads",
                         self.text_width)
        if not isinstance(self.learnable_temperature, bool):
            config._fail("learnable_temperature", "true or false", self.learnable_temperature)
        config._in_range("temperature_rho", self.temperature_rho, 0.0, 100.0)
        return self


@dataclasses.dataclass(frozen=True)
class BimodalConfig:
    """Everything `pretrain_bimodal` needs: the unimodal parts plus `text`."""

    data: config.DataConfig = config.DataConfig()
    model: config.ModelConfig = config.ModelConfig()
    loss: config.LossConfig = config.LossConfig(temperature=DEFAULT_TEMPERATURE)
    optimizer: config.OptimizerConfig = config.OptimizerConfig()
    run: config.RunConfig = config.RunConfig(lineareval_while_pretraining=False)
    text: TextConfig = TextConfig()

    def validate(self):
        config.PretrainConfig(self.data, self.model, self.loss, self.optimizer,
                              self.run).validate()
        self.text.validate()
        low, high = TEMPERATURE_RANGE
        if self.text.learnable_temperature and not low < self.loss.temperature < high:
            config._fail("temperature", f"in ({low}, {high}) with --learnable_temperature "
                         "(its initial value)", self.loss.temperature)
        return self


# --------------------------------------------------------------------------- losses


@keras.saving.register_keras_serializable(package="tf_sogclr")
class ClipContrastiveLoss(keras.layers.Layer):
    """CLIP's symmetric InfoNCE, the control: image and text anchors against the global batch.

    `loss_fn(image_emb, text_emb, index=None)`: `[b, d]` embeddings; cross-entropy of the
    logits `e_i . t_j / tau` over the B global texts (images) with the pair as label, summed
    over both directions and averaged over local pairs (twice CLIP's mean, the scale of
    the SogCLR surrogate). `temperature` may be a tensor with a gradient (learnable tau).
    """

    def __init__(self, temperature=DEFAULT_TEMPERATURE, normalize=True, **kwargs):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.built = True

    def call(self, image_emb, text_emb, index=None, return_metrics=False, temperature=None):
        image, text, _ = losses._check_pair(image_emb, text_emb, index,
                                            ("image_emb", "text_emb", "index"))
        tau = self.temperature if temperature is None else tf.cast(temperature, tf.float32)
        image = losses._normalize(image, self.normalize)
        text = losses._normalize(text, self.normalize)
        image_all = distribute.cross_replica_concat(image)
        text_all = distribute.cross_replica_concat(text)
        batch = tf.shape(image)[0]
        rows = distribute.replica_row_offset(batch) + tf.range(batch)
        not_self = losses._not_self_mask(batch, tf.shape(image_all)[0])
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

    def set_epoch(self, epoch):
        """No schedule: present so training loops treat every loss layer alike."""
        del epoch

    def get_config(self):
        config_ = super().get_config()
        config_.update(temperature=self.temperature, normalize=self.normalize)
        return config_


def build_loss(loss, num_examples, temperature=DEFAULT_TEMPERATURE, gamma=0.9,
               gamma_schedule="constant", gamma_decay_epochs=None, normalize=True):
    """"sogclr": `BimodalGlobalContrastiveLoss` with `num_examples` rows; "simclr": CLIP's."""
    config._choice("loss", loss, config.LOSSES)
    if loss == "sogclr":
        return losses.BimodalGlobalContrastiveLoss(
            num_examples, temperature=temperature, gamma=gamma, gamma_schedule=gamma_schedule,
            gamma_decay_epochs=gamma_decay_epochs, normalize=normalize, name="sogclr_loss")
    return ClipContrastiveLoss(temperature, normalize=normalize, name="clip_loss")


# --------------------------------------------------------------------------- model


def _temperature_logit(temperature):
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    fraction = (math.log(temperature) - low) / (high - low)
    return math.log(fraction / (1.0 - fraction))


class DualEncoderModel(keras.Model):
    """Image and text encoders with projection heads into one space, trained contrastively.

    A step with a non-finite term of `NONFINITE_TERMS` (or an index outside the u-tables) is
    not applied, as in `model.SogCLRModel`.

    Args:
      image_encoder: images `[b, H, W, C]` in [0, 1] -> features `[b, f]` (a ResNet).
      text_encoder: token ids int `[b, L]` -> features `[b, f_t]` (`text.TextEncoder`).
      image_head, text_head: features -> projections `[b, d]` (`model.ProjectionHead`).
      loss_layer: `BimodalGlobalContrastiveLoss` or `ClipContrastiveLoss`.
      tokenizer: `text.TextTokenizer`, strings -> token ids (kept in checkpoints, exports).
      learnable_temperature: learn one global tau (module docstring), starting at the loss
        layer's temperature; `temperature_rho` is iSogCLR's rho (SogCLR loss only).
      weight_decay: L2 decay through the loss for momentum/Adam (LARS decays internally);
        batch norm, layer norm, biases and the temperature are not decayed.
    """

    NONFINITE_TERMS = ("embeddings", "contrastive_loss", "temperature_term", "weight_decay",
                       "gradients")

    def __init__(self, image_encoder, text_encoder, image_head, text_head, loss_layer,
                 tokenizer=None, learnable_temperature=False, temperature_rho=2.0,
                 weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        if not 0 <= temperature_rho < float("inf"):
            raise ValueError(f"temperature_rho must be >= 0, got {temperature_rho!r}.")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_head = image_head
        self.text_head = text_head
        self.loss_layer = loss_layer
        self.tokenizer = tokenizer
        self.learnable_temperature = bool(learnable_temperature)
        self.temperature_rho = float(temperature_rho)
        self.weight_decay = float(weight_decay)
        self.temperature_logit = None
        if self.learnable_temperature:
            low, high = TEMPERATURE_RANGE
            if not low < loss_layer.temperature < high:
                raise ValueError(f"a learnable temperature must start in ({low}, {high}), "
                                 f"got {loss_layer.temperature}.")
            self.temperature_logit = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(
                    _temperature_logit(loss_layer.temperature)),
                trainable=True, autocast=False, name="temperature_logit")
        self._trackers = {name: keras.metrics.Mean(name=name) for name in (
            "contrastive_loss", "objective", "contrastive_accuracy", "weight_decay_loss")}
        # Skipped steps, and those with a non-finite term (`train_step_with_diagnostics`).
        self._trackers["bad_steps"] = keras.metrics.Sum(name="bad_steps")
        self._trackers["nonfinite_steps"] = keras.metrics.Sum(name="nonfinite_steps")
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
        if self.temperature_logit is None:
            return tf.constant(self.loss_layer.temperature, tf.float32)
        low, high = (math.log(t) for t in TEMPERATURE_RANGE)
        logit = tf.convert_to_tensor(self.temperature_logit)
        return tf.exp(low + (high - low) * tf.sigmoid(logit))

    def image_projection(self, images, training=False):
        """Images `[b, H, W, C]` -> projections `[b, d]` (not normalised)."""
        return self.image_head(self.image_encoder(images, training=training), training=training)

    def text_projection(self, tokens, training=False):
        """Token ids `[b, L]` -> projections `[b, d]` (not normalised)."""
        return self.text_head(self.text_encoder(tokens, training=training), training=training)

    def encode_image(self, images):
        """Images `[b, H, W, C]` -> unit embeddings float32 `[b, d]` (inference mode)."""
        return tf.math.l2_normalize(tf.cast(self.image_projection(images), tf.float32), -1)

    def encode_tokens(self, tokens):
        """Token ids `[b, L]` -> unit embeddings float32 `[b, d]` (inference mode)."""
        return tf.math.l2_normalize(tf.cast(self.text_projection(tokens), tf.float32), -1)

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

    def _weight_decay_loss(self):
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if self.weight_decay == 0.0 or isinstance(optimizer, optim.LARS):
            return tf.constant(0.0)
        return optim.l2_weight_decay_loss(self.trainable_variables, self.weight_decay,
                                          exclude=NO_DECAY_PATTERNS)

    def train_step(self, data):
        """One step on `{"image": [b, H, W, C], "tokens": [b, L], "index": [b]}`."""
        return self.train_step_with_diagnostics(data)[0]

    def train_step_with_diagnostics(self, data):
        """`train_step`, also returning what went wrong in it, identical on all replicas:
        float32 "nonfinite_terms" `[T]` (per `NONFINITE_TERMS`), "index_out_of_range" and
        "skipped". A bad step is not applied (`tf_sogclr.step_guard`)."""
        statistics = step_guard.written_statistics(
            self.image_encoder, self.image_head, self.text_encoder, self.text_head)
        saved = step_guard.snapshot(statistics)
        with tf.GradientTape() as tape:
            image = self.image_projection(data["image"], training=True)
            text = self.text_projection(data["tokens"], training=True)
            tau = self.temperature() if self.learnable_temperature else None
            contrastive, stats = self.loss_layer(image, text, data["index"],
                                                 return_metrics=True, temperature=tau)
            total = contrastive
            temperature_term = tf.constant(0.0)
            if "temperature_gradient" in stats and self.learnable_temperature:
                # d total / d tau = the estimate of dF/dtau (module docstring).
                estimate = stats["temperature_gradient"] + 2.0 * self.temperature_rho
                temperature_term = tau * tf.stop_gradient(estimate)
                total += temperature_term
            decay = self._weight_decay_loss()
            total += decay
            scaled = total / distribute.num_replicas_in_sync()
            scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)

        _, report = step_guard.guarded_update(
            self.optimizer, gradients, variables,
            [[image, text], [contrastive], [temperature_term], [decay]], stats["input_ok"],
            statistics, saved, self._trackers,
            {"contrastive_loss": contrastive, "objective": stats["objective"],
             "contrastive_accuracy": stats["contrastive_accuracy"], "weight_decay_loss": decay})
        return self.training_logs(), report

    def training_logs(self):
        """Training metric results plus learning rate, temperature and gamma (scalars)."""
        logs = {m.name: m.result() for m in self._trackers.values()}
        logs["learning_rate"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        logs["temperature"] = self.temperature()
        gamma = getattr(self.loss_layer, "current_gamma", None)
        if gamma is not None:
            logs["gamma"] = tf.convert_to_tensor(gamma.value)
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


def build_dual_encoder(cfg, info, tokenizer, num_replicas=1):
    """The compiled, built `DualEncoderModel` of `cfg` for dataset `info` (call in scope)."""
    m, t, lc, oc = cfg.model, cfg.text, cfg.loss, cfg.optimizer
    global_bn = m.global_bn and num_replicas > 1
    image_shape = (cfg.data.image_size, cfg.data.image_size, info.channels)
    image_encoder = resnet.build_resnet(
        m.resnet_depth, width_multiplier=m.width_multiplier, small_image_stem=m.small_image_stem,
        global_bn=global_bn, batch_norm_decay=m.batch_norm_decay, input_shape=image_shape,
        name="image_encoder")
    text_encoder = text_lib.TextEncoder(
        t.vocab_size, t.max_text_length, kind=t.text_encoder, width=t.text_width,
        num_layers=t.text_layers, num_heads=t.text_heads, name="text_encoder")

    def head(name):
        return model_lib.ProjectionHead(
            m.proj_head_mode, proj_out_dim=m.proj_out_dim, num_proj_layers=m.num_proj_layers,
            batch_norm_decay=m.batch_norm_decay, global_bn=global_bn, name=name)

    loss_layer = build_loss(lc.loss, info.num_examples, lc.temperature, lc.gamma,
                            lc.gamma_schedule, lc.gamma_decay_epochs, lc.hidden_norm)
    model = DualEncoderModel(
        image_encoder, text_encoder, head("image_projection_head"),
        head("text_projection_head"), loss_layer, tokenizer=tokenizer,
        learnable_temperature=t.learnable_temperature, temperature_rho=t.temperature_rho,
        weight_decay=oc.weight_decay, name="dual_encoder")
    schedule = train.make_schedule(cfg, info)
    warmup = int(round(oc.warmup_epochs * schedule.steps_per_epoch))
    learning_rate = optim.WarmupCosineDecay(
        optim.scaled_learning_rate(oc.learning_rate, cfg.run.train_batch_size,
                                   oc.learning_rate_scaling),
        warmup_steps=warmup, total_steps=max(schedule.total_steps, warmup + 1))
    model.compile(optimizer=optim.build_optimizer(
        oc.optimizer, learning_rate, momentum=oc.momentum, weight_decay=oc.weight_decay,
        exclude_from_weight_decay=optim.DEFAULT_EXCLUDES + NO_DECAY_PATTERNS))
    model.build((None, *image_shape))
    model.optimizer.build(model.trainable_variables)
    return model


# --------------------------------------------------------------------------- lifecycle


def check_against_data(cfg, info, strategy):
    """Batch-size, replica and compilation checks of `train.check_against_data` (cheap)."""
    run = dataclasses.replace(cfg.run, lineareval_while_pretraining=False)
    train.check_against_data(dataclasses.replace(cfg, run=run), info, strategy)


def vocabulary_from_checkpoint(path):
    """The tokenizer vocabulary stored in checkpoint `path` (list of str), or None."""
    reader = tf.train.load_checkpoint(path)
    keys = [k for k in reader.get_variable_to_shape_map() if k.endswith(_VOCABULARY_KEY_SUFFIX)]
    if not keys:
        return None
    return [v.decode("utf-8") for v in reader.get_tensor(keys[0])]


def make_tokenizer(cfg, info, checkpoint=None):
    """The tokenizer of a run: the vocabulary of `checkpoint` if given, else built from the
    training captions of `info` (the `vocab_size - 2` most frequent tokens)."""
    vocabulary = vocabulary_from_checkpoint(checkpoint) if checkpoint else None
    if vocabulary is not None:
        return text_lib.TextTokenizer(cfg.text.vocab_size, cfg.text.max_text_length,
                                      vocabulary=vocabulary, name="tokenizer")
    return text_lib.TextTokenizer.from_texts(
        captions.training_captions(info, cfg.data.data_dir), cfg.text.vocab_size,
        cfg.text.max_text_length, name="tokenizer")


def _describe(cfg, split):
    return captions.describe_pairs(cfg.data.dataset, split, cfg.data.data_dir)


def pretrain_bimodal(cfg, strategy=None, verbose=1, dataset_fn=None):
    """Pretrains the dual encoder of `cfg` (resuming from `cfg.run.model_dir`).

    `train.run_schedule` runs it, as unimodal pretraining: checkpoints (weights, optimiser,
    both u-tables, gamma, the tokenizer vocabulary) every checkpoint_epochs /
    checkpoint_steps and at the end, TensorBoard scalars in `model_dir/train`,
    `nonfinite_policy`, data errors naming the dataset and split, and on SIGTERM a save at
    the next execution boundary and an early return with `preempted=True`. Returns a
    `train.PretrainResult`. `dataset_fn(input_context) -> tf.data.Dataset` of per-replica
    batches `{"image", "tokens", "index"}` replaces the caption pipeline (tokens from
    `make_tokenizer(cfg, info)`; the split of `cfg.data` still sizes the u-tables and epoch).
    """
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    info = _describe(cfg, cfg.data.train_split)
    check_against_data(cfg, info, strategy)
    train.set_run_globals(cfg)
    # The vocabulary of the checkpoint the run resumes from (the chief's, on every worker).
    tokenizer = make_tokenizer(cfg, info, train.latest_checkpoint(cfg.run.model_dir))
    with strategy.scope():
        model = build_dual_encoder(cfg, info, tokenizer, strategy.num_replicas_in_sync)
    if dataset_fn is None:
        augmenter = augment.SimCLRAugment(
            cfg.data.image_size, channels=info.channels, crop_area_min=cfg.data.crop_area_min,
            color_distort=False)

        def dataset_fn(context):
            return captions.pair_dataset(
                info, cfg.run.train_batch_size, tokenizer, augmenter,
                data_dir=cfg.data.data_dir, shuffle_buffer=cfg.data.shuffle_buffer,
                cache=cfg.data.cache_dataset, seed=cfg.run.seed, input_context=context)

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    return train.run_schedule(model, dataset, cfg, info, strategy, verbose)


def restore_bimodal(cfg, checkpoint=None, strategy=None):
    """The dual encoder of `checkpoint` (default: newest in model_dir) and its step."""
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    path = train.latest_checkpoint(checkpoint or cfg.run.model_dir)
    if path is None:
        raise ValueError(f"Needs --checkpoint or a checkpoint in --model_dir={cfg.run.model_dir}; "
                         "found none.")
    info = _describe(cfg, cfg.data.train_split)
    tokenizer = make_tokenizer(cfg, info, path)
    with strategy.scope():
        model = build_dual_encoder(cfg, info, tokenizer, strategy.num_replicas_in_sync)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(path).expect_partial()
    return model, int(model.optimizer.iterations.numpy())


# --------------------------------------------------------------------------- evaluation


def embed_texts(encode_text, texts, batch_size=512):
    """Unit embeddings float32 `[M, d]` of `texts` (list of str) by `encode_text`, a function
    strings `[b]` -> `[b, d]`, in chunks of `batch_size`."""
    if not texts:
        raise ValueError("texts must hold at least one string.")
    chunks = [encode_text(tf.constant(texts[i:i + batch_size]))
              for i in range(0, len(texts), batch_size)]
    return tf.math.l2_normalize(tf.cast(tf.concat(chunks, 0), tf.float32), -1)


def class_embeddings(encode_text, prompts):
    """Zero-shot classifier `[C, d]`: per class the normalised mean of its prompts' unit
    embeddings (CLIP's prompt ensembling); `prompts` is `[C][T]` strings."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("prompts must give each class at least one prompt.")
    flat = embed_texts(encode_text, [p for ps in prompts for p in ps])
    sizes = [len(ps) for ps in prompts]
    means = [tf.reduce_mean(part, 0) for part in tf.split(flat, sizes)]
    return tf.math.l2_normalize(tf.stack(means), -1)


def zero_shot_top1(image_embeddings, labels, class_text_embeddings):
    """Fraction of images `[N, d]` whose most similar class embedding `[C, d]` is their
    label `[N]`."""
    scores = tf.matmul(tf.cast(image_embeddings, tf.float32),
                       tf.cast(class_text_embeddings, tf.float32), transpose_b=True)
    predictions = tf.argmax(scores, axis=1, output_type=tf.int64)
    return float(np.mean(predictions.numpy() == np.asarray(labels, np.int64)))


def image_to_text_recall(image_embeddings, text_embeddings, text_owner, ks=(1, 5),
                         chunk_size=1024):
    """Image-to-text recall@k: fraction of images `[N, d]` with one of their own captions
    among the k most similar texts `[M, d]`; `text_owner` `[M]` is each text's image row.

    Rank of image i = number of other images' texts scoring strictly above its best own text
    (identical caption strings of other images tie, and ties count in the image's favour).
    """
    owner = tf.cast(tf.convert_to_tensor(text_owner), tf.int64)
    num_images = int(image_embeddings.shape[0])
    if owner.shape.rank != 1 or owner.shape[0] != text_embeddings.shape[0]:
        raise ValueError("text_owner must give one image row per text embedding.")
    missing = np.setdiff1d(np.arange(num_images), owner.numpy())
    if missing.size:
        raise ValueError(f"images {missing[:8].tolist()} have no caption among the texts.")
    ranks = []
    for start in range(0, num_images, chunk_size):
        rows = tf.range(start, min(start + chunk_size, num_images), dtype=tf.int64)
        scores = tf.matmul(image_embeddings[start:start + chunk_size], text_embeddings,
                           transpose_b=True)  # [c, M]
        own = tf.equal(rows[:, None], owner[None, :])
        best_own = tf.reduce_max(tf.where(own, scores, -np.inf), axis=1, keepdims=True)
        above = tf.logical_and(tf.logical_not(own), scores > best_own)
        ranks.append(tf.reduce_sum(tf.cast(above, tf.int64), axis=1))
    ranks = tf.concat(ranks, 0).numpy()
    return {k: float(np.mean(ranks < k)) for k in ks}


def evaluate_dual_encoder(encode_image, encode_text, dataset, prompts=None, eval_steps=0,
                          recall_ks=(1, 5)):
    """Zero-shot top-1 (with `prompts` [C][T]) and image-to-text recall@k on `dataset`.

    `dataset`: finite batches {"image", "label", "captions": ragged strings} (as
    `captions.eval_pairs`); `encode_image` / `encode_text`: images or strings -> `[b, d]`.
    Returns {"zero_shot_top1"?, "image_to_text_recall@k"..., "num_images"}.
    """
    image_embeddings, labels, texts, owner = [], [], [], []
    for i, batch in enumerate(dataset):
        if eval_steps and i >= eval_steps:
            break
        image_embeddings.append(tf.math.l2_normalize(
            tf.cast(encode_image(batch["image"]), tf.float32), -1))
        labels.append(batch["label"].numpy())
        batch_captions = batch["captions"]  # Ragged, or dense when all counts agree.
        batch_captions = (batch_captions.to_list() if isinstance(batch_captions, tf.RaggedTensor)
                          else batch_captions.numpy().tolist())
        for captions_of_image in batch_captions:
            captions_of_image = captions_of_image or [b""]
            owner.extend([len(owner) and owner[-1] + 1] * len(captions_of_image))
            texts.extend(c.decode("utf-8") for c in captions_of_image)
    if not image_embeddings:
        raise ValueError("dataset yielded no batches.")
    image_embeddings = tf.concat(image_embeddings, 0)
    results = {"num_images": int(image_embeddings.shape[0])}
    if prompts is not None:
        results["zero_shot_top1"] = zero_shot_top1(
            image_embeddings, np.concatenate(labels), class_embeddings(encode_text, prompts))
    recall = image_to_text_recall(image_embeddings, embed_texts(encode_text, texts), owner,
                                  recall_ks)
    results.update({f"image_to_text_recall@{k}": v for k, v in recall.items()})
    return results


def evaluate_bimodal(cfg, checkpoint=None, eval_steps=0, strategy=None):
    """Scores a checkpoint on `cfg.data.eval_split`: zero-shot top-1 (labelled datasets) and
    image-to-text recall@1/5; writes scalars to `model_dir/eval`; returns a dict."""
    strategy = strategy or tf.distribute.get_strategy()
    model, step = restore_bimodal(cfg, checkpoint, strategy)
    info = _describe(cfg, cfg.data.eval_split)
    dataset = captions.eval_pairs(info, cfg.run.eval_batch_size, cfg.data.image_size,
                                  data_dir=cfg.data.data_dir)
    encode_image = tf.function(model.encode_image, reduce_retracing=True)
    encode_text = tf.function(model.encode_text, reduce_retracing=True)
    prompts = captions.class_prompts(info) if info.class_names is not None else None
    results = evaluate_dual_encoder(encode_image, encode_text, dataset, prompts, eval_steps)
    train.write_eval_scalars(cfg.run.model_dir, step,
                             {k: v for k, v in results.items() if k != "num_images"}, strategy)
    return {"step": step, **results}


# --------------------------------------------------------------------------- export


def _export_module(model, image_shape):
    if model.tokenizer is None:
        raise ValueError("model must have a tokenizer to export encode_text on raw strings.")
    if not model.built:
        raise ValueError("model must be built before export.")
    parts = [model.image_encoder, model.image_head, model.text_encoder, model.text_head]

    def encode_image(images):
        return {"embedding": model.encode_image(images)}

    def encode_text(texts):
        return {"embedding": model.encode_tokens(model.tokenizer(texts))}

    module = tf.__internal__.tracking.AutoTrackable()
    module.variables = [v for p in parts for v in p.variables]
    module.trainable_variables = [v for p in parts for v in p.trainable_variables]
    module.non_trainable_variables = [v for p in parts for v in p.non_trainable_variables]
    module.vectorizer = model.tokenizer.vectorizer  # Tracks the vocabulary's lookup table.
    module.temperature = tf.Variable(float(model.temperature()), trainable=False,
                                     name="temperature")
    specs = {ENCODE_IMAGE: tf.TensorSpec([None, *image_shape], tf.float32, name="images"),
             ENCODE_TEXT: tf.TensorSpec([None], tf.string, name="texts")}
    for name, fn in ((ENCODE_IMAGE, encode_image), (ENCODE_TEXT, encode_text)):
        function = tf.function(fn, input_signature=[specs[name]], autograph=False)
        function.get_concrete_function()  # Trace now: errors before anything is written.
        setattr(module, name, function)
    return module


def export_dual_encoder(model, export_dir, image_shape, overwrite=False):
    """Writes both encoders of a `DualEncoderModel` as a SavedModel; returns the path.

    Signatures `encode_image(images [None, H, W, C] float32 in [0, 1])` and
    `encode_text(texts [None] tf.string)`, each -> {"embedding": unit vectors `[b, d]`}
    (inference mode); also callable as `loaded.encode_image(...)`. `temperature` is saved.
    """
    export_dir = export._check_path("export_dir", export_dir)
    image_shape = export._check_image_shape(image_shape)
    export._check_bool("overwrite", overwrite)
    export._check_destination(export_dir, overwrite)
    module = _export_module(model, image_shape)
    signatures = {name: getattr(module, name).get_concrete_function()
                  for name in (ENCODE_IMAGE, ENCODE_TEXT)}
    return export.save_atomically(module, export_dir, signatures, overwrite)


def export_dual_encoder_for_step(model, base_dir, step, image_shape, keep_max=5):
    """Exports to `base_dir/<step>` (replacing it), keeps the newest `keep_max` exports."""
    base_dir = export._check_path("base_dir", base_dir)
    step = export._check_step(step)
    if isinstance(keep_max, bool) or not isinstance(keep_max, int) or keep_max < 1:
        raise ValueError(f"keep_max must be an integer >= 1, got {keep_max!r}.")
    path = export_dual_encoder(model, f"{base_dir}/{step}", image_shape, overwrite=True)
    export.remove_old_exports(base_dir, keep_max)
    return path


class LoadedDualEncoder:
    """A dual-encoder export loaded back: `encode_image(images)`, `encode_text(strings)` ->
    unit embeddings `[b, d]`; keeps the loaded object (and so its variables) alive."""

    def __init__(self, path):
        path = export._check_path("path", path)
        if not export._is_complete(path):
            raise ValueError(f"path {path!r} is not a complete SavedModel export.")
        self.saved_model = tf.saved_model.load(path)
        missing = [n for n in (ENCODE_IMAGE, ENCODE_TEXT) if not hasattr(self.saved_model, n)]
        if missing:
            raise ValueError(f"path {path!r} has no {missing}; was it written by "
                             "tf_sogclr.bimodal.export_dual_encoder?")
        self.path = path

    def encode_image(self, images):
        return self.saved_model.encode_image(tf.convert_to_tensor(images, tf.float32))["embedding"]

    def encode_text(self, texts):
        return self.saved_model.encode_text(tf.convert_to_tensor(texts, tf.string))["embedding"]

    @property
    def temperature(self):
        return float(self.saved_model.temperature.numpy())
