"""The input pipelines: two-view pretraining batches, evaluation batches, fine-tuning batches.

Pipelines read a split through `tfds_source.read_split` (encoded images decoded by the
checked decoder), batch uint8 images and augment whole batches (`data.augment`). Datasets
whose images vary in size (ImageNet) are cropped to image_size per example before batching.

Seeds: `seed` fixes file order, shuffling and augmentation (a batch's augmentation seed
derives from (seed, host, batch number), never from timing); bit-identical runs also need
deterministic=True, which keeps element order under parallel reads and maps. The shuffle,
repeat and seed helpers (`shuffled_and_repeated`, `batch_seeds`, `pipeline_options`) serve
the caption pipelines (`data.captions`) too.
"""

from __future__ import annotations

import random
from typing import Callable

import tensorflow as tf

from tf_sogclr import checks
from tf_sogclr.data import augment
from tf_sogclr.data.tfds_source import (AUTOTUNE, IMAGE_KEY, LABEL_KEY, check_channels,
                                        check_labels, check_not_empty, describe, read_split,
                                        tfds_id_to_index)


def per_replica_batch_size(global_batch_size: int, input_context) -> int:
    """This pipeline's batch: `global_batch_size`, or its per-replica share (must divide)."""
    checks.positive_int("global_batch_size", global_batch_size)
    if input_context is None:
        return global_batch_size
    replicas = input_context.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"global_batch_size={global_batch_size} must be divisible by the "
                         f"{replicas} replicas in sync")
    return input_context.get_per_replica_batch_size(global_batch_size)


def pipeline_options(deterministic: bool) -> tf.data.Options:
    """tf.data options of every pipeline: autotuning on, element order as asked."""
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    return options


def augmentation_seeds(seed: int | None, deterministic: bool, input_context) -> tuple[int, int]:
    """(augmentation seed, pipeline id); a random augmentation seed when none is given."""
    if deterministic and seed is None:
        raise ValueError("deterministic=True needs an integer seed (got seed=None)")
    if seed is not None and not checks.is_integer(seed):
        checks.fail("seed", "an integer or None", seed)
    pipeline = 0 if input_context is None else input_context.input_pipeline_id
    return (random.SystemRandom().randrange(2**31) if seed is None else int(seed)), pipeline


def batch_seeds(seed: int | None, deterministic: bool, input_context
                ) -> Callable[[tf.Tensor, int], tf.Tensor]:
    """`seed_for(counter, salt)`: the stateless seed ([2] int64) of element or batch number
    `counter` for use `salt`, from (seed, host, counter, salt) alone, never from timing."""
    base_seed = tf.constant(augmentation_seeds(seed, deterministic, input_context), tf.int64)

    def seed_for(counter, salt):
        fold_in = tf.random.experimental.stateless_fold_in
        return fold_in(fold_in(base_seed, counter), salt)

    return seed_for


def shuffled_and_repeated(ds: tf.data.Dataset, shuffle_buffer: int, num_epochs: int | None,
                          cache: bool, seed: int | None) -> tf.data.Dataset:
    """`ds` cached (optionally), shuffled anew each epoch and repeated `num_epochs` times
    (None: forever)."""
    checks.positive_int("shuffle_buffer", shuffle_buffer)
    if num_epochs is not None:
        checks.positive_int("num_epochs", num_epochs)
    if cache:
        ds = ds.cache()
    return ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat(num_epochs)


def _augmented_batches(info, data_dir, batch_size, augmenter, num_views, shuffle_buffer,
                       num_epochs, cache, seed, deterministic, input_context):
    """Shuffled, repeated batches {"views": num_views x [b, S, S, C], "index", "label"}."""
    seed_for = batch_seeds(seed, deterministic, input_context)

    def view_seeds(counter, salt):
        return tf.unstack(tf.random.experimental.stateless_split(seed_for(counter, salt),
                                                                 num_views))

    ds = read_split(info, data_dir, shuffle_files=True, seed=seed, input_context=input_context)
    ds = shuffled_and_repeated(ds, shuffle_buffer, num_epochs, cache, seed)
    if not info.fixed_size:  # Images vary in size: crop each to S x S before batching.
        def crop(counter, ex):
            image = ex.pop(IMAGE_KEY)[None]
            ex["views"] = tuple(augmenter.crop_and_flip(image, s)[0]
                                for s in view_seeds(counter, 0))
            return ex

        ds = ds.enumerate().map(crop, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)

    def views(counter, batch):
        if info.fixed_size:
            out = tuple(augmenter(batch[IMAGE_KEY], s) for s in view_seeds(counter, 1))
        else:
            out = tuple(augmenter.distort(v, s)
                        for v, s in zip(batch["views"], view_seeds(counter, 1)))
        return {"views": out, LABEL_KEY: batch[LABEL_KEY],
                "index": tfds_id_to_index(batch["tfds_id"], info.shard_lengths)}

    return ds.enumerate().map(views, num_parallel_calls=AUTOTUNE)


