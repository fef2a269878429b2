"""The datasets this package builds offline from Debian's Fashion-MNIST files, by TFDS name.

    fashion_mnist_debian    Fashion-MNIST itself (`fashion_mnist`)
    fashion_mnist_mosaics   2x2 mosaics captioned by item and position (`fashion_mnist_mosaics`)

Importing this module registers both builders with TFDS (`tfds.builder(name)` finds them).
"""

from __future__ import annotations

from tf_sogclr.data import fashion_mnist, fashion_mnist_mosaics

PREPARE = {
    fashion_mnist.NAME: fashion_mnist.prepare_fashion_mnist,
    fashion_mnist_mosaics.NAME: fashion_mnist_mosaics.prepare_fashion_mnist_mosaics,
}

# Datasets whose captions say "left" and "right": a mirrored view contradicts its caption.
SIDED_CAPTIONS = (fashion_mnist_mosaics.NAME,)


def base_name(dataset: str) -> str:
    """"fashion_mnist_debian" of "fashion_mnist_debian/config:1.0.0" and the like."""
    return dataset.split(":")[0].split("/")[0]


def is_offline(dataset: str) -> bool:
    """True when `dataset` is one of the builders above."""
    return base_name(dataset) in PREPARE


def prepare(dataset: str, data_dir: str | None = None) -> bool:
    """Builds `dataset` under `data_dir` (TFDS's default when None) once if it is one of the
    builders above; returns whether it is. Raises FileNotFoundError, naming the Debian
    package, when its files are missing."""
    if not is_offline(dataset):
        return False
    PREPARE[base_name(dataset)](data_dir)
    return True


def captions_name_sides(dataset: str) -> bool:
    """True when `dataset`'s captions name left and right (no random flips for it)."""
    return base_name(dataset) in SIDED_CAPTIONS
