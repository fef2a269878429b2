"""One evaluator of frozen image features: k-NN and a linear probe, and raw pixels as the floor.

`evaluate(encoder, probe_batches, test_batches, num_classes)` extracts the features of an
un-augmented probe set (the k-NN memory bank and the probe's training set) and of the test
set (`knn.extract_features`), standardises both with the probe set's per-dimension mean and
std, then scores them by k-NN (`knn.knn_top1`: cosine similarity of the standardised
features) and by a linear probe (`linear_probe.linear_probe`). Standardising first puts
every representation on one footing: raw pixels, whose dimensions differ in scale, and
encoder features alike. `raw_pixels` is the encoder that is no encoder: the flattened image.
Scored by the same `evaluate`, it is the floor a learnt representation must beat
(docs/algorithm.md, "Evaluation").
"""

import tensorflow as tf

from tf_sogclr.evaluation import knn, linear_probe

KNN_K, KNN_TEMPERATURE = 200, 0.1


def raw_pixels(images):
    """The identity representation: images `[b, H, W, C]` -> flattened pixels `[b, H*W*C]`."""
    return tf.reshape(images, [tf.shape(images)[0], -1])


def evaluate(encoder, probe_batches, test_batches, num_classes, knn_k=KNN_K,
             knn_temperature=KNN_TEMPERATURE):
    """{"knn_top1", "linear_probe_top1", "linear_probe_train_top1"} of `encoder`'s frozen
    features (a Keras model or a callable images -> features, as `knn.extract_features`
    takes); both datasets are finite dict batches {"image", "label"}."""
    train_x, train_y = knn.extract_features(encoder, probe_batches, normalize=False)
    test_x, test_y = knn.extract_features(encoder, test_batches, normalize=False)
    train_x, test_x = linear_probe.standardise(train_x, test_x)  # k-NN on standardised too
    probe = linear_probe.linear_probe(train_x, train_y, test_x, test_y, num_classes)
    return {"knn_top1": knn.knn_top1(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                     k=knn_k, temperature=knn_temperature),
            "linear_probe_top1": probe["top1"],
            "linear_probe_train_top1": probe["train_top1"]}
