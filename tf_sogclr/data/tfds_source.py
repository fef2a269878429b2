"""TFDS splits as the pipelines read them: metadata, stable example indices, checked decoding.

Every example gets a stable index in [0, num_examples) from its `tfds_id`
(docs/algorithm.md, "Example indices"):
`<name>-<split>.<format>-<shard>-of-<total>__<offset>` gives (shard, offset), and index =
(examples in earlier shards of the split) + offset. The index does not depend on epoch, host
or file order. With a sliced split ("train[:10%]") an example keeps its index in the full
split, so the u-table needs `describe(...).num_examples` rows (the full split), not the
slice.

Every image is decoded by `decode_checked`, for every modality: bytes that are no image, or
an image whose size differs from a fixed-size dataset's image feature, fail at the batch that
holds it (an assertion with the example's tfds_id), naming the dataset and split. Images are
decoded to the dataset's channel count: a grayscale image in an RGB dataset (ImageNet has
some) becomes RGB, as TFDS decodes it. A dataset without a 'label' feature reads label -1.
An empty split, or one without labels where labels are needed, fails before anything is read
(`check_not_empty`, `check_labels`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_sogclr.data import offline  # registers the offline builders with TFDS


AUTOTUNE = tf.data.AUTOTUNE
IMAGE_KEY, LABEL_KEY = "image", "label"
_TFDS_ID_PATTERN = r"^.*-(\d+)-of-(\d+)__(\d+)$"
SPLIT_PATTERN = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(\[[^\]]*\])?\s*$")
_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the pipelines and the model need to know about a TFDS split, read from its metadata."""

    name: str  # as requested, for tfds.builder ("fashion_mnist_debian")
    full_name: str  # with version ("fashion_mnist_debian/1.0.0")
    split: str  # as requested, slice included ("train[:10%]")
    base_split: str  # the underlying split ("train")
    num_examples: int  # examples in the full base split: the u-table size; indices lie below it
    num_split_examples: int  # examples the requested (possibly sliced) split yields per epoch
    num_classes: int | None  # None: the dataset has no 'label' feature
    image_shape: tuple  # (height, width, channels); height/width None when sizes vary
    shard_lengths: tuple  # examples per shard file of the base split, in shard order
    label_names: tuple | None = None  # the ClassLabel's names, in label order; None: no labels
    text_features: tuple = ()  # paths of the Text features ("captions/text"), Sequences unwrapped

    @property
    def channels(self) -> int:
        """Image channels: 1 (grayscale) or 3 (RGB)."""
        return self.image_shape[-1]

    @property
    def fixed_size(self) -> bool:
        """True when all images share one (height, width)."""
        return None not in self.image_shape[:2]


