"""One global learnable temperature, in log space, clamped to a range (CLIP, FastCLIP).

`LearnableTemperature` keeps `log tau` as one float32 Keras weight, so checkpoints and
strategies see it; the optimiser steps `log tau` (as CLIP and FastCLIP step their logit scale
`log(1 / tau)`) and then projects it back into `[log tau_min, log tau_max]` through the
weight's constraint (`LogClamp`), as CLIP clamps its logit scale after every step. The
default range [0.01, 1] is CLIP's and FastCLIP's. Its own learning rate comes from the
optimiser's per-variable multipliers (`training.optim`, pattern `"temperature"`).

For the CLIP loss the temperature's gradient flows through the logits. SogCLR's surrogate
weights carry none, so `objective_term` turns the loss's estimate of d objective / d tau
into a loss term whose gradient is that estimate (docs/algorithm.md, "Image-text"), after
one of two objectives (`TEMPERATURE_OBJECTIVES`):

* "isogclr": iSogCLR's (Qiu et al., ICML 2023) with one tau for both directions,
  `tau (log g^I + rho) + tau (log g^T + rho)`: the directions summed.
* "fastclip_v3": FastCLIP-v3's RGCL-g (Wei et al., 2024), `tau ((log g^I + log g^T) / 2 +
  rho)`: the directions averaged. Both settle where the mean KL divergence of the weights
  from uniform equals rho; FastCLIP-v3's gradient is half iSogCLR's, which an Adam-family
  optimiser on tau does not feel (it is scale-free) and momentum or LARS does.
"""

import math

import keras
import tensorflow as tf

from tf_sogclr import checks
from tf_sogclr.config import TEMPERATURE_OBJECTIVES, TEMPERATURE_RANGE


@keras.saving.register_keras_serializable(package="tf_sogclr")
class LogClamp(keras.constraints.Constraint):
    """Clips a weight holding `log tau` into `[log low, log high]` (applied by the Keras
    optimiser after every update)."""

    def __init__(self, low, high):
        if not 0.0 < low < high:
            checks.fail("temperature_range", "(low, high) with 0 < low < high", (low, high))
        self.low, self.high = float(low), float(high)

    def __call__(self, w):
        return tf.clip_by_value(w, math.log(self.low), math.log(self.high))

    def get_config(self):
        return {"low": self.low, "high": self.high}


@keras.saving.register_keras_serializable(package="tf_sogclr")
class LearnableTemperature(keras.layers.Layer):
    """One global temperature tau, learnt in log space within `temperature_range`.

    Args:
      initial_temperature: tau's starting value, strictly inside `temperature_range`.
      temperature_range: `(tau_min, tau_max)`, CLIP's `(0.01, 1)` by default.
      objective: "isogclr" or "fastclip_v3" (module docstring): how `objective_term` turns
        SogCLR's estimate into tau's gradient.
      rho: the objective's rho (>= 0): the KL divergence from uniform at which tau settles.

    `value()` is tau, a float32 scalar whose gradient flows to `log_temperature`; calling
    the layer on similarities `[...]` gives the logits `similarities / tau`.
    """

    def __init__(self, initial_temperature, temperature_range=TEMPERATURE_RANGE,
                 objective="isogclr", rho=2.0, **kwargs):
        kwargs.setdefault("name", "temperature")
        super().__init__(**kwargs)
        low, high = (float(t) for t in temperature_range)
        clamp = LogClamp(low, high)  # checks the range first
        checks.in_range("initial_temperature", initial_temperature, low, high,
                        low_open=True, high_open=True)
        checks.choice("objective", objective, TEMPERATURE_OBJECTIVES)
        checks.in_range("rho", rho, 0.0, float("inf"), high_open=True)
        self.initial_temperature = float(initial_temperature)
        self.temperature_range = (low, high)
        self.objective = objective
        self.rho = float(rho)
        self.log_temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(initial_temperature)),
            constraint=clamp, trainable=True, autocast=False,
            name="log_temperature")
        self.built = True

    def value(self):
        """tau: a float32 scalar."""
        return tf.exp(tf.convert_to_tensor(self.log_temperature))

    def call(self, similarities):
        return tf.cast(similarities, tf.float32) / self.value()

    def objective_term(self, temperature, estimate):
        """A scalar whose gradient to tau is the chosen objective's d / dtau.

        temperature: `value()` (a float32 scalar, differentiable).
        estimate: the two-way loss's `temperature_gradient` metric, the batch mean of
          `log u^I + log u^T - sum_j (p^I s^I + p^T s^T) / (tau (B - 1))` (without rho).
        """
        if self.objective == "isogclr":
            gradient = estimate + 2.0 * self.rho
        else:
            gradient = 0.5 * estimate + self.rho
        return temperature * tf.stop_gradient(gradient)

    def get_config(self):
        return {**super().get_config(), "initial_temperature": self.initial_temperature,
                "temperature_range": list(self.temperature_range),
                "objective": self.objective, "rho": self.rho}
