"""SimCLR v2's colour distortions and Gaussian blur on batches, one parameter draw per image.

Semantics follow google-research/simclr `tf2/data_util.py`: multiplicative brightness,
contrast, saturation and hue in a random order per image (each with probability p), grayscale,
and a separable blur with one sigma per image. The `*_planar` functions take and return
channel-major `[b, C, H, W]` float32 in [0, 1] (`image_ops.to_planar`); the others take
TensorFlow's `[b, H, W, C]`. Saturation and hue are `tf.image.adjust_saturation` /
`adjust_hue` in closed form with element-wise ops (no HSV round trip).
"""

from __future__ import annotations

import tensorflow as tf

from tf_sogclr.data import image_ops

COLOR_JITTER_PROBABILITY = 0.8
GRAYSCALE_PROBABILITY = 0.2
BLUR_PROBABILITY = 0.5
BLUR_SIGMA_RANGE = (0.1, 2.0)
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)  # as tf.image.rgb_to_grayscale


def _brightness(x, factor):  # SimCLR v2: multiplicative.
    return x * factor[:, None, None, None]


def _contrast(x, factor):  # tf.image.adjust_contrast: about the per-channel mean.
    mean = tf.reduce_mean(x, axis=[2, 3], keepdims=True)
    return (x - mean) * factor[:, None, None, None] + mean


def _saturation(x, factor):
    # tf.image.adjust_saturation (S *= factor in HSV, clipped to 1) in closed form: with hue and
    # value fixed, every channel's distance to the value scales with S.
    red, green, blue = tf.unstack(x, axis=1)
    value = tf.maximum(red, tf.maximum(green, blue))
    chroma = value - tf.minimum(red, tf.minimum(green, blue))
    ratio = tf.minimum(factor[:, None, None], value / tf.maximum(chroma, 1e-12))[:, None]
    value = value[:, None]
    return value - (value - x) * ratio


def _hue(x, delta):
    # tf.image.adjust_hue (H += delta in HSV, wrapped) with element-wise ops only.
    red, green, blue = tf.unstack(x, axis=1)
    value = tf.maximum(red, tf.maximum(green, blue))
    chroma = value - tf.minimum(red, tf.minimum(green, blue))
    inverse = 1.0 / tf.maximum(chroma, 1e-12)  # chroma 0: grey, hue irrelevant.
    hue6 = tf.where(
        value == red, (green - blue) * inverse,
        tf.where(value == green, (blue - red) * inverse + 2.0, (red - green) * inverse + 4.0))
    hue6 = hue6 + 6.0 * delta[:, None, None]
    hue6 = hue6 - 6.0 * tf.floor(hue6 * (1.0 / 6.0))  # [0, 6)
    # HSV -> RGB: channel k = value - chroma * clip(min(t, 4 - t), 0, 1), t = (n_k + H6) mod 6.
    t = hue6[:, None] + tf.constant([5.0, 3.0, 1.0])[None, :, None, None]
    t = tf.where(t >= 6.0, t - 6.0, t)
    weight = tf.clip_by_value(tf.minimum(t, 4.0 - t), 0.0, 1.0)
    return value[:, None] - chroma[:, None] * weight


def grayscale_planar(x):
    """[b, 3, H, W] -> its luma in all three channels, as `tf.image.rgb_to_grayscale`."""
    weights = tf.constant(GRAYSCALE_WEIGHTS)[None, :, None, None]
    gray = tf.reduce_sum(x * weights, axis=1, keepdims=True)
    return tf.tile(gray, [1, 3, 1, 1])


