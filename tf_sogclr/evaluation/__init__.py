"""Evaluators of frozen representations.

    frozen_features  one evaluator of frozen features (k-NN and linear probe), raw pixels
    knn         k-NN top-1 of encoder features (k=200, cosine, temperature-weighted votes)
    linear_probe  softmax regression on standardised frozen features, full batch
    zero_shot   a dual encoder's zero-shot top-1 and image-to-text recall@k
"""
