"""Tests for tf_sogclr.data: stable indices, two-view batches, eval and fine-tune batches.

Data: the first 120 train / 120 test examples of Fashion-MNIST written as TFDS files with 3
shards per split, plus a tiny RGB dataset whose images vary in size (the ImageNet code path).
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_sogclr import data
from tf_sogclr.data import augment
from tf_sogclr.data import fashion_mnist

NAME = fashion_mnist.NAME
NUM_TRAIN = NUM_TEST = 120


class TinyVariableSizeImages(tfds.core.GeneratorBasedBuilder):
    """24 RGB images of sizes 20..39, 3 classes, 2 shards: the per-example crop path."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums file (see tf_sogclr.data.fashion_mnist)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.RandomState(0)
        for i in range(24):
            height, width = rng.randint(20, 40, size=2)
            yield i, {"image": rng.randint(0, 256, (height, width, 3)).astype(np.uint8),
                      "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    fashion_mnist.prepare_fashion_mnist(data_dir, max_examples_per_split=NUM_TRAIN, num_shards=3)
    TinyVariableSizeImages(data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=2))
    return data_dir


def _examples(data_dir, split="train", **kwargs):
    """[(index, image bytes, label)] in reading order."""
    ds = data.read_examples(NAME, split, data_dir, **kwargs)
    return [(int(e["index"]), e["image"].tobytes(), int(e["label"]))
            for e in ds.as_numpy_iterator()]


def _augmenter(**kwargs):
    return augment.SimCLRAugment(image_size=28, channels=1, **kwargs)


# --------------------------------------------------------------------------- describe


def test_describe_reads_the_split_metadata(data_dir):
    info = data.describe(NAME, "train", data_dir)
    assert (info.num_examples, info.num_split_examples) == (NUM_TRAIN, NUM_TRAIN)
    assert info.num_classes == 10 and info.image_shape == (28, 28, 1) and info.channels == 1
    assert len(info.shard_lengths) == 3 and sum(info.shard_lengths) == NUM_TRAIN
    sliced = data.describe(NAME, "train[:25%]", data_dir)
    assert (sliced.num_examples, sliced.num_split_examples) == (NUM_TRAIN, 30)
    assert sliced.base_split == "train"
    variable = data.describe("tiny_variable_size_images", "train", data_dir)
    assert variable.image_shape == (None, None, 3) and not variable.fixed_size


def test_bad_names_raise_value_errors_listing_choices(data_dir):
    with pytest.raises(ValueError, match=r"close names: \['fashion_mnist_debian'"):
        data.describe("fashion_mnist_debain", "train", data_dir)
    with pytest.raises(ValueError, match=r"its splits are \['test', 'train'\]"):
        data.describe(NAME, "validation", data_dir)
    with pytest.raises(ValueError, match="unions"):
        data.describe(NAME, "train+test", data_dir)
    with pytest.raises(ValueError, match="not a valid slice"):
        data.describe(NAME, "train[:abc]", data_dir)
    with pytest.raises(ValueError, match="not prepared .* prepared there: .*fashion_mnist_debian"):
        data.describe("mnist", "train", data_dir)
    with pytest.raises(ValueError, match="channels=3"):
        data.eval_dataset(NAME, "test", 8, 28, data_dir=data_dir, channels=3)
    with pytest.raises(ValueError, match="augmenter.channels"):
        data.pretrain_dataset(NAME, "train", 8, augment.SimCLRAugment(28), data_dir=data_dir)
    with pytest.raises(ValueError, match="deterministic"):
        data.pretrain_dataset(NAME, "train", 8, _augmenter(), data_dir=data_dir, deterministic=True)
    with pytest.raises(ValueError, match="shuffle_buffer"):
        data.pretrain_dataset(NAME, "train", 8, _augmenter(), data_dir=data_dir, shuffle_buffer=0)
    with pytest.raises(ValueError, match="global_batch_size"):
        data.pretrain_dataset(NAME, "train", 0, _augmenter(), data_dir=data_dir)
    context = tf.distribute.InputContext(num_replicas_in_sync=2)
    with pytest.raises(ValueError, match="divisible"):
        data.pretrain_dataset(NAME, "train", 9, _augmenter(), data_dir=data_dir,
                              input_context=context)