def pretrain_dataset(
    dataset: str,
    split: str,
    global_batch_size: int,
    augmenter: augment.SimCLRAugment,
    *,
    data_dir: str | None = None,
    shuffle_buffer: int = 10_000,
    num_epochs: int | None = None,
    cache: bool = False,
    seed: int | None = None,
    deterministic: bool = False,
    channels: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches {"view1", "view2": [b, S, S, C] float32, "index": [b] int32, "label": [b] int64}.

    b = global_batch_size, or its per-replica share with an input_context (which also shards
    hosts); shuffled, repeated `num_epochs` times (None: forever), drop_remainder=True.
    """
    info = describe(dataset, split, data_dir)
    check_not_empty(info)
    if augmenter.channels != check_channels(info, channels):
        raise ValueError(f"augmenter.channels={augmenter.channels} but {info.name} has "
                         f"{info.channels}-channel images")
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    ds = _augmented_batches(info, data_dir, batch_size, augmenter, 2, shuffle_buffer,
                            num_epochs, cache, seed, deterministic, input_context)
    ds = ds.map(lambda b: {"view1": b["views"][0], "view2": b["views"][1],
                           "index": b["index"], LABEL_KEY: b[LABEL_KEY]})
    return ds.prefetch(AUTOTUNE).with_options(pipeline_options(deterministic))


def _eval_batches(info, ds, batch_size, image_size, crop_proportion, drop_remainder):
    def preprocess(images):
        return augment.preprocess_for_eval(images, image_size, crop_proportion)

    if not info.fixed_size:
        ds = ds.map(lambda ex: {**ex, IMAGE_KEY: preprocess(ex[IMAGE_KEY][None])[0]},
                    num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    if info.fixed_size:
        ds = ds.map(lambda b: {**b, IMAGE_KEY: preprocess(b[IMAGE_KEY])},
                    num_parallel_calls=AUTOTUNE)
    return ds


def eval_dataset(
    dataset: str,
    split: str,
    global_batch_size: int,
    image_size: int,
    *,
    data_dir: str | None = None,
    drop_remainder: bool = False,
    crop_proportion: float | None = None,
    cache: bool = False,
    channels: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """One pass in index order: {"image": [b, S, S, C] float32, "label": [b] int64, "index"}.

    No augmentation (`augment.preprocess_for_eval`). drop_remainder=False keeps every example
    (last batch smaller: fine on CPU/GPU); True gives static shapes for XLA/TPU but skips the
    last num_split_examples % b examples, as SimCLR's TPU eval does.
    """
    info = describe(dataset, split, data_dir)
    check_not_empty(info)
    check_channels(info, channels)
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    ds = read_split(info, data_dir, shuffle_files=False, seed=None, input_context=input_context)
    ds = ds.map(lambda ex: {IMAGE_KEY: ex[IMAGE_KEY], LABEL_KEY: ex[LABEL_KEY],
                            "index": tfds_id_to_index(ex["tfds_id"], info.shard_lengths)},
                num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = _eval_batches(info, ds, batch_size, image_size, crop_proportion, drop_remainder)
    return ds.prefetch(AUTOTUNE).with_options(pipeline_options(deterministic=True))


def finetune_dataset(
    dataset: str,
    split: str,
    global_batch_size: int,
    image_size: int,
    *,
    data_dir: str | None = None,
    crop_area_min: float = 0.08,
    shuffle_buffer: int = 10_000,
    num_epochs: int | None = 1,
    cache: bool = False,
    seed: int | None = None,
    deterministic: bool = False,
    channels: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    extra_augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """Shuffled (image [b, S, S, C] float32, label [b] int64) batches for Keras `fit`.

    SimCLR's fine-tuning augmentation (random resized crop and flip, no colour), drop_remainder;
    one epoch per iteration by default, so `fit(epochs=...)` counts epochs. `extra_augment`
    (e.g. a Keras preprocessing layer) maps each batch of images `[b, S, S, C]` in [0, 1] to
    images of the same shape after the crop and flip.
    """
    info = describe(dataset, split, data_dir)
    check_not_empty(info)
    check_labels(info, "Fine-tuning")
    augmenter = augment.SimCLRAugment(
        image_size=image_size, channels=check_channels(info, channels),
        crop_area_min=crop_area_min, color_distort=False)
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    ds = _augmented_batches(info, data_dir, batch_size, augmenter, 1, shuffle_buffer,
                            num_epochs, cache, seed, deterministic, input_context)
    ds = ds.map(lambda b: (b["views"][0], b[LABEL_KEY]))
    if extra_augment is not None:
        ds = ds.map(lambda images, labels: (extra_augment(images), labels),
                    num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(pipeline_options(deterministic))


def _distribute(strategy: tf.distribute.Strategy,
                dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
    return strategy.distribute_datasets_from_function(dataset_fn)


def distributed_pretrain_dataset(strategy: tf.distribute.Strategy, *args, **kwargs):
    """`pretrain_dataset(*args, **kwargs)` distributed: per-replica batches of global / replicas."""
    if "input_context" in kwargs:
        raise ValueError("input_context is supplied by the strategy; do not pass it")
    return _distribute(strategy, lambda ctx: pretrain_dataset(*args, input_context=ctx, **kwargs))


def distributed_eval_dataset(strategy: tf.distribute.Strategy, *args, **kwargs):
    """`eval_dataset(*args, **kwargs)` distributed by `strategy` (per-replica batches)."""
    if "input_context" in kwargs:
        raise ValueError("input_context is supplied by the strategy; do not pass it")
    return _distribute(strategy, lambda ctx: eval_dataset(*args, input_context=ctx, **kwargs))
