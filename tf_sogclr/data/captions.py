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

Evaluation captions: a caption dataset's images keep all their captions; a templated
dataset gives test image i the single caption `TEMPLATES[i % len(TEMPLATES)]` of its class.
Zero-shot classification uses every template of every class (`class_prompts`).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_datasets as tfds

from tf_sogclr import data
from tf_sogclr.data import augment, fashion_mnist

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
FASHION_MNIST_CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal",
                             "shirt", "sneaker", "bag", "ankle boot")


@dataclasses.dataclass(frozen=True)
class PairDatasetInfo:
    """What the bimodal pipelines need to know about a TFDS split, read from its metadata."""

    name: str
    split: str  # as requested, slice included
    base_split: str
    num_examples: int  # images in the full base split: the u-tables' rows
    num_split_examples: int  # images the requested split yields per epoch
    image_shape: tuple  # (H, W, C); H, W None when sizes vary
    shard_lengths: tuple
    caption_feature: str | None  # e.g. "captions/text"; None: captions from templates
    class_names: tuple | None  # for zero-shot evaluation and templates; None without labels
    templates: tuple = TEMPLATES

    @property
    def channels(self) -> int:
        return self.image_shape[-1]

    @property
    def fixed_size(self) -> bool:
        return None not in self.image_shape[:2]

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    @property
    def templated(self) -> bool:
        """True when captions are made from class names (no caption feature)."""
        return self.caption_feature is None


def _find_caption_feature(features) -> str | None:
    for path in CAPTION_FEATURES:
        node = features
        for part in path.split("/"):
            if isinstance(node, tfds.features.Sequence):
                node = node.feature
            if not isinstance(node, tfds.features.FeaturesDict) or part not in node.keys():
                node = None
                break
            node = node[part]
        if isinstance(node, tfds.features.Sequence):
            node = node.feature
        if isinstance(node, tfds.features.Text):
            return path
    return None


def _class_names(dataset: str, label) -> tuple:
    if dataset.split(":")[0].split("/")[0] == fashion_mnist.NAME:
        return FASHION_MNIST_CLASS_NAMES
    return tuple(name.replace("_", " ").lower() for name in label.names)


