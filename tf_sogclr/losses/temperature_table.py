"""iSogCLR's individual temperatures: one tau per training example, learned, updated sparsely.

iSogCLR (Qiu et al., ICML 2023) gives every example i its own temperature tau_i and
minimises the global objective over it too: each step, for the rows of the global batch,

    d_i    = log u_i + rho - sum_j p_ij s_ij / (tau_i K)      (estimate of dF_i / dtau_i)
    m_i   <- momentum * m_i + (1 - momentum) * clip(d_i, -c, c)
    tau_i <- clip(tau_i - eta * m_i, tau_min, tau_max)

(docs/algorithm.md, "Individual temperatures"). LibAUC writes the moving average with
beta = 1 - momentum (its default beta 0.9 is momentum 0.1 here); iSogCLR and FastCLIP clip
d_i at +-5 (FastCLIP then takes an Adam step; this is LibAUC's and iSogCLR's momentum step).

`TemperatureTable` keeps tau and m as two `[N]` float32 Keras weights beside the u-table:
a step reads and writes only its global batch's rows (O(batch)), every replica computes
and writes the same rows (ONLY_FIRST_REPLICA), and checkpoints carry both. The weights
p_ij = exp(s_ij / tau_i - log u_i) are formed in log space by the loss, so tau_min = 0.01
cannot overflow float32.
"""

import keras
import tensorflow as tf

from tf_sogclr import checks
from tf_sogclr.losses.u_table import linear_mean_over_duplicates, write_rows


def _check_arguments(num_examples, initial_temperature, temperature_range, learning_rate,
                     momentum, gradient_clip):
    low, high = temperature_range
    if not 0.0 < low < high:
        checks.fail("temperature_range", "(tau_min, tau_max) with 0 < tau_min < tau_max",
                    temperature_range)
    checks.in_range("initial_temperature", initial_temperature, low, high)
    checks.in_range("learning_rate", learning_rate, 0.0, float("inf"), high_open=True)
    checks.in_range("momentum", momentum, 0.0, 1.0, high_open=True)
    checks.in_range("gradient_clip", gradient_clip, 0.0, float("inf"), low_open=True)
    checks.positive_int("num_examples", num_examples)


@keras.saving.register_keras_serializable(package="tf_sogclr")
class TemperatureTable(keras.layers.Layer):
    """Per-example temperatures tau `[N]` and their gradients' moving averages `[N]`.

    Args:
      num_examples: rows, the size of the training split.
      initial_temperature: every tau_i's starting value, in `temperature_range`.
      temperature_range: (tau_min, tau_max), the clamp of every update.
      learning_rate: eta, the step on tau (LibAUC's eta; default 0.01).
      momentum: weight of the old moving average of the gradient (1 - LibAUC's beta).
      gradient_clip: c, the gradient estimate is clipped to [-c, c] first (iSogCLR's 5).
    """

    def __init__(self, num_examples, initial_temperature=0.1, temperature_range=(0.01, 1.0),
                 learning_rate=0.01, momentum=0.1, gradient_clip=5.0, **kwargs):
        temperature_range = tuple(float(t) for t in temperature_range)
        _check_arguments(num_examples, initial_temperature, temperature_range, learning_rate,
                         momentum, gradient_clip)
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_examples = int(num_examples)
        self.initial_temperature = float(initial_temperature)
        self.temperature_range = temperature_range
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.gradient_clip = float(gradient_clip)
        common = dict(shape=(self.num_examples,), trainable=False, autocast=False,
                      aggregation="only_first_replica")
        self.tau = self.add_weight(
            initializer=keras.initializers.Constant(self.initial_temperature), name="tau",
            **common)
        self.gradient_average = self.add_weight(
            initializer="zeros", name="tau_gradient_average", **common)
        self.built = True

    def read(self, index):
        """tau of rows `index` (int32 `[b]`, range-checked): float32 `[b]`."""
        return tf.gather(self.tau.value, index)

    def update(self, index, gradient, accept):
        """One iSogCLR step on rows `index` (int32 `[B]`) with estimates `gradient` `[B]`.

        Both tables of a row that appears several times store the mean of its values; with
        `accept` false, or a non-finite estimate, the rows keep their old values.
        """
        gradient = tf.clip_by_value(gradient, -self.gradient_clip, self.gradient_clip)
        average = (self.momentum * tf.gather(self.gradient_average.value, index)
                   + (1.0 - self.momentum) * gradient)
        tau = tf.clip_by_value(self.read(index) - self.learning_rate * average,
                               *self.temperature_range)
        accept = tf.logical_and(accept, tf.reduce_all(tf.math.is_finite(average)))
        write_rows(self.tau, index, tau, accept, linear_mean_over_duplicates)
        write_rows(self.gradient_average, index, average, accept, linear_mean_over_duplicates)

    def estimates(self):
        """Every example's temperature, float32 `[num_examples]` (for summaries)."""
        return tf.convert_to_tensor(self.tau.value)

    def get_config(self):
        config = super().get_config()
        config.update(num_examples=self.num_examples,
                      initial_temperature=self.initial_temperature,
                      temperature_range=self.temperature_range,
                      learning_rate=self.learning_rate, momentum=self.momentum,
                      gradient_clip=self.gradient_clip)
        return config
