"""Tests of tf_sogclr.evaluation.linear_probe and frozen_features (k-NN + probe, raw pixels)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr.evaluation import frozen_features, knn, linear_probe


def _blobs(count, rng, num_classes=4, dim=6, spread=0.3):
    """Gaussian blobs around `num_classes` random centres: features [count, dim], labels."""
    centres = np.random.default_rng(0).normal(size=(num_classes, dim)) * 3.0
    labels = rng.integers(0, num_classes, count)
    return (centres[labels] + spread * rng.normal(size=(count, dim))).astype(np.float32), labels


def test_probe_separates_separable_classes_and_is_deterministic():
    rng = np.random.default_rng(1)
    train_x, train_y = _blobs(400, rng)
    test_x, test_y = _blobs(200, rng)
    first = linear_probe.linear_probe(train_x, train_y, test_x, test_y, 4)
    assert first == {"top1": 1.0, "train_top1": 1.0}
    # Zero-initialised and full-batch: the same features give the same probe.
    noisy_x, noisy_y = _blobs(400, rng, spread=3.0)
    runs = [linear_probe.linear_probe(noisy_x, noisy_y, test_x, test_y, 4) for _ in range(2)]
    assert runs[0] == runs[1] and 0.25 < runs[0]["train_top1"] < 1.0


def test_probe_is_invariant_to_feature_scale_and_offset():
    # Features are standardised first: an affine change of every dimension changes nothing.
    rng = np.random.default_rng(2)
    train_x, train_y = _blobs(300, rng, spread=2.0)
    test_x, test_y = _blobs(100, rng, spread=2.0)
    scale, offset = np.arange(1, 7, dtype=np.float32) * 10.0, np.float32(5.0)
    a = linear_probe.linear_probe(train_x, train_y, test_x, test_y, 4)
    b = linear_probe.linear_probe(train_x * scale + offset, train_y, test_x * scale + offset,
                                  test_y, 4)
    assert a["top1"] == pytest.approx(b["top1"], abs=0.011)
    assert a["train_top1"] == pytest.approx(b["train_top1"], abs=0.011)


@pytest.mark.parametrize("argument, value, message", [
    ("num_classes", 0, "num_classes must be an integer >= 1"),
    ("steps", 0, "steps must be an integer >= 1"),
    ("learning_rate", 0.0, "learning_rate must be a number > 0"),
    ("l2", -1.0, "l2 must be a number in"),
])
def test_probe_bad_arguments_name_themselves(argument, value, message):
    x, y = _blobs(8, np.random.default_rng(3))
    kwargs = {"num_classes": 4, argument: value}
    with pytest.raises(ValueError, match=message):
        linear_probe.linear_probe(x, y, x, y, **kwargs)
    with pytest.raises(ValueError, match="one f"):
        linear_probe.linear_probe(x, y, x[:, :3], y, 4)


def _image_batches(images, labels, batch=16):
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(batch)


def test_raw_pixels_are_scored_with_the_encoders_protocol():
    rng = np.random.default_rng(4)
    labels = np.arange(192) % 3
    images = rng.uniform(0.0, 0.2, size=(192, 6, 6, 1)).astype(np.float32)
    for c in range(3):  # class c: a bright 2x2 square in place c
        images[labels == c, 2 * c:2 * c + 2, 2 * c:2 * c + 2, 0] += 0.8
    assert frozen_features.raw_pixels(tf.constant(images)).shape == (192, 36)
    probe = _image_batches(images[:128], labels[:128])
    test = _image_batches(images[128:], labels[128:])
    scores = frozen_features.evaluate(frozen_features.raw_pixels, probe, test, 3, knn_k=5)
    assert set(scores) == {"knn_top1", "linear_probe_top1", "linear_probe_train_top1"}
    assert scores["linear_probe_top1"] == 1.0 and scores["knn_top1"] == 1.0
    # The same numbers as the parts it is made of.
    train_x, train_y = knn.extract_features(frozen_features.raw_pixels, probe, normalize=False)
    test_x, test_y = knn.extract_features(frozen_features.raw_pixels, test, normalize=False)
    train_x, test_x = linear_probe.standardise(train_x, test_x)
    assert np.allclose(np.mean(train_x, 0), 0, atol=1e-5)
    assert scores["knn_top1"] == knn.knn_top1(train_x, train_y, test_x, test_y, 3, k=5)
    assert scores["linear_probe_top1"] == linear_probe.linear_probe(
        train_x, train_y, test_x, test_y, 3)["top1"]