def describe_pairs(dataset: str, split: str, data_dir: str | None = None,
                   templates: tuple = TEMPLATES) -> PairDatasetInfo:
    """Reads a split's metadata (no examples). Raises ValueError when it has no images, or
    neither captions nor a ClassLabel "label" to make captions from."""
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"caption templates must each hold one '{{}}', got {templates!r}.")
    builder = data.prepared_builder(dataset, data_dir)  # ValueError: unknown / unprepared
    match = data.SPLIT_PATTERN.match(split)
    splits = sorted(builder.info.splits.keys())
    if match is None or match.group(1) not in builder.info.splits:
        raise ValueError(f"split={split!r} must be one split of {dataset}, optionally sliced "
                         f"(no unions); its splits are {splits}.")
    base_split = match.group(1)
    try:
        num_split_examples = builder.info.splits[split].num_examples
    except (ValueError, AssertionError, KeyError) as error:
        raise ValueError(
            f"split={split!r} is not a valid slice of {base_split!r}: {error}") from None
    features = builder.info.features
    names = list(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else []
    image = features[IMAGE_KEY] if IMAGE_KEY in names else None
    if not isinstance(image, tfds.features.Image) or image.shape[-1] not in (1, 3):
        raise ValueError(f"dataset={dataset!r} needs a 1- or 3-channel Image feature "
                         f"{IMAGE_KEY!r}; its features are {names}.")
    caption_feature = _find_caption_feature(features)
    label = features[LABEL_KEY] if LABEL_KEY in names else None
    class_names = _class_names(dataset, label) if isinstance(label, tfds.features.ClassLabel) \
        else None
    if caption_feature is None and class_names is None:
        raise ValueError(f"dataset={dataset!r} has neither captions (one of "
                         f"{list(CAPTION_FEATURES)}) nor a ClassLabel {LABEL_KEY!r} to make "
                         f"captions from; its features are {names}.")
    base = builder.info.splits[base_split]
    shard_lengths = tuple(int(n) for n in base.shard_lengths)
    if sum(shard_lengths) != base.num_examples:
        raise ValueError(f"{dataset}/{base_split}: shard_lengths {shard_lengths} do not sum to "
                         f"num_examples {base.num_examples}; stable indices need both.")
    return PairDatasetInfo(
        name=dataset, split=split, base_split=base_split, num_examples=int(base.num_examples),
        num_split_examples=int(num_split_examples), image_shape=tuple(image.shape),
        shard_lengths=shard_lengths, caption_feature=caption_feature,
        class_names=class_names, templates=tuple(templates))


def class_prompts(info: PairDatasetInfo) -> list:
    """Zero-shot prompts: for each class, every template filled with its name ([C][T] str)."""
    if info.class_names is None:
        raise ValueError(f"{info.name} has no class labels: no zero-shot classification.")
    return [[t.format(name) for t in info.templates] for name in info.class_names]


def training_captions(info: PairDatasetInfo, data_dir: str | None = None):
    """Every training caption, to build the vocabulary: a list (templates) or a string dataset."""
    if info.templated:
        return [caption for prompts in class_prompts(info) for caption in prompts]
    ds = _read_pairs(info, data_dir, shuffle_files=False, seed=None, input_context=None,
                     decode=False)
    return ds.map(lambda ex: ex["captions"]).unbatch().batch(1024)


def _read_pairs(info, data_dir, shuffle_files, seed, input_context, decode=True):
    """Per image: {"image": uint8 [H, W, C], "label": int64 (-1 without labels),
    "index": int32, "captions": string [n]} (templated: every template of its class)."""
    builder = tfds.builder(info.name, data_dir=data_dir)
    read_config = tfds.ReadConfig(
        add_tfds_id=True, shuffle_seed=seed, try_autocache=False,
        **({} if shuffle_files else {"interleave_cycle_length": 1}))
    ds = builder.as_dataset(split=data.host_split(info.split, input_context),
                            shuffle_files=shuffle_files, read_config=read_config,
                            decoders={IMAGE_KEY: tfds.decode.SkipDecoding()})
    prompts = tf.constant(class_prompts(info)) if info.templated else None

    def convert(example):
        label = (tf.cast(example[LABEL_KEY], tf.int64) if info.class_names is not None
                 else tf.constant(-1, tf.int64))
        if info.templated:
            captions = tf.gather(prompts, label)
        else:
            node = example
            for part in info.caption_feature.split("/"):
                node = node[part]
            captions = tf.reshape(node, [-1])
        out = {LABEL_KEY: label, "captions": captions,
               "index": data.tfds_id_to_index(example["tfds_id"], info.shard_lengths)}
        if decode:  # The checked decoder of every dataset: bad images name their tfds_id.
            out[IMAGE_KEY] = data.decode_checked(info, example[IMAGE_KEY], example["tfds_id"])
        return out

    return ds.map(convert, num_parallel_calls=AUTOTUNE)


def _pick(captions, seed):
    """One caption of `captions` [n], uniformly by stateless `seed`; "" when n = 0."""
    count = tf.shape(captions)[0]
    choice = tf.random.stateless_uniform([], seed, 0, tf.maximum(count, 1), dtype=tf.int32)
    return tf.concat([captions, [""]], 0)[choice]


def pair_dataset(
    info: PairDatasetInfo,
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
) -> tf.data.Dataset:
    """Training batches {"image": [b, S, S, C] float32, "tokens": int32 [b, L], "index": int32
    [b], "label": int64 [b]}: one random caption per image per draw, tokenised by `tokenizer`.

    b = global_batch_size or its per-replica share (input_context); drop_remainder=True.
    """
    if augmenter.channels != info.channels:
        raise ValueError(f"augmenter.channels={augmenter.channels} but {info.name} has "
                         f"{info.channels}-channel images.")
    data.check_positive("shuffle_buffer", shuffle_buffer)
    data.check_positive("num_epochs", num_epochs, allow_none=True)
    batch_size = data.per_replica_batch_size(global_batch_size, input_context)
    aug_seed, pipeline = data.augmentation_seeds(seed, deterministic, input_context)
    base_seed = tf.constant([aug_seed, pipeline], tf.int64)

    def seed_for(counter, salt):
        return tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(base_seed, counter), salt)

    ds = _read_pairs(info, data_dir, shuffle_files=True, seed=seed, input_context=input_context)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat(num_epochs)

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


def eval_pairs(info: PairDatasetInfo, batch_size: int, image_size: int, *,
               data_dir: str | None = None, cache: bool = False) -> tf.data.Dataset:
    """One pass in index order: {"image": [b, S, S, C] float32, "label", "index",
    "captions": ragged string [b, (n)]} (templated: the one caption of TEMPLATES[i % T])."""
    data.check_positive("batch_size", batch_size)
    ds = _read_pairs(info, data_dir, shuffle_files=False, seed=None, input_context=None)
    num_templates = len(info.templates)

    def select(ex):
        if info.templated:
            ex["captions"] = ex["captions"][ex["index"] % num_templates][None]
        if not info.fixed_size:
            ex[IMAGE_KEY] = augment.preprocess_for_eval(ex[IMAGE_KEY][None], image_size)[0]
        return ex

    ds = ds.map(select, num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = ds.ragged_batch(batch_size)
    if info.fixed_size:
        ds = ds.map(lambda b: {**b, IMAGE_KEY: augment.preprocess_for_eval(b[IMAGE_KEY],
                                                                            image_size)},
                    num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
