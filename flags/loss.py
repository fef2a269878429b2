"""The contrastive loss: SogCLR's global loss or SimCLR's NT-Xent (defaults:
`config.DEFAULT_JOB.loss`)."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import DEFAULT_JOB

flags.DEFINE_enum("loss", DEFAULT_JOB.loss.loss, config.LOSSES,
                  "sogclr: global contrastive loss with a per-example u-table; simclr: NT-Xent.")
flags.DEFINE_float("temperature", DEFAULT_JOB.loss.temperature,
                   "Temperature tau of the contrastive loss (> 0).")
flags.DEFINE_float("gamma", DEFAULT_JOB.loss.gamma,
                   "SogCLR moving-average weight in (0, 1]; with --gamma_schedule=cosine, the "
                   "value reached after --gamma_decay_epochs.")
flags.DEFINE_enum("gamma_schedule", DEFAULT_JOB.loss.gamma_schedule, config.GAMMA_SCHEDULES,
                  "constant: --gamma every epoch; cosine: from 1.0 down to --gamma over "
                  "--gamma_decay_epochs (LibAUC).")
flags.DEFINE_integer("gamma_decay_epochs", DEFAULT_JOB.loss.gamma_decay_epochs,
                     "Epochs of the cosine gamma schedule (only with --gamma_schedule=cosine).")
flags.DEFINE_bool("hidden_norm", DEFAULT_JOB.loss.hidden_norm,
                  "L2-normalise projections before the loss.")
flags.DEFINE_enum("gradient_scale", DEFAULT_JOB.loss.gradient_scale, config.GRADIENT_SCALES,
                  "Scale of SogCLR's surrogate loss (--loss=sogclr). infonce: divided by tau, so "
                  "its gradient is that of the InfoNCE control (--loss=simclr) at the same tau "
                  "and switching --loss keeps the step; libauc: the authors' value (LibAUC), "
                  "whose gradient is tau times smaller.")
flags.DEFINE_bool("individual_temperatures", DEFAULT_JOB.loss.individual_temperatures,
                  "--loss=sogclr: iSogCLR's individual temperatures, one learned tau per "
                  "training example (image-text: one per pair and direction), starting at "
                  "--temperature, kept in the checkpoint beside the u-table.")
flags.DEFINE_float("temperature_min", DEFAULT_JOB.loss.temperature_min,
                   "Learned temperatures (individual, or bimodal --learnable_temperature): "
                   "the clamp's lower end tau_min, in (0, 1).")
flags.DEFINE_float("temperature_max", DEFAULT_JOB.loss.temperature_max,
                   "Learned temperatures (individual, or bimodal --learnable_temperature): "
                   "the clamp's upper end tau_max (> tau_min).")
flags.DEFINE_float("temperature_learning_rate", DEFAULT_JOB.loss.temperature_learning_rate,
                   "Individual temperatures: eta, the step on each tau (LibAUC's 0.01).")
flags.DEFINE_float("temperature_momentum", DEFAULT_JOB.loss.temperature_momentum,
                   "Individual temperatures: weight of the old moving average of tau's "
                   "gradient, in [0, 1) (LibAUC's beta = 1 - momentum = 0.9).")
flags.DEFINE_float("temperature_gradient_clip", DEFAULT_JOB.loss.temperature_gradient_clip,
                   "Individual temperatures: tau's gradient estimate is clipped to [-c, c] "
                   "(iSogCLR's 5).")
flags.DEFINE_float("temperature_rho", DEFAULT_JOB.loss.temperature_rho,
                   "iSogCLR's rho for learned temperatures (--individual_temperatures, or "
                   "bimodal SogCLR with --learnable_temperature): the KL divergence of the "
                   "negatives' weights from uniform that tau settles at (below log of the "
                   "negatives' count). Unset: "
                   f"{config.TEMPERATURE_RHO['unimodal']} unimodal (LibAUC's), "
                   f"{config.TEMPERATURE_RHO['bimodal']} image-text.")
