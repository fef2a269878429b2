"""Every loss under MirroredStrategy (2 logical CPUs) against one device, and the
collective-free backward pass (`losses.local_backward`): exact on one device and under XLA,
and the replicas' summed gradients equal one device's with the usual differentiable gather,
with and without individual temperatures (whose tables must then agree too); the step's graph
then holds no collective in its backward pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr import distribute, losses

RTOL, ATOL = 1e-5, 1e-6
# With individual temperatures at 0.05 the "infonce" gradients carry 1/tau = 20 times
# float32's rounding: those losses' gradients are compared to 1e-5.
INDIVIDUAL_ATOL = 1e-5
TABLE_ATOL = 1e-5  # tau's estimate cancels terms of size 1/tau (test_individual_temperatures)
NUM_EXAMPLES = 20
TABLE = dict(temperature_range=(0.05, 0.7), learning_rate=0.05, momentum=0.3)

# name -> a loss layer given collective_free_backward
LOSSES = {
    "sogclr": lambda free: losses.GlobalContrastiveLoss(
        NUM_EXAMPLES, temperature=0.2, gamma=0.7, collective_free_backward=free),
    "sogclr_libauc": lambda free: losses.GlobalContrastiveLoss(
        NUM_EXAMPLES, temperature=0.2, gamma=0.7, gradient_scale="libauc",
        collective_free_backward=free),
    "sogclr_individual": lambda free: losses.GlobalContrastiveLoss(
        NUM_EXAMPLES, temperature=0.2, gamma=0.7, individual_temperatures=TABLE,
        collective_free_backward=free),
    "bimodal": lambda free: losses.BimodalGlobalContrastiveLoss(
        NUM_EXAMPLES, temperature=0.1, gamma=0.8, collective_free_backward=free),
    "bimodal_individual": lambda free: losses.BimodalGlobalContrastiveLoss(
        NUM_EXAMPLES, temperature=0.1, gamma=0.8, individual_temperatures=TABLE,
        collective_free_backward=free),
    "nt_xent": lambda free: losses.NTXentLoss(0.2, collective_free_backward=free),
    "clip": lambda free: losses.ClipContrastiveLoss(0.05, collective_free_backward=free),
}
INDICES = ([0, 1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 8, 9, 10, 11], [0, 9, 3, 12, 13, 14, 0, 15])
LOCAL, DIM = 4, 6


def _build(make, free, kernel):
    dense = keras.layers.Dense(5, use_bias=False)
    dense.build((None, DIM))
    dense.kernel.assign(kernel)
    return dense, make(free)


def _replica_step(dense, loss_fn, x1, x2, index):
    with tf.GradientTape() as tape:
        loss = loss_fn(dense(x1), dense(x2), index)
        scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
    return scaled, tape.gradient(scaled, dense.kernel)


def _tables(loss_fn):
    """Every non-trainable weight but gamma, per replica."""
    return [[v.numpy() for v in getattr(w.value, "values", [w.value])]
            for w in loss_fn.non_trainable_weights if "gamma" not in w.name]


def _mirrored_step_function(strategy, dense, loss_fn):
    @tf.function
    def step(x1, x2, index):
        def split(ctx):
            rows = slice(ctx.replica_id_in_sync_group * LOCAL,
                         (ctx.replica_id_in_sync_group + 1) * LOCAL)
            return x1[rows], x2[rows], index[rows]
        shards = strategy.experimental_distribute_values_from_function(split)
        loss, grad = strategy.run(lambda s: _replica_step(dense, loss_fn, *s), args=(shards,))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", grad, axis=None)
    return step


def _assert_same_steps(step, reference, rng, name):
    """Runs both steps on the same batches (new, repeated and duplicated indices): the same
    loss and summed gradient each time."""
    atol = INDIVIDUAL_ATOL if name.endswith("_individual") else ATOL
    for index in INDICES:
        x1, x2 = (tf.constant(rng.normal(size=(2 * LOCAL, DIM)), tf.float32) for _ in range(2))
        index = tf.constant(index, tf.int32)
        loss, grad = step(x1, x2, index)
        want_loss, want_grad = reference(x1, x2, index)
        np.testing.assert_allclose(loss, want_loss, rtol=RTOL, atol=atol)
        np.testing.assert_allclose(grad, want_grad, rtol=RTOL, atol=atol)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("jit", [False, True])
def test_one_device_gradients_equal_the_differentiable_gather(name, jit):
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(DIM, 5)).astype(np.float32)
    free_dense, free_loss = _build(LOSSES[name], True, kernel)
    dense, loss_fn = _build(LOSSES[name], False, kernel)
    _assert_same_steps(
        tf.function(lambda *a: _replica_step(free_dense, free_loss, *a), jit_compile=jit),
        tf.function(lambda *a: _replica_step(dense, loss_fn, *a), jit_compile=jit), rng, name)
    for got, want in zip(_tables(free_loss), _tables(loss_fn)):
        np.testing.assert_allclose(got[0], want[0], rtol=RTOL, atol=TABLE_ATOL)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("free", [False, True], ids=["gather", "collective_free"])
def test_mirrored_summed_gradients_equal_one_device(name, free, mirrored_strategy):
    """Two replicas, with the differentiable gather or collective-free, against one device
    with the differentiable gather: loss, summed gradients and every table on every replica
    (u in log space to 1e-5, as test_losses compared u itself to rtol 1e-5)."""
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(DIM, 5)).astype(np.float32)
    with mirrored_strategy.scope():
        mirrored_dense, mirrored_loss = _build(LOSSES[name], free, kernel)
    single_dense, single_loss = _build(LOSSES[name], False, kernel)
    _assert_same_steps(
        _mirrored_step_function(mirrored_strategy, mirrored_dense, mirrored_loss),
        tf.function(lambda *a: _replica_step(single_dense, single_loss, *a)), rng, name)
    for replicas, want in zip(_tables(mirrored_loss), _tables(single_loss)):
        for got in replicas:
            np.testing.assert_allclose(got, want[0], rtol=RTOL, atol=TABLE_ATOL)


def test_a_learnable_clip_temperature_gets_the_same_gradient():
    rng = np.random.default_rng(5)
    image, text = (tf.constant(rng.normal(size=(6, 4)), tf.float32) for _ in range(2))
    grads = []
    for free in (False, True):
        tau = tf.Variable(0.07)
        loss_fn = losses.ClipContrastiveLoss(collective_free_backward=free)
        with tf.GradientTape() as tape:
            tape.watch([image, text])
            loss = loss_fn(image, text, temperature=tau)
        grads.append(tape.gradient(loss, [tau, image, text]))
    for got, want in zip(grads[1], grads[0]):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def collective_ops(strategy, name, free):
    """{op type: count} of the collectives in one mirrored step's graph (forward, backward)."""
    kernel = np.ones((DIM, 5), np.float32)
    with strategy.scope():
        dense, loss_fn = _build(LOSSES[name], free, kernel)
    step = _mirrored_step_function(strategy, dense, loss_fn)
    graph = step.get_concrete_function(
        tf.TensorSpec([2 * LOCAL, DIM]), tf.TensorSpec([2 * LOCAL, DIM]),
        tf.TensorSpec([2 * LOCAL], tf.int32)).graph
    return distribute.collective_op_counts(graph)


@pytest.mark.parametrize("name", ["sogclr", "bimodal_individual", "nt_xent", "clip"])
def test_no_collective_in_the_backward_pass(name, mirrored_strategy):
    """The differentiable gather's backward is an all-reduce (CollectiveReduceV2) per gathered
    projection and replica; the collective-free step has none, and its forward gathers
    (CollectiveGatherV2: shapes and values) are no more than the differentiable step's plus
    one gather of per-anchor scalars per replica for the controls."""
    replicas = mirrored_strategy.num_replicas_in_sync
    before = collective_ops(mirrored_strategy, name, False)
    after = collective_ops(mirrored_strategy, name, True)
    assert before["CollectiveReduceV2"] == 2 * replicas, before
    assert set(after) == {"CollectiveGatherV2"}, after
    extra = 0 if name in ("sogclr", "bimodal_individual") else 2 * replicas
    assert after["CollectiveGatherV2"] == before["CollectiveGatherV2"] + extra, (before, after)
