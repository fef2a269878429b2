"""Optimiser, learning rate, weight decay, lengths of training and batch sizes (defaults:
`config.DEFAULT_JOB.optimizer` and `.run`)."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import DEFAULT_JOB

flags.DEFINE_enum("optimizer", DEFAULT_JOB.optimizer.optimizer, config.OPTIMIZERS, "Optimiser.")
flags.DEFINE_float("learning_rate", DEFAULT_JOB.optimizer.learning_rate,
                   "Base learning rate, scaled by --learning_rate_scaling.")
flags.DEFINE_enum("learning_rate_scaling", DEFAULT_JOB.optimizer.learning_rate_scaling,
                  config.LEARNING_RATE_SCALINGS,
                  "linear: lr * batch / 256; sqrt: lr * sqrt(batch).")
flags.DEFINE_float("momentum", DEFAULT_JOB.optimizer.momentum, "Momentum in [0, 1).")
flags.DEFINE_float("weight_decay", DEFAULT_JOB.optimizer.weight_decay,
                   "Weight decay: inside LARS (the linear head's through the loss, as "
                   "SimCLR) and AdamW (decoupled, the head's too); through the loss (L2) for "
                   "momentum and adam.")
flags.DEFINE_float("warmup_epochs", DEFAULT_JOB.optimizer.warmup_epochs,
                   "Linear learning-rate warm-up, in epochs.")
flags.DEFINE_integer("train_epochs", DEFAULT_JOB.run.train_epochs,
                     "Training epochs (used when --train_steps is 0).")
flags.DEFINE_integer("train_steps", DEFAULT_JOB.run.train_steps,
                     "Training steps; 0 = --train_epochs epochs.")
flags.DEFINE_integer("train_batch_size", DEFAULT_JOB.run.train_batch_size,
                     "Global training batch size (all replicas).")
flags.DEFINE_integer("eval_batch_size", DEFAULT_JOB.run.eval_batch_size, "Global evaluation batch size.")
flags.DEFINE_integer("eval_steps", 0, "Evaluation batches; 0 = the whole --eval_split.")
