"""Tests of tf_sogclr.evaluation.zero_shot: zero-shot top-1 and image-to-text recall."""

import numpy as np
import pytest
import tensorflow as tf

import tiny
from tf_sogclr.data import captions
from tf_sogclr.evaluation import zero_shot


def _three_class_images(count, rng):
    """8x8x1 images whose class (0, 1, 2) is a dark, mid or bright square on noise."""
    labels = np.arange(count) % 3
    images = rng.uniform(0.0, 0.3, size=(count, *tiny.IMAGE_SHAPE)).astype(np.float32)
    images[:, 2:6, 2:6, 0] += (0.35 * labels)[:, None, None]
    return images, labels


def test_zero_shot_beats_chance_after_short_training():
    rng = np.random.default_rng(0)
    model = tiny.dual_encoder("sogclr", kind="mlp", optimizer="adam", learning_rate=1e-2,
                       temperature=0.1)
    # 24 pairs seen 40 times (80 steps of 12), with fresh noise and a random template each time.
    images, labels = _three_class_images(40 * tiny.NUM_EXAMPLES, rng)
    prompts = [[t.format(name) for t in captions.TEMPLATES] for name in tiny.CLASS_NAMES]
    texts = [prompts[c][rng.integers(8)] for c in labels]
    data = tf.data.Dataset.from_tensor_slices({
        "image": images, "tokens": model.tokenizer(tf.constant(texts)),
        "index": np.tile(np.arange(tiny.NUM_EXAMPLES, dtype=np.int32), 40)}).batch(12)
    history = model.fit(data, epochs=1, shuffle=False, verbose=0).history
    assert history["bad_steps"][-1] == 0
    test_images, test_labels = _three_class_images(60, rng)
    classifier = zero_shot.class_embeddings(model.encode_text, prompts)
    accuracy = zero_shot.zero_shot_top1(model.encode_image(test_images), test_labels, classifier)
    assert accuracy >= 0.7, accuracy  # chance: 1/3
    scores = model.evaluate(data.take(2), return_dict=True, verbose=0)
    assert 0.0 <= scores["eval_image_to_text_top1"] <= 1.0


def test_recall_counts_ties_in_the_images_favour():
    image = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    recall = zero_shot.image_to_text_recall(image, texts, [0, 1, 2, 2], ks=(1, 2))
    # Image 2's own texts score 0.8 and 0.6: its best (text 2) ties text 1 -> rank 0.
    assert recall == {1: 1.0, 2: 1.0}
    recall = zero_shot.image_to_text_recall(image, texts, [0, 1, 1, 2], ks=(1, 2, 3))
    assert recall == {1: 2 / 3, 2: 2 / 3, 3: 1.0}  # image 2's only text (0.6): rank 2.
    with pytest.raises(ValueError, match="no caption"):
        zero_shot.image_to_text_recall(image, texts, [0, 0, 1, 1])
