"""Tests of the Fashion-MNIST mosaics builder and of image-text training on it."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import tiny
from tf_sogclr import data
from tf_sogclr.data import captions, fashion_mnist, offline
from tf_sogclr.data import fashion_mnist_mosaics as mosaics

NUM = 48  # mosaics per split in the prepared fixture


@pytest.fixture(scope="module")
def mosaics_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_mosaics"))
    mosaics.prepare_fashion_mnist_mosaics(data_dir, max_examples_per_split=NUM, num_shards=2)
    return data_dir


def _source(split):
    images, labels = fashion_mnist.SPLIT_FILES[split]
    return (fashion_mnist.read_idx(os.path.join(fashion_mnist.DEFAULT_SOURCE_DIR, images)),
            fashion_mnist.read_idx(os.path.join(fashion_mnist.DEFAULT_SOURCE_DIR, labels)))


def test_mosaics_are_their_items_captioned_by_class_and_position(mosaics_dir):
    images, labels = _source("test")
    info = data.describe(mosaics.NAME, "test", mosaics_dir)
    assert (info.num_split_examples, info.image_shape) == (NUM, (56, 56, 1))
    assert captions.caption_feature(info) == "caption" and info.num_classes is None
    examples = list(tfds.as_numpy(tfds.builder(mosaics.NAME, data_dir=mosaics_dir)
                                  .as_dataset(split="test")))
    assert len(examples) == NUM
    for ex in examples:
        ids = ex["item_ids"]
        np.testing.assert_array_equal(ex["items"], labels[ids])
        # Reading order: top left, top right, bottom left, bottom right.
        np.testing.assert_array_equal(ex["image"][:28, 28:, 0], images[ids[1]])
        np.testing.assert_array_equal(ex["image"][28:, :28, 0], images[ids[2]])
        np.testing.assert_array_equal(ex["image"], mosaics.compose(images[ids]))
        words = [fashion_mnist.CAPTION_NAMES[c] for c in labels[ids]]
        assert ex["caption"].decode() == (f"{words[0]} top left, {words[1]} top right, "
                                          f"{words[2]} bottom left, {words[3]} bottom right")


def test_mosaic_items_are_deterministic_and_test_captions_distinct():
    _, train_labels = _source("train")
    _, test_labels = _source("test")
    train = mosaics.mosaic_items("train", train_labels)
    test = mosaics.mosaic_items("test", test_labels)
    assert train.shape == (60_000, 4) and test.shape == (2_000, 4)
    np.testing.assert_array_equal(test, mosaics.mosaic_items("test", test_labels))
    test_captions = [mosaics.caption(test_labels[ids]) for ids in test]
    assert len(set(test_captions)) == 2_000  # recall over them is recall
    train_captions = {mosaics.caption(train_labels[ids]) for ids in train}
    assert len(train_captions) > 9_900  # of the 10^4 possible
    # At most 16 words (four ankle boots): the text encoder's default 16 tokens hold them all.
    assert max(len(c.split()) for c in set(test_captions) | train_captions) <= 16
    assert len(mosaics.caption([9] * 4).split()) == 16


def test_single_items_tile_into_mosaics_of_one_class_with_their_caption():
    images, labels = _source("test")
    tiled = mosaics.tile(tf.constant(images[:3, :, :, None])).numpy()
    for image, item in zip(tiled, images[:3]):
        np.testing.assert_array_equal(image, mosaics.compose(np.stack([item] * 4)))
    prompts = mosaics.item_prompts()
    assert len(prompts) == 10 and prompts[8] == [
        "bag top left, bag top right, bag bottom left, bag bottom right"]


def test_offline_datasets_prepare_by_name_and_refuse_missing_files(tmp_path):
    assert offline.is_offline("fashion_mnist_mosaics:1.0.0")
    assert not offline.prepare("mnist", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        mosaics.prepare_fashion_mnist_mosaics(str(tmp_path / "tfds"), source_dir=str(tmp_path))


def test_image_text_training_on_mosaics_reports_recall_both_ways(mosaics_dir, tmp_path):
    import dataclasses

    from tf_sogclr.training import lifecycle, modalities

    cfg = tiny.bimodal_config(mosaics_dir, tmp_path / "run", train_steps=2)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, dataset=mosaics.NAME, image_size=16, random_flip=False),
        text=dataclasses.replace(cfg.text, max_text_length=16))
    info = modalities.get("bimodal").describe(cfg, "train")
    # Flips mirror left and right, which the captions name: refused before anything runs.
    flipping = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, random_flip=True))
    with pytest.raises(ValueError, match="--random_flip=true mirrors the images of "
                                         "fashion_mnist_mosaics.*pass --random_flip=false"):
        lifecycle.check_against_data(flipping, info, tf.distribute.get_strategy())
    result = lifecycle.pretrain(cfg)
    assert result.step == 2 and result.logs["bad_steps"] == 0
    scores = lifecycle.evaluate(cfg)
    assert scores["num_images"] == NUM and "zero_shot_top1" not in scores  # no labels
    # Zero-shot on single items instead: Fashion-MNIST's test items, each tiled four times.
    assert 0.0 <= scores["item_zero_shot_top1"] <= 1.0
    for direction in ("image_to_text", "text_to_image"):
        recall = [scores[f"{direction}_recall@{k}"] for k in (1, 5, 10)]
        assert 0.0 <= recall[0] <= recall[1] <= recall[2] <= 1.0, (direction, recall)
