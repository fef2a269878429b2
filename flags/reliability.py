"""What a run does when something goes wrong (see the README's "Failures and what happens")."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import DEFAULT_JOB

flags.DEFINE_enum("nonfinite_policy", DEFAULT_JOB.run.nonfinite_policy, config.NONFINITE_POLICIES,
                  "After a step with a non-finite loss term, projection or gradient (its update "
                  "is never applied): stop: raise, keeping the last good checkpoint; skip: log "
                  "it, count it in the bad_steps / nonfinite_steps metrics and go on.")