def prepared_builder(dataset: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `dataset`; ValueError (with close names or a hint) when it is
    unknown or not prepared under `data_dir`."""
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(dataset.split("/")[0].split(":")[0], known, n=5)
        raise ValueError(
            f"dataset={dataset!r} is not a known TFDS dataset"
            + (f"; close names: {close}" if close else "")
            + ". tensorflow_datasets.list_builders() lists all names; "
            f"{sorted(offline.PREPARE)} are built offline by this package."
        ) from None
    if not builder.is_prepared():
        prepared = sorted(n for n in (os.listdir(data_dir) if data_dir and os.path.isdir(data_dir)
                                      else []) if not n.startswith(("downloads", ".")))
        hint = (f" Run tf_sogclr.data.offline.prepare({builder.name!r}, {data_dir!r}) first."
                if offline.is_offline(builder.name) else
                " Prepare it first (tfds.builder(...).download_and_prepare() where a network "
                "or manual files are available).")
        raise ValueError(
            f"dataset={dataset!r} is not prepared under data_dir={data_dir!r} "
            f"(looked in {builder.data_dir}; prepared there: {prepared}).{hint}")
    return builder


def describe(dataset: str, split: str, data_dir: str | None = None) -> DatasetInfo:
    """Reads a TFDS split's metadata (no examples): sizes, classes, image shape, shards.

    Raises ValueError for an unknown or unprepared dataset, an unknown split (listing those
    that exist), a split union ("train+test"), or a dataset without an 'image' feature. A
    dataset without a ClassLabel 'label' feature gets `num_classes=None`.
    """
    builder = prepared_builder(dataset, data_dir)
    splits = sorted(builder.info.splits.keys())
    match = SPLIT_PATTERN.match(split)
    if match is None:
        raise ValueError(
            f"split={split!r} must be one split name, optionally sliced (e.g. 'train' or "
            f"'train[:10%]'); unions like 'train+test' would give two examples the same index. "
            f"Splits of {dataset}: {splits}")
    base_split = match.group(1)
    if base_split not in builder.info.splits:
        raise ValueError(f"split={split!r} must be one split of {dataset}, optionally sliced: "
                         f"{dataset} has no split {base_split!r}; its splits are {splits}")
    try:
        num_split_examples = builder.info.splits[split].num_examples
    except (ValueError, AssertionError, KeyError) as error:
        raise ValueError(
            f"split={split!r} is not a valid slice of {base_split!r}: {error}") from None

    features = builder.info.features
    names = list(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else []
    image = features[IMAGE_KEY] if IMAGE_KEY in names else None
    label = features[LABEL_KEY] if LABEL_KEY in names else None
    if not isinstance(image, tfds.features.Image):
        raise ValueError(
            f"dataset={dataset!r} needs an Image feature {IMAGE_KEY!r} (and, for linear "
            f"evaluation, k-NN and fine-tuning, a ClassLabel feature {LABEL_KEY!r}); its "
            f"features are {names}")
    if label is not None and not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(f"dataset={dataset!r}: feature {LABEL_KEY!r} must be a ClassLabel, "
                         f"got {type(label).__name__}")
    if image.shape[-1] not in (1, 3):
        raise ValueError(f"dataset={dataset!r} has {image.shape[-1]}-channel images; "
                         "supported: 1 (grayscale) or 3 (RGB)")

    base = builder.info.splits[base_split]
    shard_lengths = tuple(int(n) for n in base.shard_lengths)
    if len(shard_lengths) != base.num_shards or sum(shard_lengths) != base.num_examples:
        raise ValueError(
            f"{dataset}/{base_split}: metadata is inconsistent ({base.num_shards} shards, "
            f"shard_lengths {shard_lengths} summing to {sum(shard_lengths)}, "
            f"num_examples {base.num_examples}); stable indices need both to agree")
    if base.num_examples > _INT32_MAX:
        raise ValueError(f"{dataset}/{base_split} has {base.num_examples} examples; "
                         "int32 indices hold at most 2**31 - 1")
    return DatasetInfo(
        name=dataset,
        full_name=builder.info.full_name,
        split=split,
        base_split=base_split,
        num_examples=int(base.num_examples),
        num_split_examples=int(num_split_examples),
        num_classes=None if label is None else int(label.num_classes),
        image_shape=tuple(image.shape),
        shard_lengths=shard_lengths,
        label_names=None if label is None else tuple(label.names),
        text_features=_text_feature_paths(features),
    )


def _text_feature_paths(feature, prefix=""):
    """Paths ("captions/text") of every Text feature under `feature`, Sequences unwrapped."""
    while isinstance(feature, tfds.features.Sequence):
        feature = feature.feature
    if isinstance(feature, tfds.features.Text):
        return (prefix,)
    if not isinstance(feature, tfds.features.FeaturesDict):
        return ()
    return tuple(path for key in feature.keys()
                 for path in _text_feature_paths(feature[key], f"{prefix}/{key}".lstrip("/")))


def tfds_id_to_index(tfds_ids: tf.Tensor, shard_lengths) -> tf.Tensor:
    """Stable indices (int32, same shape) of `tfds_id` strings, given the split's shard_lengths.

    Raises (tf.errors.InvalidArgumentError, at run time) for a malformed id, a shard count that
    differs from len(shard_lengths), or an offset past its shard: no index outside [0, N).
    """
    lengths = [int(n) for n in shard_lengths]
    starts = tf.constant(np.concatenate([[0], np.cumsum(lengths)[:-1]]), tf.int64)
    lengths_t = tf.constant(lengths, tf.int64)

    def field(group):
        text = tf.strings.regex_replace(tfds_ids, _TFDS_ID_PATTERN, group)
        return tf.strings.to_number(text, tf.int64)

    well_formed = tf.debugging.Assert(
        tf.reduce_all(tf.strings.regex_full_match(tfds_ids, _TFDS_ID_PATTERN)),
        ["tfds_id not of the form <name>-<split>.<format>-<shard>-of-<total>__<offset>:",
         tfds_ids], summarize=4)
    with tf.control_dependencies([well_formed]):
        shard, total, offset = field(r"\1"), field(r"\2"), field(r"\3")
    in_range = tf.debugging.Assert(
        tf.reduce_all((total == len(lengths)) & (shard >= 0) & (shard < len(lengths))),
        [f"tfds_id shard fields disagree with the split's {len(lengths)} shards:", tfds_ids],
        summarize=4)
    with tf.control_dependencies([in_range]):
        shard = tf.identity(shard)
    past_end = tf.debugging.Assert(
        tf.reduce_all((offset >= 0) & (offset < tf.gather(lengths_t, shard))),
        ["tfds_id offset past the end of its shard:", tfds_ids], summarize=4)
    with tf.control_dependencies([past_end]):
        return tf.cast(tf.gather(starts, shard) + offset, tf.int32)


def check_not_empty(info: DatasetInfo) -> None:
    """Raises ValueError if the (possibly sliced) split yields no examples."""
    if info.num_split_examples == 0:
        raise ValueError(f"split {info.split!r} of dataset {info.name!r} is empty (0 examples; "
                         f"the full split {info.base_split!r} has {info.num_examples}).")


def check_labels(info: DatasetInfo, needed_for: str) -> None:
    """Raises ValueError if the dataset has no labels; `needed_for` says what needs them."""
    if info.num_classes is None:
        raise ValueError(f"{needed_for} needs labels, but dataset {info.name!r} (split "
                         f"{info.split!r}) has no ClassLabel feature {LABEL_KEY!r}.")


_IMAGE_HEADERS = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP


def _looks_like_image(encoded: tf.Tensor) -> tf.Tensor:
    """True when `encoded` starts like a format `tf.io.decode_image` reads (WebP included)."""
    head = tf.strings.join([tf.strings.substr(encoded, 0, 12), b"\x00" * 12])  # >= 12 bytes
    ok = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),
                        tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
    for header in _IMAGE_HEADERS:
        ok = tf.logical_or(ok, tf.equal(tf.strings.substr(head, 0, len(header)), header))
    return ok


def decode_checked(info: DatasetInfo, encoded: tf.Tensor, tfds_id: tf.Tensor) -> tf.Tensor:
    """Decodes one image to `info.channels` channels (a grayscale image in an RGB dataset is
    converted, as TFDS does: ImageNet holds some); fails naming dataset, split and example for
    bytes that are no image, or an image of another size than a fixed-size dataset's."""
    where = f"dataset {info.name} split {info.split}: example"  # Assert escapes quotes.
    readable = tf.debugging.Assert(_looks_like_image(encoded), [
        where, tfds_id, "is not a decodable image (no JPEG, PNG, GIF, BMP or WebP header)"],
        summarize=1)
    with tf.control_dependencies([readable]):
        image = tf.io.decode_image(encoded, channels=info.channels, dtype=tf.uint8,
                                   expand_animations=False)
    if info.fixed_size:
        size = tf.shape(image)[:2]
        fits = tf.debugging.Assert(tf.reduce_all(tf.equal(size, info.image_shape[:2])), [
            where, tfds_id, "has an image of (height, width)", size,
            f"but the image feature of the dataset is {tuple(info.image_shape[:2])}"],
            summarize=2)
        with tf.control_dependencies([fits]):
            image = tf.identity(image)
    return tf.ensure_shape(image, info.image_shape)


def check_channels(info: DatasetInfo, channels: int | None) -> int:
    if channels is not None and channels != info.channels:
        raise ValueError(
            f"channels={channels} requested but {info.name} has {info.channels}-channel images "
            "(1: grayscale, 3: RGB); pass channels=None or the matching value")
    return info.channels


def host_split(split: str, input_context: tf.distribute.InputContext | None):
    """This host's share of `split`: contiguous, disjoint, covering the split over all hosts."""
    if input_context is None or input_context.num_input_pipelines == 1:
        return split
    return tfds.even_splits(split, n=input_context.num_input_pipelines)[
        input_context.input_pipeline_id]


def read_split(info: DatasetInfo, data_dir, shuffle_files: bool, seed: int | None,
               input_context: tf.distribute.InputContext | None, *, keep: tuple = (),
               decode_images: bool = True) -> tf.data.Dataset:
    """Per-example {"image": uint8 [H, W, C], "label": int64 [], "tfds_id": string []}, plus
    the top-level features named in `keep` as TFDS gives them. With decode_images=False,
    "image" holds the encoded bytes (a string []) and is not checked."""
    builder = tfds.builder(info.name, data_dir=data_dir)
    # Unshuffled reads go file after file (no interleave), so they follow the index order.
    read_config = tfds.ReadConfig(
        add_tfds_id=True, shuffle_seed=seed, try_autocache=False,
        **({} if shuffle_files else {"interleave_cycle_length": 1}))
    ds = builder.as_dataset(
        split=host_split(info.split, input_context),
        shuffle_files=shuffle_files,
        read_config=read_config,
        decoders={IMAGE_KEY: tfds.decode.SkipDecoding()},
    )

    def decode(example):
        image = (decode_checked(info, example[IMAGE_KEY], example["tfds_id"]) if decode_images
                 else example[IMAGE_KEY])
        label = (tf.cast(example[LABEL_KEY], tf.int64) if info.num_classes is not None
                 else tf.constant(-1, tf.int64))
        return {IMAGE_KEY: image, LABEL_KEY: label, "tfds_id": example["tfds_id"],
                **{key: example[key] for key in keep}}

    return ds.map(decode, num_parallel_calls=AUTOTUNE)


def read_examples(
    dataset: str,
    split: str,
    data_dir: str | None = None,
    *,
    shuffle_files: bool = False,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """One pass over a split: {"image": uint8 [H, W, C], "label": int64 [], "index": int32 []}.

    Without shuffle_files, examples come in index order. With an input_context, host
    `input_pipeline_id` reads its contiguous 1/num_input_pipelines share.
    """
    info = describe(dataset, split, data_dir)
    ds = read_split(info, data_dir, shuffle_files, seed, input_context)
    return ds.map(
        lambda ex: {IMAGE_KEY: ex[IMAGE_KEY], LABEL_KEY: ex[LABEL_KEY],
                    "index": tfds_id_to_index(ex["tfds_id"], info.shard_lengths)},
        num_parallel_calls=AUTOTUNE)
