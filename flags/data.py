"""Which TFDS dataset and split, image size and augmentation (defaults: `config.DEFAULT_JOB.data`;
the fine-tuning crop: `config.FinetuneConfig`)."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import DEFAULT_JOB, FinetuneConfig, SMALL_IMAGE_SIZE

flags.DEFINE_string("dataset", DEFAULT_JOB.data.dataset,
                    "TFDS dataset name. fashion_mnist_debian is built from Debian's "
                    "dataset-fashion-mnist files on first use.")
flags.DEFINE_string("data_dir", DEFAULT_JOB.data.data_dir,
                    "TFDS data directory (local or gs://); default TFDS's.")
flags.DEFINE_string("train_split", DEFAULT_JOB.data.train_split,
                    "Split to train on (TFDS slicing allowed).")
flags.DEFINE_string("eval_split", DEFAULT_JOB.data.eval_split, "Split to evaluate on.")
flags.DEFINE_string("probe_split", DEFAULT_JOB.data.probe_split,
                    "Frozen-feature evaluation: the linear probe's training set and the k-NN "
                    "memory bank (un-augmented), for the encoder and the raw-pixel reference. "
                    f"Default: the first {config.PROBE_EXAMPLES} examples of --train_split's "
                    "split (all of them if fewer).")
flags.DEFINE_integer("image_size", DEFAULT_JOB.data.image_size,
                     "Input images are cropped / resized to this size.")
flags.DEFINE_bool("cache_dataset", DEFAULT_JOB.data.cache_dataset,
                  "Cache decoded images in memory (small datasets).")
flags.DEFINE_float("color_jitter_strength", DEFAULT_JOB.data.color_jitter_strength,
                   "SimCLR colour jitter strength in [0, 1] (0.5 CIFAR, 1.0 ImageNet).")
flags.DEFINE_bool("use_blur", DEFAULT_JOB.data.use_blur,
                  "Gaussian blur augmentation (ImageNet-size images).")
flags.DEFINE_float("crop_area_min", DEFAULT_JOB.data.crop_area_min,
                   "Smallest area fraction of pretraining's random resized crops.")
flags.DEFINE_bool("random_flip", DEFAULT_JOB.data.random_flip,
                  "Random horizontal flips in pretraining's views. Must be false for captions "
                  "that name left and right (fashion_mnist_mosaics).")
flags.DEFINE_float("finetune_crop_area_min", FinetuneConfig.finetune_crop_area_min,
                   "Smallest area fraction of fine-tuning's random resized crops; unset: 1.0 "
                   f"(no crop, flips only) for images of {SMALL_IMAGE_SIZE} px or less, "
                   f"{DEFAULT_JOB.data.crop_area_min} (SimCLR's) above.")
