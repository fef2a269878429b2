"""ResNet v1 encoders in the style of SimCLR (tf2/resnet.py), as Keras 3 functional models.

`build_resnet(depth, ...)` maps images `[batch, H, W, C]` (floats in [0, 1], no normalisation
baked in) to globally average-pooled features `[batch, feature_dim(depth, width_multiplier)]`,
always float32 (also under a mixed precision policy).

Layer names, hence variable paths `<layer name>/<variable name>` (e.g.
`block_group2_block0_batch_norm1/gamma`), so that optimisers can match them:

    stem_conv, stem_batch_norm, stem_max_pool (standard stem only)
    block_group{g}_block{b}_conv{i}, block_group{g}_block{b}_batch_norm{i}
        g = 1..4, b = 0.., i = 1..2 (basic blocks) or 1..3 (bottleneck blocks)
    block_group{g}_block{b}_projection_conv, block_group{g}_block{b}_projection_batch_norm
    stem_stop_gradient / block_group{k}_stop_gradient (only when fine_tune_after_block >= 0)
    final_avg_pool

Every batch norm layer name contains `batch_norm` (variables gamma, beta, moving_mean,
moving_variance) and every convolution name contains `conv` (variable kernel; convolutions have
no bias). Zero-padding and activation layers have no variables.

As SimCLR: kernels use `VarianceScaling()` (fan-in, truncated normal, scale 1), the last batch
norm of each block starts with gamma = 0, strided convs pad (k - 1) // 2 before and the rest
after then use 'valid', the stem max-pool uses 'same'. Unlike SimCLR, a block has a projection
shortcut only when its stride or channel count changes (so not block_group1_block0 of 18/34).
Batch norm is `batch_norm.BatchNormalization` (fused in training, replica-averaged moving
statistics); `global_bn=True` synchronises it: statistics all-reduced over the replicas of a
tf.distribute strategy (plain batch norm without one).
"""

import math
import numbers

import keras

from tf_sogclr.config import RESNET_DEPTHS
from tf_sogclr.models.batch_norm import batch_norm_layer


# depth -> (uses bottleneck blocks, blocks per group).
_LAYOUTS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}
_GROUP_FILTERS = (64, 128, 256, 512)
_BOTTLENECK_EXPANSION = 4


@keras.saving.register_keras_serializable(package="tf_sogclr")
class StopGradient(keras.layers.Layer):
    """Identity whose gradient is zero: `[batch, ...] -> [batch, ...]`."""

    def call(self, inputs):
        return keras.ops.stop_gradient(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def feature_dim(depth, width_multiplier=1.0):
    """Size of the pooled features of `build_resnet(depth, width_multiplier)`.

    That is `round(512 * width_multiplier)`, times 4 for bottleneck depths (50, 101, 152).
    """
    _check_depth(depth)
    _check_width(width_multiplier)
    bottleneck, _ = _LAYOUTS[depth]
    channels = _scaled(_GROUP_FILTERS[-1], width_multiplier)
    return channels * _BOTTLENECK_EXPANSION if bottleneck else channels


def build_resnet(
    depth,
    width_multiplier=1.0,
    small_image_stem=False,
    global_bn=False,
    batch_norm_decay=0.9,
    fine_tune_after_block=-1,
    input_shape=None,
    name="resnet",
):
    """Build a ResNet v1 encoder: images `[batch, H, W, C]` -> features `[batch, feature_dim]`.

    `fine_tune_after_block` k freezes the stem (k >= 0) and block groups 1..k (non-trainable
    variables, batch norm in inference mode, stop_gradient on their output); -1 trains all.
    """
    _check_depth(depth)
    _check_width(width_multiplier)
    _check_bool("small_image_stem", small_image_stem)
    _check_bool("global_bn", global_bn)
    if (
        isinstance(batch_norm_decay, bool)
        or not isinstance(batch_norm_decay, numbers.Real)
        or not 0.0 <= batch_norm_decay < 1.0
    ):
        raise ValueError(
            f"batch_norm_decay must be a float in [0, 1), got {batch_norm_decay!r}."
        )
    if (
        isinstance(fine_tune_after_block, bool)
        or not isinstance(fine_tune_after_block, numbers.Integral)
        or not -1 <= fine_tune_after_block <= 4
    ):
        raise ValueError(
            "fine_tune_after_block must be an int in [-1, 4] (-1: train everything, 0: "
            "freeze the stem, k: freeze the stem and block groups 1..k), got "
            f"{fine_tune_after_block!r}."
        )
    depth, fine_tune_after_block = int(depth), int(fine_tune_after_block)
    input_shape = _check_input_shape(input_shape)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}.")

    bottleneck, blocks_per_group = _LAYOUTS[depth]
    builder = _Builder(
        batch_norm_decay=float(batch_norm_decay), global_bn=global_bn
    )

    images = keras.Input(shape=input_shape, name="images")
    # Frozen parts are built with trainable=False, so their batch norms use moving statistics.
    trainable = fine_tune_after_block < 0
    x = _stem(
        builder, images, _scaled(64, width_multiplier), small_image_stem, trainable
    )
    if fine_tune_after_block == 0:
        x = StopGradient(name="stem_stop_gradient")(x)

    block_fn = _bottleneck_block if bottleneck else _basic_block
    for group, (num_blocks, filters) in enumerate(
        zip(blocks_per_group, _GROUP_FILTERS), start=1
    ):
        trainable = fine_tune_after_block < group
        filters = _scaled(filters, width_multiplier)
        for block in range(num_blocks):
            x = block_fn(
                builder,
                x,
                filters,
                strides=2 if (block == 0 and group > 1) else 1,
                prefix=f"block_group{group}_block{block}",
                trainable=trainable,
            )
        if fine_tune_after_block == group:
            x = StopGradient(name=f"block_group{group}_stop_gradient")(x)

    # dtype="float32" casts mixed-precision activations once, before the (cheap) mean.
    features = keras.layers.GlobalAveragePooling2D(
        data_format="channels_last", dtype="float32", name="final_avg_pool"
    )(x)
    return keras.Model(images, features, name=name)


