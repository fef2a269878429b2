"""Fashion-MNIST mosaics: an offline image-text dataset whose negatives are real negatives.

The offline default for image-text runs (`fashion_mnist_debian` captioned from its class
names) has 80 distinct captions, so in a batch of 64 about six pairs share a class and most
"negatives" are false. A mosaic is a 2x2 grid of Fashion-MNIST items (56x56x1), captioned
by its items in reading order with their positions:

    "bag top left, sneaker top right, coat bottom left, ankle boot bottom right"

10^4 captions are possible (at most 16 words: within the text encoder's default 16 tokens).
Built offline from Debian's `dataset-fashion-mnist` files (`fashion_mnist.SPLIT_FILES`),
deterministically from `SEED`; a mosaic's index is its TFDS index, as for any dataset:

    train   60,000 mosaics of training items, each of the four drawn uniformly (with
            replacement) from the 60,000: captions repeat, as they may in caption data
    test    2,000 mosaics of test items with 2,000 distinct captions (class quadruples
            drawn without replacement, then an item of each class), so retrieval over
            them (`evaluation.zero_shot.image_text_recall`) is recall in its usual sense

Features: "image" uint8 [56, 56, 1], "caption" text, "items" (the four items' classes in
reading order, `fashion_mnist.CLASS_NAMES`' ClassLabel) and "item_ids" (their indices in the
Fashion-MNIST split). No "label": a mosaic has no one class.

Zero-shot on single items instead: a Fashion-MNIST test image shown four times (`tile`, a
mosaic of one class), classified by the captions of such mosaics (`item_prompts`: "bag top
left, bag top right, bag bottom left, bag bottom right"). Preparing the mosaics prepares
`fashion_mnist_debian` beside them for it.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_sogclr.data import fashion_mnist

NAME = "fashion_mnist_mosaics"
SEED = 20221202
GRID = 2
ITEM_SIZE = 28
IMAGE_SIZE = GRID * ITEM_SIZE
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SPLIT_MOSAICS = {"train": 60_000, "test": 2_000}


def caption(item_classes) -> str:
    """The caption of a mosaic whose items, in reading order, have classes `item_classes` [4]."""
    return ", ".join(f"{fashion_mnist.CAPTION_NAMES[int(c)]} {position}"
                     for c, position in zip(item_classes, POSITIONS))


def compose(items: np.ndarray) -> np.ndarray:
    """A mosaic uint8 [56, 56, 1] of four items uint8 [4, 28, 28] in reading order."""
    rows = [np.concatenate(list(items[r * GRID:(r + 1) * GRID]), axis=1) for r in range(GRID)]
    return np.concatenate(rows, axis=0)[:, :, None]


def tile(images):
    """Single items `[b, 28, 28, C]` -> mosaics `[b, 56, 56, C]` of four copies each."""
    return tf.tile(images, [1, GRID, GRID, 1])


def item_prompts():
    """Zero-shot prompts of tiled single items: per class, the caption of a mosaic of four
    of it ([C][1] str, in label order)."""
    return [[caption([c] * GRID * GRID)] for c in range(len(fashion_mnist.CAPTION_NAMES))]


def mosaic_items(split: str, labels: np.ndarray) -> np.ndarray:
    """The item indices int64 [SPLIT_MOSAICS[split], 4] of every mosaic of `split`, a fixed
    function of SEED and the split's labels [n] (see the module docstring)."""
    count = SPLIT_MOSAICS[split]
    rng = np.random.default_rng([SEED, list(SPLIT_MOSAICS).index(split)])
    if split == "train":
        return rng.integers(0, len(labels), size=(count, GRID * GRID))
    num_classes = len(fashion_mnist.CAPTION_NAMES)
    quadruples = rng.choice(num_classes ** 4, size=count, replace=False)
    classes = (quadruples[:, None] // num_classes ** np.arange(3, -1, -1)) % num_classes
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    return np.stack([rng.choice(by_class[c]) for c in classes.ravel()]).reshape(classes.shape)


class FashionMnistMosaics(tfds.core.GeneratorBasedBuilder):
    """2x2 Fashion-MNIST mosaics with position captions (train 60,000; test 2,000 with
    distinct captions), from local idx files."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # Nothing is downloaded: no checksums file to locate.
    RELEASE_NOTES = {"1.0.0": "Mosaics of Debian's dataset-fashion-mnist idx files."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = fashion_mnist.FashionMnistDebian.MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="2x2 mosaics of Fashion-MNIST items captioned by item and position.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
                "caption": tfds.features.Text(),
                "items": tfds.features.Sequence(
                    tfds.features.ClassLabel(names=list(fashion_mnist.CLASS_NAMES)),
                    length=GRID * GRID),
                "item_ids": tfds.features.Sequence(np.int64, length=GRID * GRID),
            }),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        source_dir = os.fspath(dl_manager.manual_dir)
        fashion_mnist.check_source_dir(source_dir)
        return {split: self._generate_examples(split, source_dir) for split in SPLIT_MOSAICS}

    def _generate_examples(self, split, source_dir):
        images_file, labels_file = fashion_mnist.SPLIT_FILES[split]
        images = fashion_mnist.read_idx(os.path.join(source_dir, images_file))
        labels = fashion_mnist.read_idx(os.path.join(source_dir, labels_file))
        for i, ids in enumerate(mosaic_items(split, labels)):
            yield i, {"image": compose(images[ids]), "caption": caption(labels[ids]),
                      "items": labels[ids].astype(np.int64), "item_ids": ids}


def prepare_fashion_mnist_mosaics(
    data_dir: str,
    source_dir: str = fashion_mnist.DEFAULT_SOURCE_DIR,
    max_examples_per_split: int | None = None,
    num_shards: int | None = None,
) -> str:
    """Writes the mosaics, and Fashion-MNIST for their single-item zero-shot, as TFDS files
    under `data_dir` once; returns the mosaics' builder name.

    Idempotent; `max_examples_per_split` keeps each split's first n examples (for tests).
    """
    fashion_mnist.prepare_fashion_mnist(data_dir, source_dir, max_examples_per_split,
                                        num_shards)
    return fashion_mnist.prepare_builder(FashionMnistMosaics, data_dir, source_dir,
                                         max_examples_per_split, num_shards)
