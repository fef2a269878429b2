"""The collective-free backward pass of every contrastive loss (FastCLIP's split gradient).

By default each replica gathers the global batch's projections differentiably
(`distribute.cross_replica_concat`): the backward pass then runs a collective too, which sends
every replica's gradient with respect to the others' rows back to them. Every loss here is,
for its gradient, a sum over anchors k and candidates j of `w_kj * s_kj` with weights w
held fixed (stop-gradient) and `s_kj = a_k . c_j`, so its gradient splits exactly into

* a local term: this replica's anchors (live) against the gathered candidates (fixed), the
  loss itself computed on gathered projections without gradient, and
* a remote term (`remote_term`): every replica's anchors (gathered, fixed) against this
  replica's candidates (live), weighted with the anchors' own normalisers (log u, or the
  log-sum-exp of InfoNCE) and temperatures, gathered in the forward pass.

Summed over replicas the two give the global-batch gradient; nothing is communicated in the
backward pass. The price is one more `[B, c]` similarity matrix per direction and a `[b, k]`
all-gather of per-anchor scalars (which the global losses' table write needs anyway).
Maths: docs/algorithm.md, "Collective-free backward".
"""

import numpy as np
import tensorflow as tf

from tf_sogclr import distribute


def gather(tensor, collective_free_backward):
    """The global batch `[B, ...]` of this replica's `[b, ...]` `tensor`: differentiable, or
    with `collective_free_backward` gathered without gradient (no backward collective)."""
    if collective_free_backward:
        tensor = tf.stop_gradient(tensor)
    return distribute.cross_replica_concat(tensor)


def local_rows(local_batch_size):
    """int32 `[b]`: this replica's rows in the global batch."""
    return distribute.replica_row_offset(local_batch_size) + tf.range(local_batch_size)


def remote_term(anchors_all, candidates, in_sum, log_normalizer, temperature, scale):
    """The gradient this replica's candidates receive from every anchor, as a surrogate.

    anchors_all: `[B, d]` gathered anchors (no gradient flows to them); candidates: `[c, d]`
    this replica's candidate rows (live); in_sum: bool `[B, c]`, whether candidate j is in
    anchor k's weighted sum (negatives, and for InfoNCE the positive); log_normalizer `[B]`:
    each anchor's log u (SogCLR) or log-sum-exp (InfoNCE); temperature: scalar or `[B]`;
    scale: scalar or `[B]`, the anchor's factor (1/K, 1/tau, ...). Returns the scalar
    `sum_kj scale_k * exp(s_kj / tau_k - log_normalizer_k) * s_kj` with the weights fixed.
    """
    sims = tf.matmul(tf.stop_gradient(anchors_all), candidates, transpose_b=True)
    column = lambda x: tf.reshape(tf.stop_gradient(tf.cast(x, tf.float32)), [-1, 1])
    logits = tf.where(in_sum, tf.stop_gradient(sims) / column(temperature)
                      - column(log_normalizer), -np.inf)
    weights = tf.stop_gradient(tf.exp(logits) * column(scale))
    return tf.reduce_sum(weights * sims)


def with_remote_gradient(loss, remote, local_batch_size):
    """`loss` (this replica's mean over its b anchors) plus the remote term's gradient, its
    value unchanged: summed over replicas, after the usual division by their number, the
    gradients are the global batch's."""
    remote = remote / tf.cast(local_batch_size, tf.float32)
    return loss + (remote - tf.stop_gradient(remote))
