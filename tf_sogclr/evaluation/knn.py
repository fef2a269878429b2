"""k-NN evaluation of frozen features, the protocol of InstDisc, MoCo and SogCLR.

Each test example takes its `k` (200) most cosine-similar training examples; neighbour j
votes for its label with weight `exp(sim_j / temperature)` (temperature 0.1); the class with
the largest total wins (ties: the smallest class id). Test examples are processed in chunks,
so memory is O(batch_size x N_train).
"""

import numbers

import keras
import numpy as np
import tensorflow as tf


def extract_features(encoder, dataset, image_key="image", label_key="label", normalize=True):
    """Runs `encoder` (inference mode) over a finite dataset of dict batches.

    Returns (features float32 `[N, f]`, L2-normalised unless `normalize=False`; labels int64
    `[N]`). `encoder` is a
    Keras model (a `SogCLRModel`'s dict output gives its "features") or any callable
    images `[b, H, W, C]` -> `[b, f]`, e.g. `export.load_encoder(path).features`.
    """
    if isinstance(encoder, keras.layers.Layer):
        def embed(images):
            return encoder(images, training=False)
    elif callable(encoder):
        embed = encoder
    else:
        raise ValueError(f"encoder must be a Keras layer or a callable, got {type(encoder)}.")
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"dataset must be a tf.data.Dataset, got {type(dataset)}.")
    spec = dataset.element_spec
    if not isinstance(spec, dict) or image_key not in spec or label_key not in spec:
        keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"dataset must yield dict batches with keys image_key={image_key!r} "
                         f"and label_key={label_key!r}, got {keys}.")
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError("dataset must be finite (it repeats forever).")

    @tf.function(reduce_retracing=True)
    def predict_step(images):
        features = embed(images)
        if isinstance(features, dict):
            features = features["features"]
        features = tf.cast(features, tf.float32)
        return tf.math.l2_normalize(features, axis=-1) if normalize else features

    features, labels = [], []
    for batch in dataset:
        features.append(predict_step(batch[image_key]))
        labels.append(tf.cast(tf.reshape(batch[label_key], [-1]), tf.int64))
    if not features:
        raise ValueError("dataset yielded no batches.")
    return tf.concat(features, axis=0), tf.concat(labels, axis=0)


def knn_predict(train_features, train_labels, test_features, num_classes, k=200,
                temperature=0.1, batch_size=1024):
    """Predicted labels int64 `[M]` for `test_features [M, f]` from `[N, f]`, labels `[N]`.

    Features are L2-normalised here (cosine similarity); `k` is clipped to N.
    """
    train_features, train_labels, test_features = _check_inputs(
        train_features, train_labels, test_features, num_classes, k, temperature, batch_size)
    return _predict(train_features, train_labels, test_features, num_classes, k, temperature,
                    batch_size)


def knn_top1(train_features, train_labels, test_features, test_labels, num_classes, k=200,
             temperature=0.1, batch_size=1024):
    """Top-1 accuracy (float) of weighted k-NN votes; shapes `[N, f]`, `[N]`, `[M, f]`, `[M]`."""
    train_features, train_labels, test_features = _check_inputs(
        train_features, train_labels, test_features, num_classes, k, temperature, batch_size)
    test_labels = _as_labels("test_labels", test_labels)
    if test_labels.shape[0] != test_features.shape[0]:
        raise ValueError(f"test_labels must have one label per test_features row: "
                         f"{test_labels.shape[0]} vs {test_features.shape[0]}.")
    _check_label_range("test_labels", test_labels, num_classes)
    predictions = _predict(train_features, train_labels, test_features, num_classes, k,
                           temperature, batch_size)
    return float(np.mean(predictions.numpy() == test_labels.numpy()))


def _predict(train_features, train_labels, test_features, num_classes, k, temperature,
             batch_size):
    k = min(int(k), int(train_features.shape[0]))
    train_features = tf.math.l2_normalize(train_features, axis=-1)
    temperature = tf.constant(float(temperature), tf.float32)
    predictions = []
    for start in range(0, int(test_features.shape[0]), batch_size):
        chunk = tf.math.l2_normalize(test_features[start:start + batch_size], axis=-1)
        predictions.append(_predict_chunk(chunk, train_features, train_labels, k,
                                          int(num_classes), temperature))
    return tf.concat(predictions, axis=0)


@tf.function(reduce_retracing=True)
def _predict_chunk(test_features, train_features, train_labels, k, num_classes, temperature):
    """Votes of the k nearest neighbours for a chunk `[b, f]` -> predicted labels `[b]`."""
    similarity = tf.matmul(test_features, train_features, transpose_b=True)  # [b, N]
    top_similarity, top_indices = tf.math.top_k(similarity, k=k)  # Equal values: lower index.
    top_labels = tf.gather(train_labels, top_indices)  # [b, k]
    # exp((s - max) / T): the same ranking of class scores as exp(s / T), without overflow.
    weights = tf.exp((top_similarity - top_similarity[:, :1]) / temperature)
    # Class totals by segment sum: memory O(b k + b C), not the O(b k C) of one-hot votes.
    rows = tf.shape(test_features, out_type=tf.int64)[0]
    segments = top_labels + tf.range(rows)[:, None] * num_classes
    scores = tf.reshape(
        tf.math.unsorted_segment_sum(weights, segments, rows * num_classes), [-1, num_classes])
    best = tf.reduce_max(scores, axis=1, keepdims=True)
    classes = tf.range(num_classes, dtype=tf.int64)
    return tf.reduce_min(tf.where(scores >= best, classes, num_classes), axis=1)


def _check_inputs(train_features, train_labels, test_features, num_classes, k, temperature,
                  batch_size):
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}.")
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    train_features = _as_features("train_features", train_features)
    test_features = _as_features("test_features", test_features)
    train_labels = _as_labels("train_labels", train_labels)
    if train_labels.shape[0] != train_features.shape[0]:
        raise ValueError(f"train_labels must have one label per train_features row: "
                         f"{train_labels.shape[0]} vs {train_features.shape[0]}.")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError("train_features and test_features must have the same feature size: "
                         f"{train_features.shape[1]} vs {test_features.shape[1]}.")
    _check_label_range("train_labels", train_labels, num_classes)
    return train_features, train_labels, test_features


def _as_features(argument, features):
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 2 or features.shape[0] == 0 or not features.dtype.is_floating:
        raise ValueError(f"{argument} must be a non-empty float [N, f] array, got shape "
                         f"{features.shape} and dtype {features.dtype.name}.")
    return tf.cast(features, tf.float32)


def _as_labels(argument, labels):
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank != 1 or not labels.dtype.is_integer:
        raise ValueError(f"{argument} must be an integer [N] array, got shape {labels.shape} "
                         f"and dtype {labels.dtype.name}.")
    return tf.cast(labels, tf.int64)


def _check_label_range(argument, labels, num_classes):
    values = labels.numpy()
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{argument} must lie in [0, num_classes={num_classes}), got values "
                         f"in [{values.min()}, {values.max()}].")