class _Builder:
    """Creates the conv and batch norm layers with the encoder-wide settings."""

    def __init__(self, batch_norm_decay, global_bn):
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = global_bn

    def conv(self, x, filters, kernel_size, strides, name, trainable):
        """Conv without bias; strided convs zero-pad (k - 1) split low/high, then 'valid'."""
        if strides > 1 and kernel_size > 1:
            total = kernel_size - 1
            low, high = total // 2, total - total // 2
            x = keras.layers.ZeroPadding2D(
                ((low, high), (low, high)),
                data_format="channels_last",
                name=f"{name}_padding",
            )(x)
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same" if strides == 1 else "valid",
            data_format="channels_last",
            use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(),
            trainable=trainable,
            name=name,
        )(x)

    def batch_norm(self, x, name, trainable, relu=True, init_zero=False):
        """Batch norm (gamma zero-initialised if `init_zero`), optionally followed by ReLU."""
        x = batch_norm_layer(
            name,
            self.batch_norm_decay,
            self.global_bn,
            gamma_initializer="zeros" if init_zero else "ones",
            trainable=trainable,
        )(x)
        if relu:
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
        return x


def _stem(builder, x, filters, small_image_stem, trainable):
    if small_image_stem:
        x = builder.conv(x, filters, 3, 1, "stem_conv", trainable)
        return builder.batch_norm(x, "stem_batch_norm", trainable)
    x = builder.conv(x, filters, 7, 2, "stem_conv", trainable)
    x = builder.batch_norm(x, "stem_batch_norm", trainable)
    return keras.layers.MaxPooling2D(
        3, strides=2, padding="same", data_format="channels_last", name="stem_max_pool"
    )(x)


def _shortcut(builder, x, out_channels, strides, prefix, trainable):
    if strides == 1 and x.shape[-1] == out_channels:
        return x
    x = builder.conv(
        x, out_channels, 1, strides, f"{prefix}_projection_conv", trainable
    )
    return builder.batch_norm(
        x, f"{prefix}_projection_batch_norm", trainable, relu=False
    )


def _basic_block(builder, x, filters, strides, prefix, trainable):
    shortcut = _shortcut(builder, x, filters, strides, prefix, trainable)
    x = builder.conv(x, filters, 3, strides, f"{prefix}_conv1", trainable)
    x = builder.batch_norm(x, f"{prefix}_batch_norm1", trainable)
    x = builder.conv(x, filters, 3, 1, f"{prefix}_conv2", trainable)
    x = builder.batch_norm(
        x, f"{prefix}_batch_norm2", trainable, relu=False, init_zero=True
    )
    x = keras.layers.Add(name=f"{prefix}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu")(x)


def _bottleneck_block(builder, x, filters, strides, prefix, trainable):
    out_channels = filters * _BOTTLENECK_EXPANSION
    shortcut = _shortcut(builder, x, out_channels, strides, prefix, trainable)
    x = builder.conv(x, filters, 1, 1, f"{prefix}_conv1", trainable)
    x = builder.batch_norm(x, f"{prefix}_batch_norm1", trainable)
    x = builder.conv(x, filters, 3, strides, f"{prefix}_conv2", trainable)
    x = builder.batch_norm(x, f"{prefix}_batch_norm2", trainable)
    x = builder.conv(x, out_channels, 1, 1, f"{prefix}_conv3", trainable)
    x = builder.batch_norm(
        x, f"{prefix}_batch_norm3", trainable, relu=False, init_zero=True
    )
    x = keras.layers.Add(name=f"{prefix}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu")(x)


def _scaled(channels, width_multiplier):
    return max(1, int(round(channels * width_multiplier)))


def _check_depth(depth):
    if isinstance(depth, bool) or depth not in RESNET_DEPTHS:
        raise ValueError(f"depth must be one of {RESNET_DEPTHS}, got {depth!r}.")


def _check_width(width_multiplier):
    if (
        isinstance(width_multiplier, bool)
        or not isinstance(width_multiplier, numbers.Real)
        or not math.isfinite(width_multiplier)
        or width_multiplier <= 0
    ):
        raise ValueError(
            f"width_multiplier must be a finite number > 0, got {width_multiplier!r}."
        )


def _check_bool(argument, value):
    if not isinstance(value, bool):
        raise ValueError(f"{argument} must be True or False, got {value!r}.")


def _check_input_shape(input_shape):
    if input_shape is None:
        return (None, None, 3)
    message = (
        "input_shape must be None or (height, width, channels) with height and width "
        f"None or ints >= 1 and channels an int >= 1, got {input_shape!r}."
    )
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(message) from None

    def ok(dim, allow_none):
        if dim is None:
            return allow_none
        return isinstance(dim, numbers.Integral) and not isinstance(dim, bool) and dim >= 1

    if len(shape) != 3 or not (ok(shape[0], True) and ok(shape[1], True)):
        raise ValueError(message)
    if not ok(shape[2], False):
        raise ValueError(message)
    return tuple(None if dim is None else int(dim) for dim in shape)
