"""The per-example moving-average table of SogCLR, stored as log u, updated sparsely.

One float32 per training example (4 bytes a row). Rows never visited hold `UNVISITED`, the
most negative finite float32, so `exp` of the table is exactly 0 there and no second
"visited" table is needed. A step reads and writes only the rows of its global batch: work
and memory traffic are O(global batch), never O(num_examples).
"""

import keras
import numpy as np
import tensorflow as tf

UNVISITED = float(np.finfo(np.float32).min)


def log_add_exp(a, b):
    """Elementwise log(exp(a) + exp(b)), exact when either side is -inf."""
    larger = tf.maximum(a, b)
    return larger + tf.math.log1p(tf.exp(-tf.abs(a - b)))


def moving_average_log_u(log_u_old, log_g, gamma):
    """SogCLR's update in log space: log((1 - gamma) u_old + gamma g), per example.

    `log_u_old`, `log_g`: float32 `[b]`. Rows whose stored value is `UNVISITED` take
    `log_g` (gamma = 1 on a first visit, decided per example, docs/algorithm.md, "The step").
    """
    gamma = tf.cast(gamma, tf.float32)
    visited = log_u_old > UNVISITED
    blended = log_add_exp(tf.math.log1p(-gamma) + log_u_old, tf.math.log(gamma) + log_g)
    return tf.where(visited, blended, log_g)


def mean_over_duplicates(index, log_values):
    """For each row, log of the mean of exp(log_values) over rows sharing its index.

    `index` int32 `[B]`, `log_values` float32 `[B]`. Rows of one example (possible when an
    epoch boundary falls inside a batch) then all write the same value, so the order in
    which a scatter applies them cannot matter. A `[B, B]` comparison finds each row's first
    occurrence; the log-mean itself costs O(B) exps. Static shapes (XLA friendly).
    """
    batch = tf.shape(index)[0]
    first = _first_occurrence(index)
    peak = tf.math.unsorted_segment_max(log_values, first, batch)
    total = tf.math.unsorted_segment_sum(tf.exp(log_values - tf.gather(peak, first)), first, batch)
    count = tf.math.unsorted_segment_sum(tf.ones_like(log_values), first, batch)
    log_mean = peak + tf.math.log(total) - tf.math.log(count)  # valid at first occurrences
    return tf.gather(log_mean, first)


def linear_mean_over_duplicates(index, values):
    """For each row, the mean of `values` (float32 `[B]`) over rows sharing its index."""
    batch = tf.shape(index)[0]
    first = _first_occurrence(index)
    total = tf.math.unsorted_segment_sum(values, first, batch)
    count = tf.math.unsorted_segment_sum(tf.ones_like(values), first, batch)
    return tf.gather(total / tf.maximum(count, 1.0), first)


def _first_occurrence(index):
    """int32 `[B]`: the position of each row's first occurrence of its index in `index`."""
    return tf.argmax(tf.equal(index[:, None], index[None, :]), axis=1, output_type=tf.int32)


def write_rows(variable, index, values, accept, merge_duplicates):
    """Stores `values` (float32 `[B]`) at rows `index` (int32 `[B]`) of the `[N]` variable.

    Duplicate indices store `merge_duplicates(index, values)` (computed only when the batch
    has duplicates: they are rare). Non-finite values, or `accept` false (a bad step), make
    the write put the rows' old values back: the table is unchanged. One sparse scatter.
    """
    sorted_index = tf.sort(index)
    has_duplicates = tf.reduce_any(tf.equal(sorted_index[1:], sorted_index[:-1]))
    values = tf.cond(has_duplicates, lambda: merge_duplicates(index, values), lambda: values)
    accept = tf.logical_and(accept, tf.reduce_all(tf.math.is_finite(values)))
    values = tf.where(accept, values, tf.gather(variable.value, index))
    variable.value.scatter_update(tf.IndexedSlices(values, index))


@keras.saving.register_keras_serializable(package="tf_sogclr")
class UTable(keras.layers.Layer):
    """A table of log u, one float32 row per training example, with sparse reads and writes.

    The variable is created at construction, under whatever strategy scope is active, with
    aggregation ONLY_FIRST_REPLICA: in replica context a `scatter_update` from the first
    replica is applied to every copy, and since every replica computes the same global rows,
    the copies stay identical. It is a non-trainable Keras weight, so `save_weights`,
    Keras checkpoints and `tf.train.Checkpoint` all carry it.
    """

    def __init__(self, num_examples, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_examples = int(num_examples)
        self.log_u = self.add_weight(
            shape=(self.num_examples,),
            initializer=keras.initializers.Constant(UNVISITED),
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name="log_u",
        )

    def read(self, index):
        """Stored log u of rows `index` (int32 `[b]`, already range-checked): float32 `[b]`."""
        return tf.gather(self.log_u.value, index)

    def write(self, index, log_u, accept):
        """Stores `log_u` (float32 `[B]`) at rows `index` (int32 `[B]`) when `accept` is true.

        Duplicate indices store the mean of their values. With `accept` false (a bad step)
        the rows are rewritten with their old values: the table is unchanged. Finite but
        huge unnormalised projections could still overflow log u: that is never stored.
        """
        write_rows(self.log_u, index, log_u, accept, mean_over_duplicates)

    def estimates(self):
        """The table in linear scale, float32 `[num_examples]`, 0 where never visited."""
        return tf.exp(tf.convert_to_tensor(self.log_u.value))

    def visited_fraction(self):
        """Fraction of rows visited at least once (reads the whole table: for summaries)."""
        visited = tf.cast(tf.convert_to_tensor(self.log_u.value) > UNVISITED, tf.float32)
        return tf.reduce_mean(visited)

    def get_config(self):
        config = super().get_config()
        config.update(num_examples=self.num_examples)
        return config
