"""Fashion-MNIST as a TFDS dataset built offline from Debian's `dataset-fashion-mnist` files.

The builder is named `fashion_mnist_debian` so it does not clash with TFDS's own
`fashion_mnist` (which downloads). Once prepared under a `data_dir`, it is read like any
TFDS dataset: `tfds.builder("fashion_mnist_debian", data_dir=data_dir)`.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import tensorflow_datasets as tfds

NAME = "fashion_mnist_debian"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# The same classes as captions spell them.
CAPTION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                 "sneaker", "bag", "ankle boot")
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


def check_source_dir(source_dir: str) -> None:
    """Raises FileNotFoundError (naming the Debian package) if an idx file is missing."""
    missing = [
        name for files in SPLIT_FILES.values() for name in files
        if not os.path.isfile(os.path.join(source_dir, name))
    ]
    if missing:
        raise FileNotFoundError(
            f"source_dir={source_dir!r} lacks the Fashion-MNIST files {missing}: "
            f"install the Debian package {DEBIAN_PACKAGE} "
            f"(apt-get install {DEBIAN_PACKAGE}) or pass the directory holding them."
        )


def read_idx(path: str) -> np.ndarray:
    """Reads a gzipped idx file: images -> [n, 28, 28] uint8, labels -> [n] uint8."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == _IMAGES_MAGIC:
        rows, cols = struct.unpack(">II", data[8:16])
        array = np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
    elif magic == _LABELS_MAGIC:
        array = np.frombuffer(data, np.uint8, offset=8)
    else:
        raise ValueError(f"{path} is not an idx image or label file (magic number {magic})")
    if array.shape[0] != count:
        raise ValueError(f"{path} holds {array.shape[0]} records, its header says {count}")
    return array


class FashionMnistDebian(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (28x28x1 uint8, 10 classes; train 60000, test 10000) from local idx files."""

    VERSION = tfds.core.Version("1.0.0")
    # Nothing is downloaded, so there is no checksums file to locate. (Locating it needs the
    # optional `importlib_resources` package, absent from this environment.)
    code_path = None
    RELEASE_NOTES = {"1.0.0": "Converted from Debian's dataset-fashion-mnist idx files."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"apt-get install {DEBIAN_PACKAGE} (files in {DEFAULT_SOURCE_DIR}), or pass a "
        "directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz as manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Zalando's Fashion-MNIST article images, from Debian's idx files.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        source_dir = os.fspath(dl_manager.manual_dir)
        check_source_dir(source_dir)
        return {
            split: self._generate_examples(
                os.path.join(source_dir, images), os.path.join(source_dir, labels))
            for split, (images, labels) in SPLIT_FILES.items()
        }

    def _generate_examples(self, images_path, labels_path):
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} has {len(images)} images but {labels_path} "
                f"has {len(labels)} labels")
        for i in range(len(images)):
            yield i, {"image": images[i][:, :, None], "label": int(labels[i])}


def prepare_fashion_mnist(
    data_dir: str,
    source_dir: str = DEFAULT_SOURCE_DIR,
    max_examples_per_split: int | None = None,
    num_shards: int | None = None,
) -> str:
    """Writes Fashion-MNIST as TFDS files under `data_dir` once; returns the builder name.

    Idempotent: an already prepared dataset is left alone. `max_examples_per_split` keeps the
    first n examples of each split (for tests); `num_shards` forces the shard count per split.
    """
    return prepare_builder(FashionMnistDebian, data_dir, source_dir, max_examples_per_split,
                           num_shards)


def prepare_builder(builder_class, data_dir, source_dir, max_examples_per_split, num_shards):
    """Prepares `builder_class` (a builder of Debian's idx files in `source_dir`) under
    `data_dir` unless it is; returns its name. See `prepare_fashion_mnist`."""
    if max_examples_per_split is not None and max_examples_per_split < 1:
        raise ValueError(
            f"max_examples_per_split must be None or >= 1, got {max_examples_per_split}")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"num_shards must be None or >= 1, got {num_shards}")
    builder = builder_class(data_dir=data_dir)
    if builder.is_prepared():
        return builder.name
    check_source_dir(source_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=source_dir,
            max_examples_per_split=max_examples_per_split,
            num_shards=num_shards,
        )
    )
    return builder.name