# --------------------------------------------------------------------------- indices


def test_tfds_id_to_index_adds_earlier_shards():
    lengths = (3, 5, 2)
    ids = tf.constant(["ds-train.tfrecord-00000-of-00003__0",
                       "ds-train.tfrecord-00000-of-00003__2",
                       "ds-train.tfrecord-00001-of-00003__4",
                       "ds-train.array_record-00002-of-00003__1"])
    index = data.tfds_id_to_index(ids, lengths)
    assert index.dtype == tf.int32
    np.testing.assert_array_equal(index.numpy(), [0, 2, 7, 9])
    assert int(data.tfds_id_to_index(ids[2], lengths)) == 7
    for bad in ["ds-train.tfrecord-00002-of-00003__2",  # offset past its shard
                "ds-train.tfrecord-00001-of-00004__0",  # another shard count
                "ds-train.tfrecord-00003-of-00003__0",  # shard past the last
                "ds-train.tfrecord__5"]:  # malformed
        with pytest.raises(tf.errors.InvalidArgumentError):
            data.tfds_id_to_index(tf.constant([bad]), lengths)


def test_file_order_read_gives_indices_in_order(data_dir):
    # Unshuffled files are read shard by shard: index == position proves the shard offsets.
    assert [i for i, _, _ in _examples(data_dir)] == list(range(NUM_TRAIN))
    assert [i for i, _, _ in _examples(data_dir, "test")] == list(range(NUM_TEST))


def test_index_is_stable_across_file_shuffles_and_epochs(data_dir):
    reference = {i: (image, label) for i, image, label in _examples(data_dir)}
    orders = []
    for seed in (1, 2, 3, 4):
        ds = data.read_examples(NAME, "train", data_dir, shuffle_files=True, seed=seed)
        for _ in range(2):  # two epochs of the same dataset
            epoch = [(int(e["index"]), e["image"].tobytes(), int(e["label"]))
                     for e in ds.as_numpy_iterator()]
            assert sorted(i for i, _, _ in epoch) == list(range(NUM_TRAIN))  # each once
            assert {i: (image, label) for i, image, label in epoch} == reference
            orders.append([i for i, _, _ in epoch])
    # The seeds did shuffle the files (3 shards have only 6 orders: two seeds may agree).
    assert len({tuple(order) for order in orders}) > 1


def test_sliced_split_keeps_full_split_indices(data_dir):
    full = {i: image for i, image, _ in _examples(data_dir)}
    sliced = _examples(data_dir, "train[35:100]")  # crosses shard boundaries
    assert [i for i, _, _ in sliced] == list(range(35, 100))
    assert all(full[i] == image for i, image, _ in sliced)


def test_hosts_read_disjoint_shares_with_stable_indices(data_dir):
    full = {i: image for i, image, _ in _examples(data_dir)}
    seen = []
    for host in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=host, num_replicas_in_sync=2)
        share = _examples(data_dir, shuffle_files=True, seed=0, input_context=context)
        assert len(share) == NUM_TRAIN // 2
        assert all(full[i] == image for i, image, _ in share)
        seen += [i for i, _, _ in share]
    assert sorted(seen) == list(range(NUM_TRAIN))


# --------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("cache", [False, True])
def test_pretrain_epoch_batches(data_dir, cache):
    labels = {i: label for i, _, label in _examples(data_dir)}
    ds = data.pretrain_dataset(NAME, "train", 24, _augmenter(), data_dir=data_dir,
                               shuffle_buffer=NUM_TRAIN, num_epochs=1, cache=cache, seed=5)
    spec = ds.element_spec
    assert spec["view1"].shape == spec["view2"].shape == (24, 28, 28, 1)
    assert spec["view1"].dtype == tf.float32 and spec["index"].dtype == tf.int32
    assert spec["label"].shape == (24,) and spec["label"].dtype == tf.int64
    indices = []
    for batch in ds.as_numpy_iterator():
        for key in ("view1", "view2"):
            assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
        assert not np.allclose(batch["view1"], batch["view2"])
        assert [labels[i] for i in batch["index"]] == list(batch["label"])
        indices += list(batch["index"])
    assert sorted(indices) == list(range(NUM_TRAIN))  # 120 / 24: every index exactly once
    assert indices != sorted(indices)  # shuffled


