"""Image-caption pairs from TFDS for bimodal (CLIP-style) SogCLR, with stable pair indices.

Two kinds of datasets:

* caption datasets (e.g. `coco_captions`): an Image feature "image" and captions in
  "captions/text" (a Sequence, several per image), "captions", "caption" or "text";
* labelled image datasets (the offline default, `fashion_mnist_debian`): captions are made
  from the class names through `TEMPLATES` ("a photo of a {}.", ...).

Pair indices: ONE INDEX PER IMAGE, in [0, num_examples), from the image's `tfds_id` exactly
as `tf_sogclr.data` does (docs/algorithm.md, "Example indices"). Each time an image is drawn
(every epoch) it is paired with one of its captions chosen uniformly at random (a seeded,
stateless draw), as an augmentation of the text side. So both u-tables (u^I, u^T) have one
row per image, and u_i tracks the average over caption choices of image i's inner function.
One row per (image, caption slot) was not chosen: it multiplies the tables by the captions
per image and puts an image's other captions among its negatives in the same batch (false
negatives).

Caption checks (caption datasets): a caption that is not valid UTF-8, or empty or blank,
fails the read with the dataset, split and example's tfds_id, in the vocabulary pass before
training as in training. An image with no captions at all is paired with a blank caption
(its text features are then zero). A caption longer than `max_text_length` tokens is
truncated to its first `max_text_length` tokens by the tokenizer (`text.TextTokenizer`).

Evaluation captions: every image keeps all its captions; a templated dataset's are every
template of its class, so retrieval counts any caption of the right class as the image's own
(`evaluation.zero_shot` ranks distinct captions). Zero-shot classification uses every
template of every class (`class_prompts`).
"""

from __future__ import annotations

import tensorflow as tf

from tf_sogclr import checks, data
from tf_sogclr.data import augment, fashion_mnist, offline

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_KEY, LABEL_KEY = "image", "label"
CAPTION_FEATURES = ("captions/text", "captions", "caption", "text")
TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
)
# Caption-friendly names of Fashion-MNIST's classes (its label names are "T-shirt/top", ...).
FASHION_MNIST_CLASS_NAMES = fashion_mnist.CAPTION_NAMES


def caption_feature(info: data.DatasetInfo) -> str | None:
    """The split's caption feature: the first of `CAPTION_FEATURES` among its Text features;
    None when captions are made from class names (templates)."""
    return next((path for path in CAPTION_FEATURES if path in info.text_features), None)


def templated(info: data.DatasetInfo) -> bool:
    """True when captions are made from class names (the dataset has no caption feature)."""
    return caption_feature(info) is None


def class_names(info: data.DatasetInfo) -> tuple | None:
    """Class names as captions spell them; None without labels."""
    if info.label_names is None:
        return None
    if offline.base_name(info.name) == fashion_mnist.NAME:
        return FASHION_MNIST_CLASS_NAMES
    return tuple(name.replace("_", " ").lower() for name in info.label_names)


def check_pairs(info: data.DatasetInfo, templates: tuple = TEMPLATES) -> None:
    """Raises ValueError when `templates` do not each hold one "{}", or the split has neither
    captions nor a ClassLabel "label" to make captions from (before anything is read)."""
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"caption templates must each hold one '{{}}', got {templates!r}.")
    if templated(info) and info.label_names is None:
        raise ValueError(f"dataset={info.name!r} has neither captions (one of "
                         f"{list(CAPTION_FEATURES)}) nor a ClassLabel {LABEL_KEY!r} to make "
                         f"captions from; its Text features are {list(info.text_features)}.")


def class_prompts(info: data.DatasetInfo, templates: tuple = TEMPLATES) -> list:
    """Zero-shot prompts: for each class, every template filled with its name ([C][T] str)."""
    names = class_names(info)
    if names is None:
        raise ValueError(f"{info.name} has no class labels: no zero-shot classification.")
    return [[t.format(name) for t in templates] for name in names]


def training_captions(info: data.DatasetInfo, data_dir: str | None = None,
                      templates: tuple = TEMPLATES):
    """Every training caption, to build the vocabulary: a list (templates) or a string dataset."""
    if templated(info):
        return [caption for prompts in class_prompts(info, templates) for caption in prompts]
    ds = _read_pairs(info, data_dir, False, None, None, templates, decode_images=False)
    return ds.map(lambda ex: ex["captions"]).unbatch().batch(1024)


def checked_captions(info: data.DatasetInfo, captions: tf.Tensor, tfds_id: tf.Tensor):
    """`captions` (string `[n]`) unchanged; at run time an InvalidArgumentError naming the
    dataset, split and example (`tfds_id`) if one is not valid UTF-8, or empty or blank."""
    where = f"dataset {info.name} split {info.split}: example"  # Assert escapes quotes.
    # Valid UTF-8 is exactly what transcoding with replacement leaves unchanged.
    repaired = tf.strings.unicode_transcode(captions, "UTF-8", "UTF-8", errors="replace",
                                            replacement_char=0xFFFD)
    utf8 = tf.debugging.Assert(tf.reduce_all(tf.equal(repaired, captions)), [
        where, tfds_id, "has a caption that is not valid UTF-8 (bad bytes shown as U+FFFD):",
        repaired], summarize=4)  # The raw bytes would make the message itself undecodable.
    words = tf.debugging.Assert(tf.reduce_all(tf.strings.length(tf.strings.strip(captions)) > 0),
                                [where, tfds_id, "has an empty or blank caption:", captions],
                                summarize=4)
    with tf.control_dependencies([utf8, words]):
        return tf.identity(captions)


