"""Tests for tf_sogclr.data.fashion_mnist: the offline TFDS builder over Debian's idx files."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_sogclr.data import fashion_mnist

SOURCE = fashion_mnist.DEFAULT_SOURCE_DIR
NUM = 64  # examples per split in the slice


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    name = fashion_mnist.prepare_fashion_mnist(data_dir, max_examples_per_split=NUM, num_shards=2)
    assert name == fashion_mnist.NAME == "fashion_mnist_debian"
    return data_dir


def _raw(split):
    images_file, labels_file = fashion_mnist.SPLIT_FILES[split]
    images = fashion_mnist.read_idx(os.path.join(SOURCE, images_file))
    labels = fashion_mnist.read_idx(os.path.join(SOURCE, labels_file))
    return images, labels


def test_raw_files_hold_the_full_splits():
    for split, count in (("train", 60000), ("test", 10000)):
        images, labels = _raw(split)
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (count,) and set(np.unique(labels)) == set(range(10))


def test_slice_has_the_splits_counts_and_features(data_dir):
    builder = tfds.builder(fashion_mnist.NAME, data_dir=data_dir)
    assert sorted(builder.info.splits.keys()) == ["test", "train"]
    for split in ("train", "test"):
        assert builder.info.splits[split].num_examples == NUM
        assert builder.info.splits[split].num_shards == 2
        assert sum(builder.info.splits[split].shard_lengths) == NUM
    image, label = builder.info.features["image"], builder.info.features["label"]
    assert image.shape == (28, 28, 1) and image.dtype == tf.uint8
    assert label.names == list(fashion_mnist.CLASS_NAMES) and label.num_classes == 10
    assert label.names[9] == "Ankle boot"


@pytest.mark.parametrize("split", ["train", "test"])
def test_images_and_labels_match_the_idx_files(data_dir, split):
    raw_images, raw_labels = _raw(split)
    expected = {raw_images[i].tobytes(): int(raw_labels[i]) for i in range(NUM)}
    assert len(expected) == NUM  # the first NUM images are distinct
    builder = tfds.builder(fashion_mnist.NAME, data_dir=data_dir)
    seen = {}
    for example in builder.as_dataset(split=split).as_numpy_iterator():
        image, label = example["image"], example["label"]
        assert image.dtype == np.uint8 and image.shape == (28, 28, 1)
        assert label.dtype == np.int64
        seen[image[:, :, 0].tobytes()] = int(label)
    assert seen == expected  # the first NUM idx records, each with its own label


def test_prepare_is_idempotent(data_dir):
    info_file = os.path.join(data_dir, fashion_mnist.NAME, "1.0.0", "dataset_info.json")
    before = os.stat(info_file).st_mtime_ns
    # Different arguments do not rebuild a prepared dataset (nor need the source files).
    name = fashion_mnist.prepare_fashion_mnist(data_dir, source_dir="/nonexistent")
    assert name == fashion_mnist.NAME
    assert os.stat(info_file).st_mtime_ns == before
    builder = tfds.builder(fashion_mnist.NAME, data_dir=data_dir)
    assert builder.info.splits["train"].num_examples == NUM


def test_missing_source_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        fashion_mnist.prepare_fashion_mnist(str(tmp_path / "tfds"), source_dir=str(tmp_path))
    message = str(error.value)
    assert "dataset-fashion-mnist" in message and "apt-get install" in message
    assert "\n" not in message
    prepared = tmp_path / "tfds" / fashion_mnist.NAME / "1.0.0" / "dataset_info.json"
    assert not prepared.exists()


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="max_examples_per_split"):
        fashion_mnist.prepare_fashion_mnist(str(tmp_path), max_examples_per_split=0)
    with pytest.raises(ValueError, match="num_shards"):
        fashion_mnist.prepare_fashion_mnist(str(tmp_path), num_shards=0)
    not_idx = tmp_path / "bad.gz"
    with gzip.open(not_idx, "wb") as f:
        f.write(b"\x00\x00\x00\x07" + b"\x00" * 12)
    with pytest.raises(ValueError, match="magic"):
        fashion_mnist.read_idx(str(not_idx))