def test_pretrain_repeats_and_is_reproducible_with_a_seed(data_dir):
    def batches(seed):
        ds = data.pretrain_dataset(NAME, "train", 32, _augmenter(), data_dir=data_dir,
                                   seed=seed, deterministic=True)
        return list(ds.take(6).as_numpy_iterator())  # 6 batches > one epoch of 3

    first, again, other = batches(1), batches(1), batches(2)
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["index"], other[0]["index"])
    assert not np.allclose(first[0]["view1"], other[0]["view1"])


def test_distributed_pretrain_gives_per_replica_batches(data_dir, mirrored_strategy):
    strategy = mirrored_strategy
    ds = data.distributed_pretrain_dataset(
        strategy, NAME, "train", 16, _augmenter(), data_dir=data_dir, seed=0)
    batch = next(iter(ds))
    views = strategy.experimental_local_results(batch["view1"])
    indices = strategy.experimental_local_results(batch["index"])
    assert len(views) == 2
    assert all(v.shape == (8, 28, 28, 1) for v in views)
    assert len(set(np.concatenate([i.numpy() for i in indices]))) == 16


def test_eval_dataset_is_ordered_and_complete(data_dir):
    reference = _examples(data_dir, "test")
    ds = data.eval_dataset(NAME, "test", 25, 28, data_dir=data_dir)
    batches = list(ds.as_numpy_iterator())
    assert [len(b["label"]) for b in batches] == [25, 25, 25, 25, 20]
    images = np.concatenate([b["image"] for b in batches])
    assert images.dtype == np.float32
    indices = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(indices, np.arange(NUM_TEST))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]),
                                  [label for _, _, label in reference])
    raw = np.stack([np.frombuffer(image, np.uint8) for _, image, _ in reference])
    np.testing.assert_allclose(images.reshape(NUM_TEST, -1), raw / 255.0, atol=1e-6)
    dropped = data.eval_dataset(NAME, "test", 25, 32, data_dir=data_dir, drop_remainder=True)
    assert dropped.element_spec["image"].shape == (25, 32, 32, 1)
    assert sum(1 for _ in dropped) == 4


def test_finetune_dataset_yields_image_label_tuples(data_dir):
    ds = data.finetune_dataset(NAME, "train[:48]", 16, 28, data_dir=data_dir, seed=0)
    image_spec, label_spec = ds.element_spec
    assert image_spec.shape == (16, 28, 28, 1) and label_spec.shape == (16,)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 3  # one epoch of 48
    assert all(0.0 <= images.min() and images.max() <= 1.0 for images, _ in batches)
    # An extra batch augmentation (e.g. a Keras preprocessing layer) runs after crop and flip.
    plain, inverted = (data.finetune_dataset(
        NAME, "train[:48]", 16, 28, data_dir=data_dir, seed=0, deterministic=True,
        extra_augment=extra) for extra in (None, lambda images: 1.0 - images))
    pairs = list(zip(plain.as_numpy_iterator(), inverted.as_numpy_iterator()))
    assert len(pairs) == 3
    for (images, labels), (got, got_labels) in pairs:
        np.testing.assert_allclose(got, 1.0 - images, atol=1e-6)
        np.testing.assert_array_equal(got_labels, labels)


def test_variable_size_images_are_cropped_per_example(data_dir):
    name = "tiny_variable_size_images"
    augmenter = augment.SimCLRAugment(image_size=16, channels=3)
    ds = data.pretrain_dataset(name, "train", 8, augmenter, data_dir=data_dir, num_epochs=1, seed=0)
    assert ds.element_spec["view1"].shape == (8, 16, 16, 3)
    indices = np.concatenate([b["index"] for b in ds.as_numpy_iterator()])
    assert sorted(indices) == list(range(24))
    ev = list(data.eval_dataset(name, "train", 10, 16, data_dir=data_dir).as_numpy_iterator())
    assert [b["image"].shape for b in ev] == [(10, 16, 16, 3), (10, 16, 16, 3), (4, 16, 16, 3)]
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in ev]), np.arange(24))
