"""Encoder and heads (defaults: `config.DEFAULT_JOB.model`)."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import DEFAULT_JOB

flags.DEFINE_integer("resnet_depth", DEFAULT_JOB.model.resnet_depth,
                     f"ResNet depth: one of {', '.join(map(str, config.RESNET_DEPTHS))}.")
flags.DEFINE_float("width_multiplier", DEFAULT_JOB.model.width_multiplier,
                   "ResNet width multiplier; fractions allowed (0.125: 8 channels in stage 1).")
flags.DEFINE_bool("small_image_stem", DEFAULT_JOB.model.small_image_stem,
                  "3x3 stride-1 stem without max-pool, for 28-32 px images (SimCLR CIFAR).")
flags.DEFINE_enum("proj_head_mode", DEFAULT_JOB.model.proj_head_mode, config.PROJECTION_HEAD_MODES,
                  "Projection head type.")
flags.DEFINE_integer("proj_out_dim", DEFAULT_JOB.model.proj_out_dim,
                     "Output size of the projection head.")
flags.DEFINE_integer("num_proj_layers", DEFAULT_JOB.model.num_proj_layers,
                     "Layers of the nonlinear projection head.")
flags.DEFINE_integer("ft_proj_selector", DEFAULT_JOB.model.ft_proj_selector,
                     "Fine-tuning input: 0 = encoder features, j = projection hidden layer j.")
flags.DEFINE_bool("global_bn", DEFAULT_JOB.model.global_bn,
                  "Batch norm statistics over the global batch (all replicas).")
flags.DEFINE_float("batch_norm_decay", DEFAULT_JOB.model.batch_norm_decay,
                   "Batch norm moving-average momentum in [0, 1).")
