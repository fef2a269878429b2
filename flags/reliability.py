"""What a run does when something goes wrong (see the README's "Failures and what happens")."""

from absl import flags

flags.DEFINE_enum("nonfinite_policy", "stop", ("stop", "skip"),
                  "After a step with a non-finite loss term, projection or gradient (its update "
                  "is never applied): stop: raise, keeping the last good checkpoint; skip: log "
                  "it, count it in the bad_steps / nonfinite_steps metrics and go on.")
