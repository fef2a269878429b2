"""Accelerators, distribution, compilation and precision (defaults: `config.DEFAULT_JOB.run`; the
backward pass without collectives: `config.DEFAULT_JOB.loss`)."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import DEFAULT_JOB

flags.DEFINE_bool("use_tpu", False, "Run on Cloud TPU (TPUStrategy).")
flags.DEFINE_string("tpu_name", None, "TPU name or grpc address (with --use_tpu).")
flags.DEFINE_string("tpu_zone", None, "GCE zone of the TPU.")
flags.DEFINE_string("gcp_project", None, "GCP project of the TPU.")
flags.DEFINE_integer("steps_per_execution", DEFAULT_JOB.run.steps_per_execution,
                     "Train steps per host round trip (SimCLR's train_multiple_steps).")
flags.DEFINE_bool("jit_compile", DEFAULT_JOB.run.jit_compile,
                  "Compile the train step with XLA (one device; TPUs always compile).")
flags.DEFINE_enum("mixed_precision", DEFAULT_JOB.run.mixed_precision, config.MIXED_PRECISION,
                  "Mixed precision policy (mixed_bfloat16 on TPU). The loss stays float32.")
flags.DEFINE_integer("seed", DEFAULT_JOB.run.seed, "Random seed (weights, augmentation, shuffling).")
flags.DEFINE_bool("collective_free_backward", DEFAULT_JOB.loss.collective_free_backward,
                  "Several replicas: gather projections without gradient and give each "
                  "replica's rows their gradient from every anchor locally (FastCLIP's split), "
                  "so the backward pass runs no collective. Same gradients, any loss.")
