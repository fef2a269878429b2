"""What every contrastive loss does with its inputs before the maths: checks, normalisation,
the global batch's self mask, and the verdict that lets a bad step leave the tables alone.

Where each input check lives (GPU and TPU scatters drop or clamp bad rows silently):

* ranks, dtypes and static batch sizes: at trace time, `ValueError` (`check_pair`);
* indices outside [0, num_examples): eagerly a `ValueError` before anything runs; in a
  `tf.function` a `tf.debugging` assertion that fails the step before the table is read
  (`check_index_range`);
* under `jit_compile=True` XLA drops assertions, so every step also reports
  `metrics["input_ok"]` (`accept_step`: indices in range and projections finite) and a step
  with `input_ok == 0` leaves the table unchanged. Training loops raise on it.
"""

import tensorflow as tf

from tf_sogclr import distribute


def check_pair(z1, z2, index, names):
    """Trace-time checks of two `[b, d]` projections and `[b]` indices; returns them as tensors."""
    z1 = tf.convert_to_tensor(z1)
    z2 = tf.convert_to_tensor(z2)
    for name, z in zip(names[:2], (z1, z2)):
        if z.shape.rank != 2:
            raise ValueError(f"{name} must have shape [batch, dim], got shape {z.shape}.")
        if not z.dtype.is_floating:
            raise ValueError(f"{name} must be a float tensor, got dtype {z.dtype.name}.")
    if not z1.shape.is_compatible_with(z2.shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {z1.shape} and {z2.shape}."
        )
    if index is None:
        return z1, z2, None
    index = tf.convert_to_tensor(index)
    if index.shape.rank != 1:
        raise ValueError(f"{names[2]} must have shape [batch], got shape {index.shape}.")
    if not index.dtype.is_integer:
        raise ValueError(f"{names[2]} must be an integer tensor, got dtype {index.dtype.name}.")
    if not index.shape[:1].is_compatible_with(z1.shape[:1]):
        raise ValueError(
            f"{names[2]} has {index.shape[0]} rows but {names[0]} has {z1.shape[0]}; "
            "they must match."
        )
    return z1, z2, index


def check_index_range(index, num_examples, name):
    """Raises eagerly, or returns assertion ops (dropped by XLA) for indices in [0, N)."""
    if tf.executing_eagerly():
        values = index.numpy()
        bad = values[(values < 0) | (values >= num_examples)]
        if bad.size:
            raise ValueError(
                f"{name} must be in [0, num_examples={num_examples}), got {bad[:8].tolist()}."
            )
        return []
    message = f"{name} must be in [0, num_examples={num_examples})"
    return [
        tf.debugging.assert_non_negative(index, message=message),
        tf.debugging.assert_less(index, tf.cast(num_examples, index.dtype), message=message),
    ]


def normalize_projections(z, normalize):
    """`z` `[b, d]` as float32, L2-normalised along the last axis when `normalize`."""
    z = tf.cast(z, tf.float32)
    return tf.math.l2_normalize(z, axis=-1) if normalize else z


def not_self_mask(local_batch_size, global_batch_size):
    """Bool `[b, B]`: False at each local anchor's own row of the global batch."""
    rows = distribute.replica_row_offset(local_batch_size) + tf.range(local_batch_size)
    return tf.not_equal(rows[:, None], tf.range(global_batch_size)[None, :])


def accept_step(index_global, num_examples, *projections):
    """Scalar bool, identical on every replica: all indices in range, all projections finite."""
    ok = tf.logical_and(
        tf.reduce_all(index_global >= 0),
        tf.reduce_all(index_global < tf.cast(num_examples, index_global.dtype)),
    )
    for z in projections:
        ok = tf.logical_and(ok, tf.reduce_all(tf.math.is_finite(z)))
    return ok
