"""Input: TFDS splits with stable example indices, and the pipelines that batch them.

    tfds_source     DatasetInfo, describe, tfds_id_to_index, the checked image decoder
    pipelines       pretraining (two views), evaluation and fine-tuning batches
    augment         SimCLR's random resized crop and flip, the training and eval views
    color           SimCLR v2 colour jitter, grayscale and blur, one draw per image
    image_ops       batch primitives of both: stateless draws, dtype, channel-major layout
    captions        caption templates, caption extraction and image-caption pair batches
    fashion_mnist   the TFDS builder of Debian's Fashion-MNIST files
    fashion_mnist_mosaics   2x2 mosaics of them captioned by item and position (image-text)
    offline         the offline builders by name: `offline.prepare(dataset, data_dir)`

The names of `tfds_source` and `pipelines` are available from here (`data.describe`).
"""

from tf_sogclr.data.pipelines import (augmentation_seeds, batch_seeds,
                                      distributed_eval_dataset, distributed_pretrain_dataset,
                                      eval_dataset, finetune_dataset, per_replica_batch_size,
                                      pipeline_options, pretrain_dataset, shuffled_and_repeated)
from tf_sogclr.data.tfds_source import (AUTOTUNE, IMAGE_KEY, LABEL_KEY, SPLIT_PATTERN,
                                        DatasetInfo, check_channels, check_labels,
                                        check_not_empty, decode_checked,
                                        describe, host_split, prepared_builder, read_examples,
                                        read_split, tfds_id_to_index)

__all__ = [
    "augmentation_seeds", "batch_seeds", "distributed_eval_dataset",
    "distributed_pretrain_dataset", "eval_dataset", "finetune_dataset", "per_replica_batch_size",
    "pipeline_options", "pretrain_dataset", "shuffled_and_repeated", "AUTOTUNE", "IMAGE_KEY",
    "LABEL_KEY", "SPLIT_PATTERN", "DatasetInfo", "check_channels", "check_labels",
    "check_not_empty", "decode_checked", "describe", "host_split", "prepared_builder",
    "read_examples", "read_split", "tfds_id_to_index",
]
