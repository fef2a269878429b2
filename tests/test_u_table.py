"""Tests of tf_sogclr.losses.u_table through the global losses: sparse O(batch) reads and
writes, unvisited rows, checkpoints, and steps that must leave the table as it was."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr import losses
from tf_sogclr.losses.u_table import UNVISITED


def test_step_work_is_independent_of_table_size():
    num_examples = 10_000_000
    loss_fn = losses.GlobalContrastiveLoss(num_examples)
    step = tf.function(lambda z1, z2, i: loss_fn(z1, z2, i))
    graph = step.get_concrete_function(
        tf.TensorSpec([8, 4]), tf.TensorSpec([8, 4]), tf.TensorSpec([8], tf.int32)).graph
    for op in graph.get_operations():
        for output in op.outputs:
            if output.dtype != tf.resource and output.shape.is_fully_defined():
                assert output.shape.num_elements() < num_examples, (op.type, output.shape)
    assert {"ResourceGather", "ResourceScatterUpdate"} <= {op.type for op in graph.get_operations()}


def test_untouched_rows_stay_unvisited():
    loss_fn = losses.GlobalContrastiveLoss(10)
    loss_fn(tf.random.normal([3, 4]), tf.random.normal([3, 4]), tf.constant([7, 2, 5]))
    visited = loss_fn.estimates().numpy() > 0
    np.testing.assert_array_equal(np.flatnonzero(visited), [2, 5, 7])
    untouched = np.setdiff1d(np.arange(10), [2, 5, 7])
    assert np.all(loss_fn.u_table.log_u.numpy()[untouched] == UNVISITED)


def test_checkpoint_round_trip_restores_table_exactly(tmp_path):
    loss_fn = losses.BimodalGlobalContrastiveLoss(12, gamma=0.5, gamma_schedule="cosine",
                                                  gamma_decay_epochs=3)
    loss_fn.set_epoch(1)
    loss_fn(tf.random.normal([4, 3]), tf.random.normal([4, 3]), tf.constant([1, 4, 6, 11]))
    saved = [w.numpy().copy() for w in loss_fn.non_trainable_weights]
    path = tf.train.Checkpoint(loss=loss_fn).save(str(tmp_path / "ckpt"))
    fresh = losses.BimodalGlobalContrastiveLoss(12, gamma=0.5, gamma_schedule="cosine",
                                                gamma_decay_epochs=3)
    tf.train.Checkpoint(loss=fresh).restore(path).assert_consumed()
    for want, got in zip(saved, fresh.non_trainable_weights):
        np.testing.assert_array_equal(got.numpy(), want)
    assert len(saved) == 3  # gamma and two tables


def test_keras_weights_file_carries_table(tmp_path):
    loss_fn = losses.GlobalContrastiveLoss(9)
    loss_fn(tf.random.normal([3, 4]), tf.random.normal([3, 4]), tf.constant([0, 4, 8]))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.loss_layer = loss_fn
    model.save_weights(str(tmp_path / "m.weights.h5"))
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.loss_layer = losses.GlobalContrastiveLoss(9)
    other.load_weights(str(tmp_path / "m.weights.h5"))
    np.testing.assert_array_equal(other.loss_layer.estimates(), loss_fn.estimates())


def _bad_step_leaves_table_unchanged(loss_fn, z1, z2, index, step):
    before = loss_fn.u_table.log_u.numpy().copy()
    result = step(z1, z2, index)
    np.testing.assert_array_equal(loss_fn.u_table.log_u.numpy(), before)
    return result


def test_out_of_range_index_raises_eagerly_and_in_graphs():
    loss_fn = losses.GlobalContrastiveLoss(10)
    z = tf.random.normal([4, 3])
    loss_fn(z, z + 1.0, tf.constant([0, 1, 2, 3]))
    for bad in ([0, 1, 2, 10], [-1, 1, 2, 3]):
        with pytest.raises(ValueError, match=r"index must be in \[0, num_examples=10\)"):
            _bad_step_leaves_table_unchanged(loss_fn, z, z, tf.constant(bad), loss_fn)
        graph_step = tf.function(lambda a, b, i: loss_fn(a, b, i))
        with pytest.raises(tf.errors.InvalidArgumentError, match="num_examples=10"):
            _bad_step_leaves_table_unchanged(loss_fn, z, z, tf.constant(bad), graph_step)


def test_under_xla_bad_steps_report_input_ok_zero_and_keep_table():
    loss_fn = losses.GlobalContrastiveLoss(10)
    z = tf.random.normal([4, 3])
    loss_fn(z, z + 1.0, tf.constant([0, 1, 2, 3]))
    step = tf.function(lambda a, b, i: loss_fn(a, b, i, return_metrics=True)[1]["input_ok"],
                       jit_compile=True)
    assert _bad_step_leaves_table_unchanged(loss_fn, z, z, tf.constant([0, 1, 2, 10]), step) == 0
    assert _bad_step_leaves_table_unchanged(loss_fn, z, z, tf.constant([-5, 1, 2, 3]), step) == 0
    nan = tf.tensor_scatter_nd_update(z, [[1, 1]], [np.nan])
    assert _bad_step_leaves_table_unchanged(loss_fn, nan, z, tf.constant([0, 1, 2, 3]), step) == 0
    inf = tf.tensor_scatter_nd_update(z, [[2, 0]], [np.inf])
    assert _bad_step_leaves_table_unchanged(loss_fn, z, inf, tf.constant([0, 1, 2, 3]), step) == 0
    assert step(z, z + 1.0, tf.constant([0, 1, 2, 3])) == 1


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_non_finite_projections_report_and_keep_table(mode):
    loss_fn = losses.GlobalContrastiveLoss(10)
    z = tf.random.normal([4, 3])
    loss_fn(z, z + 1.0, tf.constant([0, 1, 2, 3]))
    step = lambda a, b, i: loss_fn(a, b, i, return_metrics=True)[1]["input_ok"]
    step = tf.function(step) if mode == "function" else step
    nan = tf.tensor_scatter_nd_update(z, [[0, 2]], [np.nan])
    assert _bad_step_leaves_table_unchanged(loss_fn, z, nan, tf.constant([0, 1, 2, 3]), step) == 0
    assert np.all(np.isfinite(loss_fn.u_table.log_u.numpy()))
