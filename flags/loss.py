"""The contrastive loss: SogCLR's global loss or SimCLR's NT-Xent (defaults:
`config.LossConfig`)."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import LossConfig

flags.DEFINE_enum("loss", LossConfig.loss, config.LOSSES,
                  "sogclr: global contrastive loss with a per-example u-table; simclr: NT-Xent.")
flags.DEFINE_float("temperature", LossConfig.temperature,
                   "Temperature tau of the contrastive loss (> 0).")
flags.DEFINE_float("gamma", LossConfig.gamma,
                   "SogCLR moving-average weight in (0, 1]; with --gamma_schedule=cosine, the "
                   "value reached after --gamma_decay_epochs.")
flags.DEFINE_enum("gamma_schedule", LossConfig.gamma_schedule, config.GAMMA_SCHEDULES,
                  "constant: --gamma every epoch; cosine: from 1.0 down to --gamma over "
                  "--gamma_decay_epochs (LibAUC).")
flags.DEFINE_integer("gamma_decay_epochs", LossConfig.gamma_decay_epochs,
                     "Epochs of the cosine gamma schedule (only with --gamma_schedule=cosine).")
flags.DEFINE_bool("hidden_norm", LossConfig.hidden_norm,
                  "L2-normalise projections before the loss.")
flags.DEFINE_enum("gradient_scale", LossConfig.gradient_scale, config.GRADIENT_SCALES,
                  "Scale of SogCLR's surrogate loss (--loss=sogclr). infonce: divided by tau, so "
                  "its gradient is that of the InfoNCE control (--loss=simclr) at the same tau "
                  "and switching --loss keeps the step; libauc: the authors' value (LibAUC), "
                  "whose gradient is tau times smaller.")
