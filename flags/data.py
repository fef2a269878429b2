"""Which TFDS dataset and split, image size and augmentation."""

from absl import flags

flags.DEFINE_string("dataset", "fashion_mnist_debian",
                    "TFDS dataset name. fashion_mnist_debian is built from Debian's "
                    "dataset-fashion-mnist files on first use.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (local or gs://); default TFDS's.")
flags.DEFINE_string("train_split", "train", "Split to train on (TFDS slicing allowed).")
flags.DEFINE_string("eval_split", "test", "Split to evaluate on.")
flags.DEFINE_integer("image_size", 28, "Input images are cropped / resized to this size.")
flags.DEFINE_bool("cache_dataset", True, "Cache decoded images in memory (small datasets).")
flags.DEFINE_float("color_jitter_strength", 0.5,
                   "SimCLR colour jitter strength in [0, 1] (0.5 CIFAR, 1.0 ImageNet).")
flags.DEFINE_bool("use_blur", False, "Gaussian blur augmentation (ImageNet-size images).")
flags.DEFINE_float("crop_area_min", 0.08, "Smallest area fraction of random resized crops.")