def _read_pairs(info, data_dir, shuffle_files, seed, input_context, templates,
                decode_images=True):
    """Per image: {"image": uint8 [H, W, C], "label": int64 (-1 without labels),
    "index": int32, "captions": string [n]} (templated: every template of its class), read
    by `data.read_split` (the checked decoder of every dataset: bad images name their
    tfds_id)."""
    feature = caption_feature(info)
    keep = () if feature is None else (feature.split("/")[0],)
    ds = data.read_split(info, data_dir, shuffle_files, seed, input_context, keep=keep,
                         decode_images=decode_images)
    prompts = tf.constant(class_prompts(info, templates)) if feature is None else None

    def convert(example):
        if feature is None:
            captions = tf.gather(prompts, example[LABEL_KEY])
        else:
            node = example
            for part in feature.split("/"):
                node = node[part]
            captions = checked_captions(info, tf.reshape(node, [-1]), example["tfds_id"])
        return {IMAGE_KEY: example[IMAGE_KEY], LABEL_KEY: example[LABEL_KEY],
                "captions": captions,
                "index": data.tfds_id_to_index(example["tfds_id"], info.shard_lengths)}

    return ds.map(convert, num_parallel_calls=AUTOTUNE)


def _pick(captions, seed):
    """One caption of `captions` [n], uniformly by stateless `seed`; "" when n = 0."""
    count = tf.shape(captions)[0]
    choice = tf.random.stateless_uniform([], seed, 0, tf.maximum(count, 1), dtype=tf.int32)
    return tf.concat([captions, [""]], 0)[choice]


def pair_dataset(
    info: data.DatasetInfo,
    global_batch_size: int,
    tokenizer,
    augmenter: augment.SimCLRAugment,
    *,
    data_dir: str | None = None,
    shuffle_buffer: int = 10_000,
    num_epochs: int | None = None,
    cache: bool = False,
    seed: int | None = None,
    deterministic: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    templates: tuple = TEMPLATES,
) -> tf.data.Dataset:
    """Training batches {"image": [b, S, S, C] float32, "tokens": int32 [b, L], "index": int32
    [b], "label": int64 [b]}: one random caption per image per draw, tokenised by `tokenizer`.

    b = global_batch_size or its per-replica share (input_context); drop_remainder=True.
    """
    if augmenter.channels != info.channels:
        raise ValueError(f"augmenter.channels={augmenter.channels} but {info.name} has "
                         f"{info.channels}-channel images.")
    batch_size = data.per_replica_batch_size(global_batch_size, input_context)
    seed_for = data.batch_seeds(seed, deterministic, input_context)
    ds = _read_pairs(info, data_dir, True, seed, input_context, templates)
    ds = data.shuffled_and_repeated(ds, shuffle_buffer, num_epochs, cache, seed)

    def per_example(counter, ex):
        out = {"caption": _pick(ex["captions"], seed_for(counter, 0)), "index": ex["index"],
               LABEL_KEY: ex[LABEL_KEY]}
        image = ex[IMAGE_KEY]
        if not info.fixed_size:  # Images vary in size: crop each to S x S before batching.
            image = augmenter.crop_and_flip(image[None], seed_for(counter, 1))[0]
        out[IMAGE_KEY] = image
        return out

    ds = ds.enumerate().map(per_example, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)

    def per_batch(counter, batch):
        seed = seed_for(counter, 2)
        images = (augmenter(batch[IMAGE_KEY], seed) if info.fixed_size
                  else augmenter.distort(batch[IMAGE_KEY], seed))
        return {IMAGE_KEY: images, "tokens": tokenizer(batch["caption"]),
                "index": batch["index"], LABEL_KEY: batch[LABEL_KEY]}

    ds = ds.enumerate().map(per_batch, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(data.pipeline_options(deterministic))


def eval_pairs(info: data.DatasetInfo, batch_size: int, image_size: int, *,
               data_dir: str | None = None, cache: bool = False,
               templates: tuple = TEMPLATES) -> tf.data.Dataset:
    """One pass in index order: {"image": [b, S, S, C] float32, "label", "index",
    "captions": ragged string [b, (n)]} (templated: every one of `templates` for its class)."""
    checks.positive_int("batch_size", batch_size)
    ds = _read_pairs(info, data_dir, False, None, None, templates)
    if not info.fixed_size:
        ds = ds.map(lambda ex: {**ex, IMAGE_KEY: augment.preprocess_for_eval(
            ex[IMAGE_KEY][None], image_size)[0]}, num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = ds.ragged_batch(batch_size)
    if info.fixed_size:
        ds = ds.map(lambda b: {**b, IMAGE_KEY: augment.preprocess_for_eval(b[IMAGE_KEY],
                                                                            image_size)},
                    num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
