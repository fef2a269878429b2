"""Batch primitives of the augmentations: stateless randomness, dtype, layout, masked subsets.

Every op of `data.augment` and `data.color` runs once per batch with per-image parameters.
Colour ops run on channel-major `[b, C, H, W]` tensors (`to_planar`), where a channel is a
contiguous plane: element-wise ops there are about 10x faster than TF's NHWC colour ops.
An op applied to a random subset of a batch (`apply_to_subset`) runs on that subset only.
"""

from __future__ import annotations

import tensorflow as tf


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    """Splits a [2] stateless seed into `num` independent [2] seeds."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def uniform(shape, seed, minval=0.0, maxval=1.0) -> tf.Tensor:
    """Stateless U(minval, maxval) draws of `shape` from a [2] seed."""
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval)


def random_seed() -> tf.Tensor:
    """A fresh [2] int32 seed from TensorFlow's global random generator (not reproducible)."""
    return tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)


def to_float(images: tf.Tensor) -> tf.Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]; float input is only cast."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) * (1.0 / 255.0)
    return tf.cast(images, tf.float32)


def to_planar(images: tf.Tensor) -> tf.Tensor:
    """Channel-major layout: [b, H, W, C] -> [b, C, H, W] (a channel is a contiguous plane)."""
    if images.shape[-1] == 1:
        return tf.expand_dims(images[..., 0], 1)
    return tf.transpose(images, [0, 3, 1, 2])


def to_interleaved(x: tf.Tensor) -> tf.Tensor:
    """Back to TensorFlow's image layout: [b, C, H, W] -> [b, H, W, C]."""
    if x.shape[1] == 1:
        return tf.expand_dims(x[:, 0], -1)
    return tf.transpose(x, [0, 2, 3, 1])


def apply_to_subset(fn, x: tf.Tensor, mask: tf.Tensor, *per_image: tf.Tensor) -> tf.Tensor:
    """Returns x with x[mask] replaced by fn(x[mask], *per_image[mask]); mask is [b] bool."""
    ids = tf.cast(mask, tf.int32)
    positions = tf.dynamic_partition(tf.range(tf.shape(x)[0]), ids, 2)
    parts = tf.dynamic_partition(x, ids, 2)
    args = [tf.dynamic_partition(a, ids, 2)[1] for a in per_image]
    out = tf.dynamic_stitch(positions, [parts[0], fn(parts[1], *args)])
    return tf.ensure_shape(out, x.shape)


def resize(images: tf.Tensor, image_size: int, method: str = "bicubic") -> tf.Tensor:
    """[b, H, W, C] uint8 or float -> [b, S, S, C] float32 in [0, 1]; no resampling if H = W = S."""
    images = to_float(images)
    if images.shape[1] == image_size and images.shape[2] == image_size:
        return images
    return tf.clip_by_value(
        tf.image.resize(images, [image_size, image_size], method=method), 0.0, 1.0)