def adjust_saturation(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """`tf.image.adjust_saturation` with one factor per image: [b, H, W, 3], [b] -> [b, H, W, 3]."""
    return image_ops.to_interleaved(_saturation(image_ops.to_planar(images), factor))


def adjust_hue(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """`tf.image.adjust_hue` with one delta per image: [b, H, W, 3], [b] -> [b, H, W, 3]."""
    return image_ops.to_interleaved(_hue(image_ops.to_planar(images), delta))


def color_jitter_planar(x, strength, seed, probability=COLOR_JITTER_PROBABILITY):
    """`color_jitter` on channel-major [b, C, H, W]."""
    channels = x.shape[1]
    batch = tf.shape(x)[0]
    # SimCLR's factor ranges, floored at 0 (tf.image's contrast and saturation reject < 0).
    lo, hi = max(1.0 - 0.8 * strength, 0.0), 1.0 + 0.8 * strength
    seeds = image_ops.split_seed(seed, 6)
    ops = [(_brightness, image_ops.uniform([batch], seeds[0], lo, hi)),
           (_contrast, image_ops.uniform([batch], seeds[1], lo, hi))]
    if channels == 3:
        ops += [(_saturation, image_ops.uniform([batch], seeds[2], lo, hi)),
                (_hue, image_ops.uniform([batch], seeds[3], -0.2 * strength, 0.2 * strength))]
    num_ops = len(ops)
    # Row i of `order` is a random permutation of the ops for image i; images left alone
    # (probability 1 - p) take the identity op, id num_ops, at every step.
    order = tf.argsort(image_ops.uniform([batch, num_ops], seeds[4]), axis=1)
    order = tf.where(image_ops.uniform([batch, 1], seeds[5]) < probability, order, num_ops)
    positions = tf.range(batch)
    for step in range(num_ops):
        op_ids = order[:, step]
        parts = tf.dynamic_partition(x, op_ids, num_ops + 1)
        part_positions = tf.dynamic_partition(positions, op_ids, num_ops + 1)
        outputs = []
        for op_id, (op, factor) in enumerate(ops):
            part_factor = tf.dynamic_partition(factor, op_ids, num_ops + 1)[op_id]
            outputs.append(tf.clip_by_value(op(parts[op_id], part_factor), 0.0, 1.0))
        outputs.append(parts[num_ops])
        x = tf.ensure_shape(tf.dynamic_stitch(part_positions, outputs), x.shape)
    return x


def color_jitter(images, strength: float, seed, probability=COLOR_JITTER_PROBABILITY):
    """SimCLR v2 colour jitter of [b, H, W, C] in [0, 1], each image jittered with `probability`.

    Brightness x*U(1-0.8s, 1+0.8s), contrast and saturation U(1-0.8s, 1+0.8s), hue +U(-0.2s, 0.2s),
    in a random order per image, clipped to [0, 1] after each; C=1: brightness and contrast only.
    """
    planar = image_ops.to_planar(images)
    return image_ops.to_interleaved(color_jitter_planar(planar, strength, seed, probability))


# --------------------------------------------------------------------------- blur


def blur_planar(x, sigma, kernel_size):
    """`gaussian_blur` on channel-major [b, C, H, W]."""
    radius = kernel_size // 2
    if radius == 0:
        return x
    shape = tf.shape(x)
    batch, channels, height, width = shape[0], x.shape[1], shape[2], shape[3]
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-tf.square(taps)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # [b, taps]
    kernel = tf.transpose(tf.repeat(kernel, channels, axis=0))  # [taps, b*C]
    # One depthwise convolution per axis with the b*C (image, channel) planes as channels.
    stacked = tf.transpose(tf.reshape(x, [-1, height, width]), [1, 2, 0])[None]
    stacked = tf.nn.depthwise_conv2d(
        stacked, kernel[:, None, :, None], strides=[1, 1, 1, 1], padding="SAME")
    stacked = tf.nn.depthwise_conv2d(
        stacked, kernel[None, :, :, None], strides=[1, 1, 1, 1], padding="SAME")
    return tf.reshape(tf.transpose(stacked[0], [2, 0, 1]), [batch, channels, height, width])


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Gaussian blur of [b, H, W, C] with one sigma [b] per image, zero padding ('SAME').

    As SimCLR: radius kernel_size // 2, 2 * radius + 1 taps, separable.
    """
    return image_ops.to_interleaved(blur_planar(image_ops.to_planar(images), sigma, kernel_size))


def random_blur_planar(x, seed, kernel_size, probability=BLUR_PROBABILITY):
    """Blurs each image of [b, C, H, W] with `probability`, sigma ~ U(BLUR_SIGMA_RANGE)."""
    seeds = image_ops.split_seed(seed, 2)
    batch = tf.shape(x)[0]
    sigma = image_ops.uniform([batch], seeds[0], *BLUR_SIGMA_RANGE)
    blur = image_ops.uniform([batch], seeds[1]) < probability
    return image_ops.apply_to_subset(
        lambda part, s: tf.clip_by_value(blur_planar(part, s, kernel_size), 0.0, 1.0),
        x, blur, sigma)
