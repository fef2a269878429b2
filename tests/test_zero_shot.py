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


def test_recall_counts_ties_in_the_querys_favour():
    image = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    recall = zero_shot.retrieval_recall(image, texts, [[0, 0], [1, 1], [2, 2], [2, 3]],
                                        ks=(1, 2))
    # Image 2's own texts score 0.8 and 0.6: its best (text 2) ties text 1 -> rank 0.
    assert recall == {1: 1.0, 2: 1.0}
    recall = zero_shot.retrieval_recall(image, texts, [[0, 0], [1, 1], [1, 2], [2, 3]],
                                        ks=(1, 2, 3))
    assert recall == {1: 2 / 3, 2: 2 / 3, 3: 1.0}  # image 2's only text (0.6): rank 2.
    with pytest.raises(ValueError, match=r"queries \[2\] have no relevant"):
        zero_shot.retrieval_recall(image, texts, [[0, 0], [0, 1], [1, 2], [1, 3]])
    with pytest.raises(ValueError, match="must index 3 queries and 4 gallery items"):
        zero_shot.retrieval_recall(image, texts, [[0, 0], [1, 1], [2, 4]])


def test_distinct_captions_pair_each_image_with_each_of_its_strings_once():
    texts = ["a bag", "a shoe", "a bag", "a bag", "a coat"]
    distinct, pairs = zero_shot.distinct_captions(texts, [0, 0, 1, 1, 2])
    assert distinct == ["a bag", "a shoe", "a coat"]
    assert pairs.tolist() == [[0, 0], [0, 1], [1, 0], [2, 2]]
    with pytest.raises(ValueError, match="one image row per text"):
        zero_shot.distinct_captions(texts, [0, 1])


class _LookupEncoder:
    """Maps images (their first pixel: an id) and strings to fixed unit embeddings."""

    def __init__(self, image_vectors, text_vectors):
        self.image_vectors, self.text_vectors = image_vectors, text_vectors

    def encode_image(self, images):
        ids = tf.cast(images[:, 0, 0, 0], tf.int32)
        return tf.gather(tf.constant(self.image_vectors, tf.float32), ids)

    def encode_text(self, texts):
        return tf.constant([self.text_vectors[t.decode()] for t in texts.numpy()], tf.float32)


def test_shared_captions_rank_once_so_recall_at_5_is_not_recall_at_1():
    """Twelve images share three caption strings, as a templated dataset's do. Counted once
    each, a caption second in line is rank 1; counted per image, four tied copies of the first
    would push it to rank 4, and recall@1 would equal recall@4 by construction."""
    angles = {"a bag": 0.0, "a shoe": 0.5, "a coat": 1.0}
    text_vectors = {t: [np.cos(a), np.sin(a)] for t, a in angles.items()}
    # Images 0-3 own "a bag" and sit on it; 4-7 own "a shoe" but sit nearer "a bag" (0.2);
    # 8-11 own "a coat" and sit on it.
    image_angles = [0.0] * 4 + [0.2] * 4 + [1.0] * 4
    image_vectors = [[np.cos(a), np.sin(a)] for a in image_angles]
    own = ["a bag"] * 4 + ["a shoe"] * 4 + ["a coat"] * 4
    encoder = _LookupEncoder(image_vectors, text_vectors)
    images = np.zeros((12, 2, 2, 1), np.float32)
    images[:, 0, 0, 0] = np.arange(12)
    dataset = tf.data.Dataset.from_tensor_slices({
        "image": images, "label": np.arange(12) // 4,
        "captions": tf.ragged.constant([[c] for c in own])}).batch(5)
    scores = zero_shot.evaluate_dual_encoder(encoder.encode_image, encoder.encode_text,
                                             dataset, recall_ks=(1, 2, 5))
    assert scores["num_images"] == 12
    # Images 4-7 find their caption second (rank 1): 8 of 12 at recall@1, all at @2.
    assert scores["image_to_text_recall@1"] == pytest.approx(8 / 12)
    assert scores["image_to_text_recall@2"] == scores["image_to_text_recall@5"] == 1.0
    # Text to image: "a shoe" (0.5) is nearest the images at 0.2 (its own) -> all at @1.
    assert scores["text_to_image_recall@1"] == 1.0
