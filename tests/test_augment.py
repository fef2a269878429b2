"""Tests for tf_sogclr.data.augment: SimCLR's augmentations, batched and seeded."""

import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr.data import augment, color, image_ops

SEED = tf.constant([3, 7], tf.int32)


def _images(batch, size, channels, seed=0):
    rng = np.random.RandomState(seed)
    return tf.constant(rng.randint(0, 256, size=(batch, size, size, channels)).astype(np.uint8))


def _half_image(batch, size, channels):
    """Left half black, right half white: a mirrored image is easy to recognise."""
    image = np.zeros((size, size, channels), np.uint8)
    image[:, size // 2:] = 255
    return tf.constant(np.tile(image[None], [batch, 1, 1, 1]))


@pytest.mark.parametrize("channels,size,image_size", [(3, 32, 32), (1, 28, 28), (3, 40, 24)])
def test_view_shape_dtype_range(channels, size, image_size):
    augmenter = augment.SimCLRAugment(image_size=image_size, channels=channels)
    for images in (_images(16, size, channels), image_ops.to_float(_images(16, size, channels))):
        view = augmenter(images, SEED)
        assert view.shape == (16, image_size, image_size, channels)
        assert view.dtype == tf.float32
        assert float(tf.reduce_min(view)) >= 0.0 and float(tf.reduce_max(view)) <= 1.0


def test_blur_view_shape_and_range():
    augmenter = augment.SimCLRAugment(image_size=64, color_jitter_strength=1.0, use_blur=True)
    assert augmenter.blur_kernel_size == 6
    view = augmenter(_images(8, 80, 3), SEED)
    assert view.shape == (8, 64, 64, 3)
    assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 1.0


def test_seeded_call_is_a_pure_function_and_views_differ():
    augmenter = augment.SimCLRAugment(image_size=32)
    images = _images(8, 32, 3)
    first, again = augmenter(images, SEED), augmenter(images, SEED)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    traced = tf.function(lambda x, s: augmenter(x, s))(images, SEED)
    np.testing.assert_allclose(traced.numpy(), first.numpy(), atol=1e-4)  # graph rewrites
    other = augmenter(images, tf.constant([3, 8], tf.int32))
    assert not np.allclose(first.numpy(), other.numpy())
    assert not np.allclose(augmenter(images).numpy(), augmenter(images).numpy())


def test_each_image_gets_its_own_parameters():
    augmenter = augment.SimCLRAugment(image_size=32)
    views = augmenter(tf.tile(_images(1, 32, 3), [16, 1, 1, 1]), SEED).numpy()
    distinct = {views[i].tobytes() for i in range(16)}
    assert len(distinct) == 16


def test_crop_boxes_follow_area_and_aspect_bounds():
    for area_min in (0.08, 0.5):
        boxes = augment.sample_crop_boxes(32, 32, 4096, SEED, area_range=(area_min, 1.0)).numpy()
        offset_y, offset_x, height, width = boxes.T
        area = height * width / 1024.0
        assert area.min() >= area_min and area.max() <= 1.0
        assert (offset_y >= 0).all() and (offset_x >= 0).all()
        assert (offset_y + height <= 32).all() and (offset_x + width <= 32).all()
        # Aspect within [3/4, 4/3] up to the rounding of width = round(height * aspect).
        aspect = width / height
        slack = 0.5 / height.min()
        assert aspect.min() >= 0.75 - slack and aspect.max() <= 4 / 3 + slack
        assert area.min() < area_min + 0.05 and area.max() > 0.95  # the whole range is used
        assert np.unique(offset_x).size > 8  # positions vary


def test_crop_boxes_fall_back_to_the_whole_image():
    # No box of aspect in [3, 4] covering >= 90% of a square image exists.
    boxes = augment.sample_crop_boxes(
        32, 32, 64, SEED, area_range=(0.9, 1.0), aspect_ratio_range=(3.0, 4.0)).numpy()
    np.testing.assert_array_equal(boxes, np.tile([[0, 0, 32, 32]], [64, 1]))


def test_whole_image_crop_is_exact():
    images = _images(4, 20, 3)
    boxes = tf.constant([[0, 0, 20, 20]] * 4)
    crops = augment.crop_and_resize(images, boxes, 20)
    np.testing.assert_allclose(crops.numpy(), image_ops.to_float(images).numpy(), atol=1e-6)
    flipped = augment.crop_and_resize(images, boxes, 20, flip=tf.constant([True, False] * 2))
    np.testing.assert_allclose(flipped[0].numpy(), crops[0, :, ::-1].numpy(), atol=1e-6)
    np.testing.assert_allclose(flipped[1].numpy(), crops[1].numpy(), atol=1e-6)


def test_crop_takes_the_box_region():
    images = image_ops.to_float(_images(1, 16, 1))
    crop = augment.crop_and_resize(images, tf.constant([[2, 5, 8, 8]]), 8)
    np.testing.assert_allclose(crop[0].numpy(), images[0, 2:10, 5:13].numpy(), atol=1e-6)


@pytest.mark.parametrize("crop", [True, False])
def test_flip_probability_is_one_half(crop):
    # crop_area_min=1: the crop is the whole image, so a view is the image or its mirror.
    augmenter = augment.SimCLRAugment(
        image_size=16, crop=crop, crop_area_min=1.0, color_distort=False)
    images = _half_image(2000, 16, 3)
    views = augmenter(images, SEED).numpy()
    original = image_ops.to_float(images).numpy()
    mirrored = np.all(np.isclose(views, original[:, :, ::-1]), axis=(1, 2, 3))
    unchanged = np.all(np.isclose(views, original), axis=(1, 2, 3))
    assert np.all(mirrored ^ unchanged)
    assert 0.45 < mirrored.mean() < 0.55


def test_jitter_and_grayscale_probabilities():
    images = image_ops.to_float(_images(2000, 8, 3))
    jittered = color.color_jitter(images, 1.0, SEED).numpy()
    untouched = np.all(jittered == images.numpy(), axis=(1, 2, 3)).mean()
    assert 0.15 < untouched < 0.25  # p = 0.8
    augmenter = augment.SimCLRAugment(
        image_size=8, crop_area_min=1.0, flip=False, color_jitter_strength=0.0)
    views = augmenter(_images(2000, 8, 3), SEED).numpy()
    gray = np.all((views[..., 0] == views[..., 1]) & (views[..., 1] == views[..., 2]), axis=(1, 2))
    assert 0.16 < gray.mean() < 0.24  # p = 0.2


def test_jitter_factors_lie_in_simclr_ranges():
    # Brightness alone on a constant image: value * factor, factor in [1 - 0.8s, 1 + 0.8s].
    strength = 0.5
    constant = tf.fill([500, 4, 4, 1], 0.5)
    out = color.color_jitter(constant, strength, SEED, probability=1.0).numpy()
    factors = out[:, 0, 0, 0] / 0.5  # contrast leaves a constant image alone
    assert factors.min() >= 1 - 0.8 * strength - 1e-6 and factors.max() <= 1 + 0.8 * strength + 1e-6
    assert factors.min() < 0.65 and factors.max() > 1.35


def test_grayscale_images_are_jittered_by_brightness_and_contrast_only():
    augmenter = augment.SimCLRAugment(image_size=28, channels=1, crop_area_min=1.0, flip=False)
    images = _images(64, 28, 1)
    views = augmenter(images, SEED).numpy()
    original = image_ops.to_float(images).numpy()
    changed = ~np.all(views == original, axis=(1, 2, 3))
    assert 0.6 < changed.mean() <= 1.0  # p = 0.8 (grayscale op is a no-op for C=1)
    # Brightness then contrast keeps pixel ranks within an image (positive factors).
    i = int(np.argmax(changed))
    by_original = views[i].ravel()[np.argsort(original[i].ravel(), kind="stable")]
    assert np.all(np.diff(by_original) >= -1e-6)


def test_colour_ops_match_tf_image():
    rng = np.random.RandomState(1)
    images = np.concatenate([rng.rand(8, 12, 12, 3), np.round(rng.rand(8, 12, 12, 3) * 4) / 4])
    images = tf.constant(images, tf.float32)
    factors = tf.constant(rng.uniform(0.0, 2.0, 16), tf.float32)
    deltas = tf.constant(rng.uniform(-0.5, 0.5, 16), tf.float32)
    saturated = color.adjust_saturation(images, factors).numpy()
    hued = color.adjust_hue(images, deltas).numpy()
    for i in range(16):
        reference = tf.image.adjust_saturation(images[i], factors[i]).numpy()
        np.testing.assert_allclose(saturated[i], reference, atol=2e-6)
        np.testing.assert_allclose(hued[i], tf.image.adjust_hue(images[i], deltas[i]).numpy(),
                                   atol=2e-6)


def test_gaussian_blur_matches_simclr_kernel():
    images = image_ops.to_float(_images(3, 20, 3))
    sigma = tf.constant([0.3, 1.0, 2.0])
    blurred = color.gaussian_blur(images, sigma, kernel_size=6).numpy()
    for i in range(3):  # SimCLR's data_util.gaussian_blur, one image at a time.
        x = tf.range(-3, 4, dtype=tf.float32)
        kernel = tf.exp(-x**2 / (2.0 * sigma[i] ** 2))
        kernel /= tf.reduce_sum(kernel)
        vertical = tf.tile(tf.reshape(kernel, [7, 1, 1, 1]), [1, 1, 3, 1])
        horizontal = tf.tile(tf.reshape(kernel, [1, 7, 1, 1]), [1, 1, 3, 1])
        ref = tf.nn.depthwise_conv2d(images[i:i + 1], vertical, [1, 1, 1, 1], "SAME")
        ref = tf.nn.depthwise_conv2d(ref, horizontal, [1, 1, 1, 1], "SAME")
        np.testing.assert_allclose(blurred[i], ref[0].numpy(), atol=1e-5)


def test_eval_preprocessing_is_deterministic_and_simclr_like():
    small = _images(4, 32, 3)
    out = augment.preprocess_for_eval(small, 32)
    np.testing.assert_array_equal(out.numpy(), augment.preprocess_for_eval(small, 32).numpy())
    np.testing.assert_array_equal(out.numpy(), image_ops.to_float(small).numpy())  # no crop
    large = tf.constant(np.random.RandomState(2).randint(0, 256, (2, 80, 100, 3)), tf.uint8)
    out = augment.preprocess_for_eval(large, 64)
    assert out.shape == (2, 64, 64, 3) and out.dtype == tf.float32
    # Centre square of rint(0.875 * 80) = 70 pixels, offsets (5, 15), bicubic resize.
    reference = tf.image.resize(image_ops.to_float(large[:, 5:75, 15:85]), [64, 64], "bicubic")
    np.testing.assert_allclose(out.numpy(), np.clip(reference.numpy(), 0, 1), atol=1e-6)
    np.testing.assert_array_equal(out.numpy(), augment.preprocess_for_eval(large, 64).numpy())
    resized = augment.preprocess_for_eval(_images(2, 28, 1), 32)
    assert resized.shape == (2, 32, 32, 1)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="channels"):
        augment.SimCLRAugment(image_size=32, channels=2)
    with pytest.raises(ValueError, match="crop_area_min"):
        augment.SimCLRAugment(image_size=32, crop_area_min=0.0)
    with pytest.raises(ValueError, match="color_jitter_strength"):
        augment.SimCLRAugment(image_size=32, color_jitter_strength=3.0)
    with pytest.raises(ValueError, match="image_size"):
        augment.SimCLRAugment(image_size=1)
    with pytest.raises(ValueError, match="channels=3"):
        augment.SimCLRAugment(image_size=28)(_images(2, 28, 1), SEED)
    with pytest.raises(ValueError, match="crop_proportion"):
        augment.preprocess_for_eval(_images(2, 28, 1), 28, crop_proportion=1.5)
