"""Optimiser, learning rate, weight decay, lengths of training and batch sizes."""

from absl import flags

flags.DEFINE_enum("optimizer", "lars", ("lars", "momentum", "adam"), "Optimiser.")
flags.DEFINE_float("learning_rate", 0.3, "Base learning rate, scaled by --learning_rate_scaling.")
flags.DEFINE_enum("learning_rate_scaling", "linear", ("linear", "sqrt"),
                  "linear: lr * batch / 256; sqrt: lr * sqrt(batch).")
flags.DEFINE_float("momentum", 0.9, "Momentum in [0, 1).")
flags.DEFINE_float("weight_decay", 1e-6, "L2 weight decay (as SimCLR: inside LARS).")
flags.DEFINE_float("warmup_epochs", 0.5, "Linear learning-rate warm-up, in epochs.")
flags.DEFINE_integer("train_epochs", 2, "Training epochs (used when --train_steps is 0).")
flags.DEFINE_integer("train_steps", 0, "Training steps; 0 = --train_epochs epochs.")
flags.DEFINE_integer("train_batch_size", 256, "Global training batch size (all replicas).")
flags.DEFINE_integer("eval_batch_size", 512, "Global evaluation batch size.")
flags.DEFINE_integer("eval_steps", 0, "Evaluation batches; 0 = the whole --eval_split.")
