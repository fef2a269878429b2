"""The fine-tuning classifier: a pretrained encoder (and projection layers) with a linear head.

    images [b, H, W, C] in [0, 1] -> encoder -> features [b, f]
        -> projection hidden layers 1..ft_proj_selector (checkpoint sources only)
        -> Dense(num_classes, name="head_supervised") -> logits [b, num_classes]

A checkpoint's encoder is rebuilt with `fine_tune_after_block` (frozen stem / block groups use
batch-norm moving statistics and stop gradients) and its weights are copied in by layer name
(a "scratch" source, `--checkpoint=none`, keeps the random initialisation: the supervised
baseline);
a SavedModel becomes a `keras.layers.TFSMLayer` (trainable, or frozen with
fine_tune_after_block=4). `ExportableClassifier` presents the result to `tf_sogclr.export`.
"""

import gc

import keras
import tensorflow as tf

from tf_sogclr import distribute, export
from tf_sogclr.models import batch_norm, resnet, sogclr_model
from tf_sogclr.training import modalities, optim
from tf_sogclr.training.finetune_source import FEATURES_KEY, SERVING_SIGNATURE

HEAD_NAME = sogclr_model.LINEAR_HEAD_NAME  # "head_supervised": LARS leaves it out of adaptation.
ENCODER_NAME = "encoder"


def fine_tune_after_block(pretrain_cfg, finetune_cfg):
    """The effective --fine_tune_after_block (the fine-tune config's, else the model config's)."""
    value = finetune_cfg.fine_tune_after_block
    return pretrain_cfg.model.fine_tune_after_block if value is None else value


def ft_proj_selector(pretrain_cfg, finetune_cfg):
    """The effective --ft_proj_selector (the fine-tune config's, else the model config's)."""
    value = finetune_cfg.ft_proj_selector
    return pretrain_cfg.model.ft_proj_selector if value is None else value


