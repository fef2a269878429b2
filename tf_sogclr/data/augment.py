"""SimCLR's image augmentations, vectorised over a batch.

Semantics follow google-research/simclr `tf2/data_util.py` (the `simclrv2` colour jitter). Every
image of a batch draws its own random parameters, but each operation runs once per batch, so
the augmentation is a few dozen batched ops inside one `tf.data.Dataset.map` after `batch`.
Randomness is stateless: a call is a pure function of (images, seed [2]), so a seeded input
pipeline is reproducible at any parallelism.

Speed (batch 256, two views, one CPU core): ~7k examples/s at 32x32x3 and ~30k at 28x28x1,
against ~2.4k and ~7.5k for SimCLR's per-example map. How: the horizontal flip is folded into
the crop (a box with x1 > x2 is a mirrored crop); colour ops run on channel-major
[b, C, H, W] tensors, where a channel is a contiguous plane (TF's NHWC `rgb_to_hsv` and
last-axis stacking are 10x slower than plain element-wise ops); the random per-image order of
the jitter ops is applied with `dynamic_partition` / `dynamic_stitch`, so each image pays for
its own ops only.

Keras 3 / keras-cv layers are not used because their semantics differ from SimCLR: additive
brightness (SimCLR v2 multiplies), a fixed jitter order (SimCLR draws one per image), a
saturation factor mapped through f/(1-f), keras-cv's crop that clips boxes instead of
rejecting them, a blur with one sigma per batch and per axis. Measured batched in tf.data they
were also slower: Keras 3 flip + jitter + grayscale ~1.7k examples/s, keras-cv's crop alone ~1.7k.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tf_sogclr.data import color, image_ops

CROP_PROPORTION = 0.875  # SimCLR's eval centre crop for large images.


# --------------------------------------------------------------------------- crop and flip


def sample_crop_boxes(
    image_height,
    image_width,
    batch_size,
    seed: tf.Tensor,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    max_attempts: int = 100,
) -> tf.Tensor:
    """Per-image crop boxes [batch, 4] int32 (offset_y, offset_x, height, width).

    Vectorised `tf.image.sample_distorted_bounding_box`, its integer-pixel rules included: up to
    `max_attempts` draws per image, the first valid one wins, else the whole image.
    """
    height_f = tf.cast(image_height, tf.float32)
    width_f = tf.cast(image_width, tf.float32)
    seeds = image_ops.split_seed(seed, 3)
    shape = [batch_size, max_attempts]
    aspect = image_ops.uniform(shape, seeds[0], aspect_ratio_range[0], aspect_ratio_range[1])
    min_area = area_range[0] * height_f * width_f
    max_area = area_range[1] * height_f * width_f

    crop_h = tf.round(tf.sqrt(min_area / aspect))
    max_h = tf.round(tf.sqrt(max_area / aspect))
    too_wide = tf.round(max_h * aspect) > width_f
    max_h = tf.where(too_wide, tf.floor((width_f + 0.5 - 1e-7) / aspect), max_h)
    max_h = tf.where(too_wide & (tf.round(max_h * aspect) > width_f), max_h - 1.0, max_h)
    max_h = tf.minimum(max_h, height_f)
    crop_h = tf.minimum(crop_h, max_h)
    crop_h = tf.minimum(
        crop_h + tf.floor(image_ops.uniform(shape, seeds[1]) * (max_h - crop_h + 1.0)), max_h)
    crop_w = tf.round(crop_h * aspect)
    crop_h = tf.where(crop_w * crop_h < min_area, crop_h + 1.0, crop_h)
    crop_w = tf.round(crop_h * aspect)
    crop_h = tf.where(crop_w * crop_h > max_area, crop_h - 1.0, crop_h)
    crop_w = tf.round(crop_h * aspect)
    area = crop_w * crop_h
    valid = ((area >= min_area) & (area <= max_area) & (crop_w <= width_f)
             & (crop_h <= height_f) & (crop_w > 0.0) & (crop_h > 0.0))

    first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(valid, axis=1)
    crop_h = tf.where(found, tf.gather(crop_h, first, batch_dims=1), height_f)
    crop_w = tf.where(found, tf.gather(crop_w, first, batch_dims=1), width_f)
    offset = image_ops.uniform([batch_size, 2], seeds[2])
    offset_y = tf.minimum(tf.floor(offset[:, 0] * (height_f - crop_h + 1.0)), height_f - crop_h)
    offset_x = tf.minimum(tf.floor(offset[:, 1] * (width_f - crop_w + 1.0)), width_f - crop_w)
    return tf.cast(tf.stack([offset_y, offset_x, crop_h, crop_w], axis=1), tf.int32)


def crop_and_resize(
    images: tf.Tensor, boxes: tf.Tensor, image_size: int, flip: tf.Tensor | None = None
) -> tf.Tensor:
    """Crops box i of `boxes` [b, 4] (offset_y, offset_x, h, w) from image i of [b, H, W, C].

    Bilinear resize to [b, S, S, C] float32 in [0, 1] (uint8 input is rescaled); sample points
    run from the first to the last pixel centre of each box; `flip` [b] bool mirrors crops.
    """
    shape = tf.shape(images)
    last_y = tf.cast(tf.maximum(shape[1] - 1, 1), tf.float32)
    last_x = tf.cast(tf.maximum(shape[2] - 1, 1), tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    y1, x1 = boxes[:, 0], boxes[:, 1]
    y2, x2 = y1 + boxes[:, 2] - 1.0, x1 + boxes[:, 3] - 1.0
    if flip is not None:  # crop_and_resize mirrors a box whose x1 > x2.
        x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
    normalised = tf.stack([y1 / last_y, x1 / last_x, y2 / last_y, x2 / last_x], axis=1)
    crops = tf.image.crop_and_resize(
        images, normalised, tf.range(shape[0]), [image_size, image_size], method="bilinear")
    if images.dtype == tf.uint8:
        crops = crops * (1.0 / 255.0)
    return tf.clip_by_value(crops, 0.0, 1.0)


# --------------------------------------------------------------------------- views


@dataclasses.dataclass(frozen=True)
class SimCLRAugment:
    """SimCLR training view: [b, H, W, C] uint8 or [0, 1] float -> [b, S, S, C] float32 in [0, 1].

    Random resized crop (area [crop_area_min, 1], aspect [3/4, 4/3], bilinear), flip, colour
    jitter (p 0.8) and grayscale (p 0.2) if `color_distort`, blur (p 0.5) if `use_blur`.
    """

    image_size: int
    channels: int = 3
    crop_area_min: float = 0.08
    color_jitter_strength: float = 0.5
    use_blur: bool = False
    crop: bool = True
    flip: bool = True
    color_distort: bool = True

    # Crop: SimCLR's `sample_distorted_bounding_box` call also passes min_object_covered=0.1,
    # which (the whole image being the box) rejects crops under 10% of the area, so its
    # effective area range is [0.1, 1]: pass crop_area_min=0.1 to match it. When all 100
    # attempts fail the whole image is used (TF's rule). SimCLR resizes bicubically; we resample
    # bilinearly with `crop_and_resize` (one op per batch). Blur: one sigma per image (SimCLR's
    # batch_random_blur draws one per batch). One core makes ~220 views/s at 224x224x3 with blur.

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 2:
            raise ValueError(f"image_size must be an int >= 2, got {self.image_size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if not 0.0 < self.crop_area_min <= 1.0:
            raise ValueError(f"crop_area_min must lie in (0, 1], got {self.crop_area_min!r}")
        if not 0.0 <= self.color_jitter_strength <= 2.5:
            raise ValueError(
                "color_jitter_strength must lie in [0, 2.5] (hue shift 0.2*s <= 0.5), "
                f"got {self.color_jitter_strength!r}")

    @property
    def blur_kernel_size(self) -> int:
        """SimCLR's blur kernel size: 10% of the image side."""
        return self.image_size // 10

    def get_config(self) -> dict:
        """The constructor arguments as a plain dict."""
        return dataclasses.asdict(self)

    def _check(self, images: tf.Tensor) -> None:
        if images.shape.rank != 4 or images.shape[-1] != self.channels:
            raise ValueError(
                f"images must have shape [batch, height, width, {self.channels}] "
                f"(channels={self.channels}), got {images.shape}")

    def _crop_and_flip_planar(self, images, seed):
        seeds = image_ops.split_seed(seed, 2)
        shape = tf.shape(images)
        flip = None
        if self.flip:
            flip = image_ops.uniform([shape[0]], seeds[1]) < 0.5
        if self.crop:
            boxes = sample_crop_boxes(shape[1], shape[2], shape[0], seeds[0],
                                      area_range=(self.crop_area_min, 1.0))
            return image_ops.to_planar(crop_and_resize(images, boxes, self.image_size, flip))
        x = image_ops.to_planar(image_ops.resize(images, self.image_size))
        if flip is not None:
            x = image_ops.apply_to_subset(lambda part: tf.reverse(part, axis=[3]), x, flip)
        return x

    def _distort_planar(self, x, seed):
        seeds = image_ops.split_seed(seed, 3)
        if self.color_distort:
            if self.color_jitter_strength > 0:
                x = color.color_jitter_planar(
                    x, self.color_jitter_strength, seeds[0], color.COLOR_JITTER_PROBABILITY)
            if self.channels == 3:
                draws = image_ops.uniform([tf.shape(x)[0]], seeds[1])
                gray = draws < color.GRAYSCALE_PROBABILITY
                x = image_ops.apply_to_subset(color.grayscale_planar, x, gray)
        if self.use_blur:
            x = color.random_blur_planar(x, seeds[2], self.blur_kernel_size,
                                         color.BLUR_PROBABILITY)
        return x

    def _finish(self, x):
        images = image_ops.to_interleaved(tf.clip_by_value(x, 0.0, 1.0))
        return tf.ensure_shape(images, [None, self.image_size, self.image_size, self.channels])

    def crop_and_flip(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """First stage only: [b, H, W, C] -> cropped, resized, flipped [b, S, S, C] float32."""
        self._check(images)
        return self._finish(self._crop_and_flip_planar(images, seed))

    def distort(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Second stage only: colour and blur of [b, S, S, C] float32 in [0, 1]; same shape."""
        self._check(images)
        return self._finish(self._distort_planar(image_ops.to_planar(images), seed))

    def __call__(self, images: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
        """One augmented view [b, S, S, C] float32 in [0, 1]; `seed` [2] (None: a fresh one)."""
        self._check(images)
        seed = image_ops.random_seed() if seed is None else seed
        crop_seed, distort_seed = image_ops.split_seed(seed, 2)
        x = self._crop_and_flip_planar(images, crop_seed)
        return self._finish(self._distort_planar(x, distort_seed))


def preprocess_for_eval(
    images: tf.Tensor, image_size: int, crop_proportion: float | None = None
) -> tf.Tensor:
    """Deterministic eval view: [b, H, W, C] uint8 or float -> [b, S, S, C] float32 in [0, 1].

    As SimCLR: a centred square of `crop_proportion` x the shorter side (default 0.875 when
    S > 32, else 1.0: CIFAR-size images are not cropped), bicubic resize to S unless it fits.
    """
    if crop_proportion is None:
        crop_proportion = CROP_PROPORTION if image_size > 32 else 1.0
    if not 0.0 < crop_proportion <= 1.0:
        raise ValueError(f"crop_proportion must lie in (0, 1], got {crop_proportion!r}")
    if images.shape.rank != 4:
        raise ValueError(
            f"images must have shape [batch, height, width, channels], got {images.shape}")
    if crop_proportion < 1.0:
        shape = tf.shape(images)
        shorter = tf.cast(tf.minimum(shape[1], shape[2]), tf.float32)
        side = tf.cast(tf.math.rint(crop_proportion * shorter), tf.int32)
        offset_y = (shape[1] - side + 1) // 2
        offset_x = (shape[2] - side + 1) // 2
        images = images[:, offset_y:offset_y + side, offset_x:offset_x + side, :]
    return image_ops.resize(images, image_size)
