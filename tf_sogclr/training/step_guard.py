"""Guarded optimiser steps: an update is applied only when every checked term is finite.

A training step (`models.ContrastiveModel`, for both modalities) snapshots the variables its
forward pass writes (batch-norm moving statistics), computes its loss terms and gradients,
and hands them to `guarded_update`: it asks `nonfinite_flags` which terms hold a NaN or an
Inf on some replica and calls `apply_if` with the verdict, identical on every replica. A bad
step is not applied: only `optimizer.iterations` advances (the learning-rate schedule,
checkpoint numbers and data position stay aligned) and the moving statistics get their old
values back (a NaN there would stay in the model forever). `training.loop` turns the
per-step diagnostics into a stop or a warning (`nonfinite_policy`).

Under mixed_float16 (Keras wraps the optimiser in a `LossScaleOptimizer`), non-finite
gradients of finite terms are a loss-scale overflow, expected while the scale settles. Such a
step is skipped in the same way (only `iterations` advances, the statistics are put back)
and the loss scale halves, as the LossScaleOptimizer itself would do; but it is no bad step:
neither `bad_steps` nor the report counts it. The u-table keeps the step's write: its rows
are moving averages of the loss at the unchanged weights, computed in the forward pass,
which an overflow in the backward pass does not touch. (Left to the LossScaleOptimizer
alone, an overflow would not advance `iterations`, and the schedule and checkpoint numbers
would fall behind the steps taken; its verdict would also be the first replica's alone.)
"""

import keras
import tensorflow as tf


def written_statistics(*layers):
    """The non-trainable variables of `layers` (batch-norm moving statistics): what a forward
    pass in training mode writes."""
    return [v for layer in layers for v in layer.non_trainable_variables]


def snapshot(variables):
    """The current values of `variables` (tensors), to put back with `apply_if`."""
    return [tf.identity(v.value) for v in variables]


def _nonfinite(tensors):
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]
    if not checks:
        return tf.constant(False)
    return tf.logical_not(tf.reduce_all(tf.stack(checks)))


def nonfinite_flags(groups):
    """Float32 `[len(groups)]`: 1.0 for each group (a list of tensors; an empty list is never
    bad) holding a non-finite value on some replica, else 0.0; identical on every replica."""
    flags = tf.cast(tf.stack([_nonfinite(group) for group in groups]), tf.float32)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        flags = ctx.all_reduce(tf.distribute.ReduceOp.SUM, flags)
    return tf.cast(flags > 0.0, tf.float32)


def count_once(value):
    """`value` on the first replica, 0 on the others: a Sum metric then counts it once."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    first = tf.equal(tf.cast(ctx.replica_id_in_sync_group, tf.int32), 0)
    return tf.where(first, value, tf.zeros_like(value))


def track_if(metric, value, ok):
    """Adds `value` to the mean `metric` only for an applied step (a NaN would stay forever)."""
    value = tf.cast(value, tf.float32)
    metric.update_state(tf.where(ok, value, 0.0), sample_weight=tf.cast(ok, tf.float32))


def _lower_loss_scale(optimizer, overflow):
    """Halves a LossScaleOptimizer's scale and restarts its growth count when `overflow`."""
    optimizer.dynamic_scale.assign(
        optimizer.dynamic_scale * tf.where(overflow, 0.5, 1.0))
    optimizer.step_counter.assign(
        tf.where(overflow, tf.zeros_like(optimizer.step_counter), optimizer.step_counter))


def apply_if(optimizer, ok, gradients, variables, statistics, saved, overflow=None):
    """Applies `gradients` to `variables` when `ok` (a bool identical on all replicas); else
    only advances `optimizer.iterations` and puts back `saved` (from `snapshot`) into
    `statistics`, and, for a LossScaleOptimizer whose gradients overflowed (`overflow`, a
    bool identical on all replicas; the caller then passes `ok` False), halves the loss
    scale.

    With strategies that need `merge_call` (Mirrored, MultiWorkerMirrored and TPU in graph
    mode) the condition is taken in cross-replica context, as Keras's LossScaleOptimizer
    does: a cond in replica context may not hold a merge_call.
    """
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        def apply():
            optimizer.apply(gradients, variables)
            return tf.constant(True)

        def skip():
            optimizer.iterations.assign_add(1)
            for variable, value in zip(statistics, saved):
                variable.assign(value)
            if overflow is not None:
                _lower_loss_scale(optimizer, overflow)
            return tf.constant(False)

        tf.cond(ok, apply, skip)
        return

    def cross_replica(strategy, ok, gradients, variables, saved, overflow):
        def apply():
            strategy.extended.call_for_each_replica(optimizer.apply,
                                                    args=(gradients, variables))
            return tf.constant(True)

        def skip():
            optimizer.iterations.assign_add(1)
            for variable, value in zip(statistics, saved):
                strategy.extended.update(variable.value, lambda v, x: v.assign(x),
                                         args=(value,), group=False)
            if overflow is not None:
                _lower_loss_scale(optimizer, strategy.experimental_local_results(overflow)[0])
            return tf.constant(False)

        tf.cond(strategy.experimental_local_results(ok)[0], apply, skip)

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(ok, gradients, variables, saved, overflow))


def guarded_update(optimizer, gradients, variables, terms, input_ok, statistics, saved,
                   trackers, tracked):
    """Checks a step and applies it only if it is good; returns `(ok, report)`.

    Args:
      optimizer, gradients, variables: the update (gradients already loss-scaled).
      terms: groups of tensors to check, in the model's `NONFINITE_TERMS` order minus the
        last, "gradients" (checked here; under a LossScaleOptimizer non-finite gradients of
        finite terms are an overflow instead: skipped, the scale halved, not counted as bad).
        The first group is what the loss layer was given: a non-finite value there also
        zeroes its `input_ok`.
      input_ok: the loss layer's float32 verdict on its inputs (indices in range, finite).
      statistics, saved: `written_statistics` and their `snapshot` before the forward pass.
      trackers: the model's metrics by name, with Sum metrics "bad_steps" and
        "nonfinite_steps"; `tracked` {name: value} are added to theirs for a good step only.

    `report` (what `loop.train_loop_function` collects): float32 "nonfinite_terms" `[T]`,
    "index_out_of_range" and "skipped"; `ok` is a bool, identical on every replica.
    """
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    bad_terms = nonfinite_flags(list(terms) + [gradients])  # one collective for all
    gradients_bad = bad_terms[-1] > 0.0
    if loss_scaled:  # Non-finite gradients are an overflow, not a bad term.
        bad_terms = tf.concat([bad_terms[:-1], [0.0]], 0)
    # input_ok is global and also 0 for non-finite inputs: what remains is an index.
    index_bad = tf.logical_and(input_ok < 1.0, bad_terms[0] == 0.0)
    ok = tf.logical_and(tf.reduce_all(bad_terms == 0.0), tf.logical_not(index_bad))
    overflow = tf.logical_and(ok, gradients_bad) if loss_scaled else None
    apply_if(optimizer, ok if overflow is None else tf.logical_and(ok, tf.logical_not(overflow)),
             gradients, variables, statistics, saved, overflow)
    for name, value in tracked.items():
        track_if(trackers[name], value, ok)
    skipped = 1.0 - tf.cast(ok, tf.float32)
    trackers["bad_steps"].update_state(count_once(skipped))
    trackers["nonfinite_steps"].update_state(count_once(tf.reduce_max(bad_terms)))
    return ok, {"nonfinite_terms": bad_terms,
                "index_out_of_range": tf.cast(index_bad, tf.float32), "skipped": skipped}
