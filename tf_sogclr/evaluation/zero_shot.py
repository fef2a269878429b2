"""Scores of an image-text dual encoder: zero-shot classification from class prompts, and
recall@k both ways (image to text, text to image) over captioned images.
"""

import itertools

import numpy as np
import tensorflow as tf


def embed_texts(encode_text, texts, batch_size=512):
    """Unit embeddings float32 `[M, d]` of `texts` (list of str) by `encode_text`, a function
    strings `[b]` -> `[b, d]`, in chunks of `batch_size`."""
    if not texts:
        raise ValueError("texts must hold at least one string.")
    chunks = [encode_text(tf.constant(texts[i:i + batch_size]))
              for i in range(0, len(texts), batch_size)]
    return tf.math.l2_normalize(tf.cast(tf.concat(chunks, 0), tf.float32), -1)


def class_embeddings(encode_text, prompts):
    """Zero-shot classifier `[C, d]`: per class the normalised mean of its prompts' unit
    embeddings (CLIP's prompt ensembling); `prompts` is `[C][T]` strings."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("prompts must give each class at least one prompt.")
    flat = embed_texts(encode_text, [p for ps in prompts for p in ps])
    sizes = [len(ps) for ps in prompts]
    means = [tf.reduce_mean(part, 0) for part in tf.split(flat, sizes)]
    return tf.math.l2_normalize(tf.stack(means), -1)


def zero_shot_top1(image_embeddings, labels, class_text_embeddings):
    """Fraction of images `[N, d]` whose most similar class embedding `[C, d]` is their
    label `[N]`."""
    scores = tf.matmul(tf.cast(image_embeddings, tf.float32),
                       tf.cast(class_text_embeddings, tf.float32), transpose_b=True)
    predictions = tf.argmax(scores, axis=1, output_type=tf.int64)
    return float(np.mean(predictions.numpy() == np.asarray(labels, np.int64)))


def embedded_batches(encode_image, dataset, eval_steps=0):
    """(unit image embeddings float32 `[b, d]`, batch) for the first `eval_steps` batches of
    `dataset` (all when 0); raises ValueError when it yields none."""
    count = 0
    for batch in itertools.islice(dataset, eval_steps or None):
        count += 1
        yield tf.math.l2_normalize(tf.cast(encode_image(batch["image"]), tf.float32), -1), batch
    if not count:
        raise ValueError("dataset yielded no batches.")


def labelled_zero_shot_top1(encode_image, encode_text, dataset, prompts, eval_steps=0):
    """Zero-shot top-1 with `prompts` [C][T] over finite {"image", "label"} batches;
    `encode_image` / `encode_text`: images or strings -> `[b, d]`."""
    embeddings, labels = [], []
    for embedding, batch in embedded_batches(encode_image, dataset, eval_steps):
        embeddings.append(embedding)
        labels.append(batch["label"].numpy())
    return zero_shot_top1(tf.concat(embeddings, 0), np.concatenate(labels),
                          class_embeddings(encode_text, prompts))


def retrieval_recall(queries, gallery, relevant, ks=(1, 5, 10), chunk_size=1024):
    """Recall@k: fraction of queries `[N, d]` with an item relevant to them among their k most
    similar gallery items `[M, d]`; `relevant` is int pairs `[P, 2]` (query row, gallery row),
    at least one per query.

    Rank of query q = number of gallery items not relevant to q that score strictly above its
    best relevant one (ties count in q's favour).
    """
    relevant = np.asarray(relevant, np.int64).reshape(-1, 2)
    num_queries, num_items = int(queries.shape[0]), int(gallery.shape[0])
    if relevant.size and (relevant.min() < 0 or relevant[:, 0].max() >= num_queries
                          or relevant[:, 1].max() >= num_items):
        raise ValueError(f"relevant pairs must index {num_queries} queries and {num_items} "
                         "gallery items.")
    missing = np.setdiff1d(np.arange(num_queries), relevant[:, 0])
    if missing.size:
        raise ValueError(f"queries {missing[:8].tolist()} have no relevant gallery item.")
    ranks = []
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        in_chunk = relevant[(relevant[:, 0] >= start) & (relevant[:, 0] < stop)]
        own = np.zeros((stop - start, num_items), bool)
        own[in_chunk[:, 0] - start, in_chunk[:, 1]] = True
        scores = tf.matmul(queries[start:stop], gallery, transpose_b=True)  # [c, M]
        best_own = tf.reduce_max(tf.where(own, scores, -np.inf), axis=1, keepdims=True)
        above = tf.logical_and(tf.logical_not(own), scores > best_own)
        ranks.append(tf.reduce_sum(tf.cast(above, tf.int64), axis=1))
    ranks = tf.concat(ranks, 0).numpy()
    return {k: float(np.mean(ranks < k)) for k in ks}


def distinct_captions(texts, text_owner):
    """The distinct strings of `texts` `[M]` (first-seen order) and the (image row, distinct
    caption row) pairs `[P, 2]` that `text_owner` `[M]` (each text's image row) makes."""
    if len(texts) != len(text_owner):
        raise ValueError("text_owner must give one image row per text.")
    rows = {}
    pairs = sorted({(int(owner), rows.setdefault(text, len(rows)))
                    for text, owner in zip(texts, text_owner)})
    return list(rows), np.asarray(pairs, np.int64).reshape(-1, 2)


def image_text_recall(image_embeddings, text_embeddings, pairs, ks=(1, 5, 10)):
    """{"image_to_text_recall@k", "text_to_image_recall@k"} of unit image `[N, d]` and
    distinct caption `[M, d]` embeddings; `pairs` `[P, 2]` (image row, caption row).

    The gallery holds each distinct caption once, so captions that several images share
    (a templated dataset's) are one item, not hundreds of tied ones.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    to_text = retrieval_recall(image_embeddings, text_embeddings, pairs, ks)
    to_image = retrieval_recall(text_embeddings, image_embeddings, pairs[:, ::-1], ks)
    return {**{f"image_to_text_recall@{k}": v for k, v in to_text.items()},
            **{f"text_to_image_recall@{k}": v for k, v in to_image.items()}}


def evaluate_dual_encoder(encode_image, encode_text, dataset, prompts=None, eval_steps=0,
                          recall_ks=(1, 5, 10)):
    """Zero-shot top-1 (with `prompts` [C][T]) and recall@k both ways on `dataset`.

    `dataset`: finite batches {"image", "label", "captions": ragged strings} (as
    `data.captions.eval_pairs`); `encode_image` / `encode_text`: images or strings -> `[b, d]`.
    Recall ranks distinct captions (`image_text_recall`); an image without captions is
    left out of it. Returns {"zero_shot_top1"?, "image_to_text_recall@k"...,
    "text_to_image_recall@k"..., "num_images"}.
    """
    image_embeddings, labels, texts, owner = [], [], [], []
    num_images = 0
    for embedding, batch in embedded_batches(encode_image, dataset, eval_steps):
        image_embeddings.append(embedding)
        labels.append(batch["label"].numpy())
        batch_captions = batch["captions"]  # Ragged, or dense when all counts agree.
        batch_captions = (batch_captions.to_list() if isinstance(batch_captions, tf.RaggedTensor)
                          else batch_captions.numpy().tolist())
        for captions_of_image in batch_captions:
            owner.extend([num_images] * len(captions_of_image))
            texts.extend(c.decode("utf-8") for c in captions_of_image)
            num_images += 1
    image_embeddings = tf.concat(image_embeddings, 0)
    results = {"num_images": num_images}
    if prompts is not None:
        results["zero_shot_top1"] = zero_shot_top1(
            image_embeddings, np.concatenate(labels), class_embeddings(encode_text, prompts))
    if texts:
        distinct, pairs = distinct_captions(texts, owner)
        captioned = np.unique(pairs[:, 0])  # images without captions rank nothing
        pairs[:, 0] = np.searchsorted(captioned, pairs[:, 0])
        results.update(image_text_recall(tf.gather(image_embeddings, captioned),
                                         embed_texts(encode_text, distinct), pairs, recall_ks))
    return results
