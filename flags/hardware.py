"""Accelerators, distribution, compilation and precision (defaults: `config.RunConfig`)."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import RunConfig

flags.DEFINE_bool("use_tpu", False, "Run on Cloud TPU (TPUStrategy).")
flags.DEFINE_string("tpu_name", None, "TPU name or grpc address (with --use_tpu).")
flags.DEFINE_string("tpu_zone", None, "GCE zone of the TPU.")
flags.DEFINE_string("gcp_project", None, "GCP project of the TPU.")
flags.DEFINE_integer("steps_per_execution", RunConfig.steps_per_execution,
                     "Train steps per host round trip (SimCLR's train_multiple_steps).")
flags.DEFINE_bool("jit_compile", RunConfig.jit_compile,
                  "Compile the train step with XLA (one device; TPUs always compile).")
flags.DEFINE_enum("mixed_precision", RunConfig.mixed_precision, config.MIXED_PRECISION,
                  "Mixed precision policy (mixed_bfloat16 on TPU). The loss stays float32.")
flags.DEFINE_integer("seed", RunConfig.seed, "Random seed (weights, augmentation, shuffling).")
