"""Scores of an image-text dual encoder: zero-shot classification from class prompts, and
image-to-text recall@k over captioned images.
"""

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


def image_to_text_recall(image_embeddings, text_embeddings, text_owner, ks=(1, 5),
                         chunk_size=1024):
    """Image-to-text recall@k: fraction of images `[N, d]` with one of their own captions
    among the k most similar texts `[M, d]`; `text_owner` `[M]` is each text's image row.

    Rank of image i = number of other images' texts scoring strictly above its best own text
    (identical caption strings of other images tie, and ties count in the image's favour).
    """
    owner = tf.cast(tf.convert_to_tensor(text_owner), tf.int64)
    num_images = int(image_embeddings.shape[0])
    if owner.shape.rank != 1 or owner.shape[0] != text_embeddings.shape[0]:
        raise ValueError("text_owner must give one image row per text embedding.")
    missing = np.setdiff1d(np.arange(num_images), owner.numpy())
    if missing.size:
        raise ValueError(f"images {missing[:8].tolist()} have no caption among the texts.")
    ranks = []
    for start in range(0, num_images, chunk_size):
        rows = tf.range(start, min(start + chunk_size, num_images), dtype=tf.int64)
        scores = tf.matmul(image_embeddings[start:start + chunk_size], text_embeddings,
                           transpose_b=True)  # [c, M]
        own = tf.equal(rows[:, None], owner[None, :])
        best_own = tf.reduce_max(tf.where(own, scores, -np.inf), axis=1, keepdims=True)
        above = tf.logical_and(tf.logical_not(own), scores > best_own)
        ranks.append(tf.reduce_sum(tf.cast(above, tf.int64), axis=1))
    ranks = tf.concat(ranks, 0).numpy()
    return {k: float(np.mean(ranks < k)) for k in ks}


def evaluate_dual_encoder(encode_image, encode_text, dataset, prompts=None, eval_steps=0,
                          recall_ks=(1, 5)):
    """Zero-shot top-1 (with `prompts` [C][T]) and image-to-text recall@k on `dataset`.

    `dataset`: finite batches {"image", "label", "captions": ragged strings} (as
    `data.captions.eval_pairs`); `encode_image` / `encode_text`: images or strings -> `[b, d]`.
    Returns {"zero_shot_top1"?, "image_to_text_recall@k"..., "num_images"}.
    """
    image_embeddings, labels, texts, owner = [], [], [], []
    for i, batch in enumerate(dataset):
        if eval_steps and i >= eval_steps:
            break
        image_embeddings.append(tf.math.l2_normalize(
            tf.cast(encode_image(batch["image"]), tf.float32), -1))
        labels.append(batch["label"].numpy())
        batch_captions = batch["captions"]  # Ragged, or dense when all counts agree.
        batch_captions = (batch_captions.to_list() if isinstance(batch_captions, tf.RaggedTensor)
                          else batch_captions.numpy().tolist())
        for captions_of_image in batch_captions:
            captions_of_image = captions_of_image or [b""]
            owner.extend([len(owner) and owner[-1] + 1] * len(captions_of_image))
            texts.extend(c.decode("utf-8") for c in captions_of_image)
    if not image_embeddings:
        raise ValueError("dataset yielded no batches.")
    image_embeddings = tf.concat(image_embeddings, 0)
    results = {"num_images": int(image_embeddings.shape[0])}
    if prompts is not None:
        results["zero_shot_top1"] = zero_shot_top1(
            image_embeddings, np.concatenate(labels), class_embeddings(encode_text, prompts))
    recall = image_to_text_recall(image_embeddings, embed_texts(encode_text, texts), owner,
                                  recall_ks)
    results.update({f"image_to_text_recall@{k}": v for k, v in recall.items()})
    return results
