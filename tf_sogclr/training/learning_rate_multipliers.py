"""Per-variable learning-rate multipliers for Keras optimisers: PyTorch's parameter groups.

`learning_rate_multipliers` is {regex searched in a variable's path: factor}; a matching
variable takes factor times the optimiser's learning rate (FastCLIP gives the learnable
temperature its own learning rate this way). Keras optimisers have one learning rate for all
variables, hence this small mixin rather than a second optimiser, which the step guard, loss
scaling and checkpoints would each have to know about.
"""

import numbers
import re


def variable_path(variable):
    """A Keras variable's path ("model/dense/kernel"), else a tf.Variable's name."""
    path = getattr(variable, "path", None)
    return path if path is not None else variable.name


def check_multipliers(multipliers):
    """{regex: factor > 0} (None: {}), as a plain dict in a fixed order."""
    if multipliers is None:
        return {}
    def valid(pattern, factor):
        return (isinstance(pattern, str) and isinstance(factor, numbers.Real)
                and not isinstance(factor, bool) and factor > 0)

    if not isinstance(multipliers, dict) or not all(valid(*kv) for kv in multipliers.items()):
        raise ValueError("`learning_rate_multipliers` must be a dict {regex string: factor > 0} "
                         f"(e.g. {{'temperature': 0.25}}); got {multipliers!r}.")
    return {p: float(f) for p, f in multipliers.items()}


class PerVariableLearningRate:
    """Mixin for a Keras optimiser: `update_step` multiplies the learning rate of each variable
    whose path matches a `learning_rate_multipliers` regex by its factor (the first match; 1
    when none). Resolved once in `build` from the Keras paths: inside `update_step` (tf
    backend) the variable is a bare, possibly per-replica tf.Variable without a path."""

    def __init__(self, *args, learning_rate_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.learning_rate_multipliers = check_multipliers(learning_rate_multipliers)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._learning_rate_factors = tuple(
            next((f for p, f in self.learning_rate_multipliers.items()
                  if re.search(p, variable_path(v)) is not None), 1.0)
            for v in variables)

    def variable_learning_rate(self, variable, learning_rate):
        """`learning_rate` times `variable`'s factor."""
        factor = self._learning_rate_factors[self._get_variable_index(variable)]
        return learning_rate if factor == 1.0 else learning_rate * factor

    def update_step(self, gradient, variable, learning_rate):
        return super().update_step(gradient, variable,
                                   self.variable_learning_rate(variable, learning_rate))

    def get_config(self):
        return {**super().get_config(),
                "learning_rate_multipliers": dict(self.learning_rate_multipliers)}
