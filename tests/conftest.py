"""Test set-up: split the CPU into two logical devices before TensorFlow initialises.

Two logical CPUs let tests run `tf.distribute.MirroredStrategy` with two replicas on a
machine without accelerators. Tests that need one device simply use no strategy
(everything then runs on /CPU:0).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 2

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
)

import pytest  # noqa: E402

_MIRRORED = []


@pytest.fixture
def mirrored_strategy():
    """One `MirroredStrategy` over the two logical CPUs, shared by the whole test session.

    Two MirroredStrategy objects in one process can hand out the same collective instance
    keys and then abort each other's all-gathers, so every test must use this one.
    """
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _MIRRORED[0]


SMALL_FASHION_MNIST_EXAMPLES = 128


@pytest.fixture(scope="session")
def small_fashion_mnist(tmp_path_factory):
    """data_dir holding a 128-example, 3-shard slice of both Fashion-MNIST splits, as TFDS."""
    from tf_sogclr.data import fashion_mnist

    data_dir = str(tmp_path_factory.mktemp("tfds_small_fashion_mnist"))
    fashion_mnist.prepare_fashion_mnist(
        data_dir, max_examples_per_split=SMALL_FASHION_MNIST_EXAMPLES, num_shards=3)
    return data_dir
