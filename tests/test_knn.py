"""Tests of tf_sogclr.evaluation.knn against an independent NumPy implementation of the k-NN protocol."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr.evaluation import knn


def numpy_knn_predict(train_features, train_labels, test_features, num_classes, k, temperature):
    """InstDisc / MoCo k-NN written out per example: cosine top-k, votes exp(sim / T)."""
    train = train_features / np.linalg.norm(train_features, axis=1, keepdims=True)
    test = test_features / np.linalg.norm(test_features, axis=1, keepdims=True)
    k = min(k, len(train))
    predictions = []
    for query in test:
        similarity = train @ query
        nearest = np.argsort(-similarity, kind="stable")[:k]  # Equal: lower index first.
        scores = np.zeros(num_classes, np.float64)
        for j in nearest:
            scores[train_labels[j]] += np.exp(similarity[j] / temperature)
        predictions.append(int(np.argmax(scores)))  # Equal: smallest class id.
    return np.array(predictions)


def random_problem(num_train=300, num_test=70, dim=16, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_train, dim)).astype(np.float32),
            rng.integers(0, num_classes, num_train),
            rng.normal(size=(num_test, dim)).astype(np.float32),
            rng.integers(0, num_classes, num_test))


@pytest.mark.parametrize("k, temperature, batch_size", [(200, 0.1, 1024), (7, 0.5, 16),
                                                        (1, 0.07, 33), (20, 1.0, 70)])
def test_predictions_match_numpy_reference(k, temperature, batch_size):
    train_x, train_y, test_x, test_y = random_problem(seed=k)
    expected = numpy_knn_predict(train_x, train_y, test_x, 5, k, temperature)
    got = knn.knn_predict(train_x, train_y, test_x, 5, k=k, temperature=temperature,
                          batch_size=batch_size)
    assert got.dtype == tf.int64 and got.shape == (70,)
    np.testing.assert_array_equal(got.numpy(), expected)
    accuracy = knn.knn_top1(train_x, train_y, test_x, test_y, 5, k=k, temperature=temperature,
                            batch_size=batch_size)
    assert accuracy == pytest.approx(np.mean(expected == test_y))


def test_separable_toy_is_classified_perfectly():
    rng = np.random.default_rng(1)
    centres = np.eye(4, 8, dtype=np.float32) * 10.0
    train_y, test_y = np.repeat(np.arange(4), 10), np.repeat(np.arange(4), 3)
    train_x = centres[train_y] + rng.normal(scale=0.1, size=(40, 8)).astype(np.float32)
    test_x = centres[test_y] + rng.normal(scale=0.1, size=(12, 8)).astype(np.float32)
    assert knn.knn_top1(train_x, train_y, test_x, test_y, num_classes=4, k=5) == 1.0
    # k = 200 > 40 training examples: every example votes, the close ones dominate (T = 0.1).
    assert knn.knn_top1(train_x, train_y, test_x, test_y, num_classes=4) == 1.0


def test_k_larger_than_train_set_and_ties():
    # Two training points, equally similar to the query, different classes: a tie that goes
    # to the smallest class id whatever the order of the training examples.
    train_x = np.array([[1.0, 1.0], [1.0, -1.0]], np.float32)
    query = np.array([[1.0, 0.0]], np.float32)
    for labels in ([2, 1], [1, 2]):
        assert knn.knn_predict(train_x, labels, query, num_classes=3, k=50).numpy()[0] == 1
    # k = 1 with equal similarities: the lower-index training example is the neighbour.
    assert knn.knn_predict(train_x, [2, 1], query, num_classes=3, k=1).numpy()[0] == 2
    # A single training example: every prediction is its label.
    np.testing.assert_array_equal(
        knn.knn_predict(train_x[:1], [2], np.eye(3, 2, dtype=np.float32), 3).numpy(), [2, 2, 2])
    # A tiny temperature would overflow exp(sim / T) computed directly.
    train_x, train_y, test_x, _ = random_problem(seed=3)
    got = knn.knn_predict(train_x, train_y, test_x, 5, k=10, temperature=1e-3)
    nearest = np.argmax(
        (test_x / np.linalg.norm(test_x, axis=1, keepdims=True))
        @ (train_x / np.linalg.norm(train_x, axis=1, keepdims=True)).T, axis=1)
    np.testing.assert_array_equal(got.numpy(), train_y[nearest])


def test_bad_arguments_are_rejected():
    train_x, train_y, test_x, test_y = random_problem(num_train=10, num_test=4)
    good = dict(train_features=train_x, train_labels=train_y, test_features=test_x,
                test_labels=test_y, num_classes=5)
    for argument, value in [("k", 0), ("k", 2.5), ("temperature", 0.0),
                            ("temperature", float("inf")), ("num_classes", 1),
                            ("batch_size", 0), ("train_labels", train_y[:9]),
                            ("train_labels", train_y + 5), ("test_labels", test_y[:3]),
                            ("test_labels", -test_y - 1), ("test_features", test_x[:, :3]),
                            ("train_features", train_x[0])]:
        with pytest.raises(ValueError, match=argument):
            knn.knn_top1(**{**good, argument: value})


def test_extract_features_with_a_smaller_last_batch():
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(11, 4, 4, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 11)
    dataset = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(4)
    inputs = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(6)
    encoder = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    features, got_labels = knn.extract_features(encoder, dataset)
    expected = encoder(images).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert features.dtype == tf.float32 and got_labels.dtype == tf.int64
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_labels.numpy(), labels)
    # Any callable works, and a dict output gives its "features".
    features, _ = knn.extract_features(lambda x: {"features": encoder(x)}, dataset)
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="label_key"):
        knn.extract_features(encoder, dataset, label_key="target")
    with pytest.raises(ValueError, match="finite"):
        knn.extract_features(encoder, dataset.repeat())


def test_extract_features_runs_in_inference_mode():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dropout(0.9)(keras.layers.Dense(4)(inputs))
    encoder = keras.Model(inputs, outputs)
    data = {"image": np.ones((8, 3), np.float32), "label": np.zeros(8, np.int64)}
    features, _ = knn.extract_features(encoder, tf.data.Dataset.from_tensors(data))
    expected = encoder(data["image"], training=False).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-5)
