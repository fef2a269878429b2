"""The contrastive loss: SogCLR's global loss or SimCLR's NT-Xent, and their settings."""

from absl import flags

flags.DEFINE_enum("loss", "sogclr", ("sogclr", "simclr"),
                  "sogclr: global contrastive loss with a per-example u-table; simclr: NT-Xent.")
flags.DEFINE_float("temperature", 0.1, "Temperature tau of the contrastive loss (> 0).")
flags.DEFINE_float("gamma", 0.9,
                   "SogCLR moving-average weight in (0, 1]; with --gamma_schedule=cosine, the "
                   "value reached after --gamma_decay_epochs.")
flags.DEFINE_enum("gamma_schedule", "constant", ("constant", "cosine"),
                  "constant: --gamma every epoch; cosine: from 1.0 down to --gamma over "
                  "--gamma_decay_epochs (LibAUC).")
flags.DEFINE_integer("gamma_decay_epochs", None,
                     "Epochs of the cosine gamma schedule (only with --gamma_schedule=cosine).")
flags.DEFINE_bool("hidden_norm", True, "L2-normalise projections before the loss.")
