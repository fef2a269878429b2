"""Encoder and heads."""

from absl import flags

flags.DEFINE_integer("resnet_depth", 18, "ResNet depth: 18, 34, 50, 101 or 152.")
flags.DEFINE_float("width_multiplier", 0.125,
                   "ResNet width multiplier; fractions allowed (0.125: 8 channels in stage 1).")
flags.DEFINE_bool("small_image_stem", True,
                  "3x3 stride-1 stem without max-pool, for 28-32 px images (SimCLR CIFAR).")
flags.DEFINE_enum("proj_head_mode", "nonlinear", ("none", "linear", "nonlinear"),
                  "Projection head type.")
flags.DEFINE_integer("proj_out_dim", 128, "Output size of the projection head.")
flags.DEFINE_integer("num_proj_layers", 2, "Layers of the nonlinear projection head.")
flags.DEFINE_integer("ft_proj_selector", 0,
                     "Fine-tuning input: 0 = encoder features, j = projection hidden layer j.")
flags.DEFINE_bool("global_bn", True,
                  "Batch norm statistics over the global batch (all replicas).")
flags.DEFINE_float("batch_norm_decay", 0.9, "Batch norm moving-average momentum in [0, 1).")