class FinetuneModel(keras.Model):
    """A functional classifier images `[b, H, W, C]` -> logits `[b, classes]` whose training loss
    adds SimCLR's L2 weight decay for `optimizer` (LARS, AdamW: only the head; else all but
    batch norm).
    """

    def __init__(self, *args, weight_decay=0.0, optimizer_name="momentum", **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_decay = float(weight_decay)
        self.optimizer_name = optimizer_name

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if not training or self.weight_decay == 0.0:
            return loss
        decay = optim.weight_decay_loss(self.optimizer_name, self.trainable_variables,
                                        self.weight_decay)
        # Keras sums replica losses: scale additional terms like its own regularisers.
        return loss + tf.cast(decay, loss.dtype) / tf.cast(
            distribute.num_replicas_in_sync(), loss.dtype)


class SavedModelEncoder(keras.layers.TFSMLayer):
    """`keras.layers.TFSMLayer` whose variables are named without ":0", so that optimisers can
    name their slots after them ("stem_conv_kernel_momentum"; ":" is not allowed there).
    """

    def _add_existing_weight(self, weight):
        variable = keras.Variable(initializer=weight, trainable=weight.trainable,
                                  dtype=weight.dtype, shape=weight.shape,
                                  name=weight.name.split(":")[0].replace("/", "_"))
        self._track_variable(variable)


def _copy_weights(source_layer, target_layer):
    """Assigns `source_layer`'s variables to `target_layer`'s, matched by variable name."""
    source = {v.name: v for v in source_layer.weights}
    target = {v.name: v for v in target_layer.weights}
    if sorted(source) != sorted(target) or any(
            tuple(source[k].shape) != tuple(target[k].shape) for k in target):
        raise ValueError(f"Cannot copy layer {source_layer.name!r}: variables "
                         f"{[(k, tuple(v.shape)) for k, v in source.items()]} vs "
                         f"{[(k, tuple(v.shape)) for k, v in target.items()]}.")
    for name, variable in target.items():
        variable.assign(source[name].numpy())


def load_pretrained(pretrain_cfg, checkpoint, info):
    """`modalities.build_sogclr_model(...)` with the encoder and projection head restored from `checkpoint`.

    Raises ValueError if the checkpoint does not hold that architecture's encoder and head.
    """
    model = modalities.build_sogclr_model(pretrain_cfg, info, num_replicas=1)
    # Only the encoder and head: the optimiser, u-table and linear head may differ or be absent.
    parts = tf.train.Checkpoint(encoder=model.encoder, projection_head=model.projection_head)
    problem, logger = None, tf.get_logger()
    level = logger.level
    try:
        try:
            tf.train.Checkpoint(model=parts).restore(checkpoint).expect_partial() \
                .assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            problem = str(error).splitlines()[0]
        if problem:  # A failed restore warns about every unused value once collected.
            logger.setLevel("ERROR")
            del model, parts
            gc.collect()
    finally:
        logger.setLevel(level)
    if problem:
        m = pretrain_cfg.model
        raise ValueError(
            f"--checkpoint={checkpoint} does not hold the encoder and projection head of "
            f"--resnet_depth={m.resnet_depth} --width_multiplier={m.width_multiplier} "
            f"--small_image_stem={m.small_image_stem} --proj_head_mode={m.proj_head_mode} "
            f"--num_proj_layers={m.num_proj_layers} --proj_out_dim={m.proj_out_dim} on "
            f"{info.channels}-channel images: {problem}")
    return model


def _projection_layers(features, pretrained, selector, model_cfg, global_bn):
    """Hidden layers 1..selector of the projection head (as ProjectionHead), weights copied."""
    x = features
    head = pretrained.projection_head
    for j in range(selector):
        last = j == head.num_proj_layers - 1
        dense_src, norm_src = getattr(head, f"dense_{j}"), getattr(head, f"batch_norm_{j}")
        dense = keras.layers.Dense(dense_src.units, use_bias=False, name=dense_src.name)
        norm = batch_norm.batch_norm_layer(norm_src.name, model_cfg.batch_norm_decay, global_bn,
                                       center=not last)
        x = norm(dense(x))
        _copy_weights(dense_src, dense)
        _copy_weights(norm_src, norm)
        if not last:
            x = keras.layers.ReLU(name=f"projection_relu_{j}")(x)
    return x


def build_finetune_model(pretrain_cfg, finetune_cfg, source, info, num_replicas=1,
                         training_endpoint=None):
    """The classifier images `[b, S, S, C]` -> logits `[b, num_classes]` (call in strategy scope).

    A "checkpoint" source is restored by `load_pretrained` and copied into an encoder rebuilt
    with --fine_tune_after_block; a "saved_model" source becomes a TFSMLayer. Not compiled.
    """
    m = pretrain_cfg.model
    size, channels = pretrain_cfg.data.image_size, info.channels
    after_block = fine_tune_after_block(pretrain_cfg, finetune_cfg)
    selector = ft_proj_selector(pretrain_cfg, finetune_cfg)
    global_bn = m.global_bn and num_replicas > 1
    images = keras.Input((size, size, channels), name="images")
    if source.kind in ("checkpoint", "scratch"):
        encoder = resnet.build_resnet(
            m.resnet_depth, width_multiplier=m.width_multiplier,
            small_image_stem=m.small_image_stem, global_bn=global_bn,
            batch_norm_decay=m.batch_norm_decay, fine_tune_after_block=after_block,
            input_shape=(size, size, channels), name=ENCODER_NAME)
    if source.kind == "scratch":  # The supervised baseline: the same encoder, random weights.
        features = encoder(images)
    elif source.kind == "checkpoint":
        pretrained = load_pretrained(pretrain_cfg, source.path, info)
        with_weights = [layer for layer in pretrained.encoder.layers if layer.weights]
        missing = {l.name for l in encoder.layers if l.weights} - {l.name for l in with_weights}
        if missing:
            raise ValueError(f"Encoder layers {sorted(missing)} have no pretrained weights.")
        for layer in with_weights:
            _copy_weights(layer, encoder.get_layer(layer.name))
        features = _projection_layers(encoder(images), pretrained, selector, m, global_bn)
        del pretrained
    elif source.kind == "saved_model":
        if selector != 0 or after_block not in (-1, 4):
            raise ValueError("A SavedModel source takes --ft_proj_selector=0 and "
                             f"--fine_tune_after_block -1 or 4, got {selector}, {after_block}.")
        frozen = after_block == 4
        encoder = SavedModelEncoder(
            source.path,
            call_endpoint=(export.SERVE_ENDPOINT if training_endpoint and not frozen
                           else SERVING_SIGNATURE),
            call_training_endpoint=None if frozen else training_endpoint,
            # Its signature takes float32 images and computes in the precision it was saved
            # with: a mixed policy must not cast its input to bfloat16 / float16.
            trainable=not frozen, dtype="float32", name=ENCODER_NAME)
        features = encoder(images)[FEATURES_KEY]
    else:
        raise ValueError(f"source.kind must be 'checkpoint', 'saved_model' or 'scratch', got "
                         f"{source.kind!r}.")
    logits = keras.layers.Dense(
        info.num_classes,
        kernel_initializer=("zeros" if finetune_cfg.zero_init_logits_layer
                            else keras.initializers.RandomNormal(stddev=0.01)),
        dtype="float32", name=HEAD_NAME)(features)
    return FinetuneModel(images, logits, weight_decay=finetune_cfg.weight_decay,
                         optimizer_name=finetune_cfg.optimizer, name="finetune_model")


class ExportableClassifier(keras.Model):
    """A fine-tuned classifier seen as `encoder` (images -> features) + `linear_head`.

    What `export.export_saved_model` needs to write `features` and `logits` endpoints.
    """

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        head = classifier.get_layer(HEAD_NAME)
        self.encoder = keras.Model(classifier.inputs, head.input, name="encoder")
        self.linear_head = head
        self.projection_head = None
