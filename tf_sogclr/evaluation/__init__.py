"""Evaluators of frozen representations.

    knn         k-NN top-1 of encoder features (k=200, cosine, temperature-weighted votes)
    zero_shot   a dual encoder's zero-shot top-1 and image-to-text recall@k
"""
