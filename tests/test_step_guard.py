"""Tests of tf_sogclr.training.step_guard through the train loop: a step with a non-finite term
or an index outside the table changes nothing but the step counter."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr import losses
from tf_sogclr import models as model_lib
from tf_sogclr.training import loop as training_loop
from tf_sogclr.losses.u_table import UNVISITED
from tf_sogclr.training import optim


def tiny_model(num_examples=16):
    """Dense + batch-norm encoder on 4x4x1 images: traces in a second."""
    encoder = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(8), keras.layers.BatchNormalization(),
                                keras.layers.ReLU()])
    head = model_lib.ProjectionHead("nonlinear", proj_out_dim=4, num_proj_layers=1)
    model = model_lib.SogCLRModel(encoder, head, losses.GlobalContrastiveLoss(num_examples),
                                  num_classes=2, weight_decay=1e-4)
    model.compile(optimizer=optim.build_optimizer("lars", 0.5, weight_decay=1e-4))
    model.build((None, 4, 4, 1))
    model.optimizer.build(model.trainable_variables)
    return model


def batch(seed, nan=False, bad_index=False):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(8, 4, 4, 1)).astype(np.float32)
    if nan:
        images[5, 0, 0, 0] = np.nan  # in the second replica's half
    index = rng.choice(16, 8, replace=False).astype(np.int32)
    if bad_index:
        index[6] = 16
    return {"view1": images, "view2": images[:, ::-1], "index": index,
            "label": (index % 2).astype(np.int64)}


def state(model):
    """Every variable of model and optimiser, each replica's copy: {path: [copies]}."""
    def copies(variable):
        value = variable.value
        return [v.numpy() for v in getattr(value, "values", [value])]
    return {v.path: copies(v) for v in model.weights + model.optimizer.variables}


@pytest.mark.parametrize("setting", ["mirrored", "one_device_xla"])
def test_bad_steps_change_nothing_but_the_step_counter(setting, request):
    if setting == "mirrored":
        strategy = request.getfixturevalue("mirrored_strategy")
    else:
        strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = tiny_model()
    loop = training_loop.train_loop_function(model, strategy, jit_compile=setting != "mirrored",
                                     diagnostics=True)
    batches = [batch(0), batch(1, nan=True), batch(2, bad_index=True), batch(3)]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(batches), output_signature={
            k: tf.TensorSpec(v.shape, v.dtype) for k, v in batches[0].items()})
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    one = tf.constant(1, tf.int32)

    logs, report = loop(iterator, one)
    assert float(report["skipped"]) == 0 and int(report["first_bad_step"]) == -1
    before = state(model)
    logs, report = loop(iterator, one)  # a NaN pixel in one image of one replica
    terms = dict(zip(model_lib.NONFINITE_TERMS, report["nonfinite_terms"].numpy()))
    assert terms["projections"] == terms["contrastive_loss"] == terms["gradients"] == 1
    assert terms["weight_decay"] == 0 and float(report["index_out_of_range"]) == 0
    assert float(report["skipped"]) == 1 and int(report["first_bad_step"]) == 0
    assert float(logs["bad_steps"]) == float(logs["nonfinite_steps"]) == 1  # once, not per replica
    assert np.isfinite(float(logs["contrastive_loss"]))  # the mean never absorbs the NaN
    after = state(model)
    changed = [path for path in before if not all(
        np.array_equal(b, a) for b, a in zip(before[path], after[path]))]
    assert changed == [model.optimizer.iterations.path]  # weights, slots, BN stats, u-table
    assert int(model.optimizer.iterations.numpy()) == 2

    if setting != "mirrored":  # Only XLA drops the index assertion and reports the flag.
        logs, report = loop(iterator, one)
        assert float(report["index_out_of_range"]) == 1 and float(report["skipped"]) == 1
        assert not any(report["nonfinite_terms"].numpy())
        assert state(model).keys() == after.keys()
        for path, values in state(model).items():
            if path != model.optimizer.iterations.path:
                np.testing.assert_array_equal(values, after[path], err_msg=path)
    else:
        next(iterator)
    logs, report = loop(iterator, one)  # a good step is applied again
    assert float(report["skipped"]) == 0 and np.isfinite(float(logs["contrastive_loss"]))
    final = state(model)
    for path, copies in final.items():
        assert all(np.all(np.isfinite(c)) for c in copies), path
        if "moving_" not in path:  # local batch norm keeps per-replica statistics
            assert all(np.array_equal(c, copies[0]) for c in copies), path  # replicas agree
    assert any(not np.array_equal(final[p][0], after[p][0]) for p in final
               if "dense" in p and "kernel" in p)


@pytest.fixture
def policy(request):
    """Sets the global Keras dtype policy `request.param` for one test, then float32 again."""
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


OVERFLOWING_SCALE = 2.0 ** 30  # float16's largest value is 65504: this scale must overflow.


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("setting", ["one_device", "mirrored"])
def test_a_loss_scale_overflow_is_skipped_and_settles_without_bad_steps(policy, setting,
                                                                         request):
    strategy = (request.getfixturevalue("mirrored_strategy") if setting == "mirrored"
                else tf.distribute.get_strategy())
    with strategy.scope():
        model = tiny_model()
    loss_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # Keras wraps the optimiser under mixed_float16 only: bfloat16 has float32's range.
    assert loss_scaled == (policy == "mixed_float16")
    if loss_scaled:
        model.optimizer.dynamic_scale.assign(OVERFLOWING_SCALE)
    loop = training_loop.train_loop_function(model, strategy, jit_compile=False,
                                             diagnostics=True)
    batches = [batch(seed) for seed in range(40)]
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]})
    if setting == "mirrored":
        dataset = strategy.experimental_distribute_dataset(dataset)
    iterator = iter(dataset)
    one = tf.constant(1, tf.int32)
    kernel = next(v for v in model.trainable_variables if "dense" in v.path)
    skipped_overflows, scales = 0, []
    for step in range(1, len(batches) + 1):
        before = state(model)
        logs, report = loop(iterator, one)
        after = state(model)
        changed = [p for p in before if not all(
            np.array_equal(b, a) for b, a in zip(before[p], after[p]))]
        # Every step counts, applied or skipped: the schedule and checkpoints stay aligned.
        assert int(model.optimizer.iterations.numpy()) == step
        assert float(report["skipped"]) == 0 and float(logs["bad_steps"]) == 0
        assert float(logs["nonfinite_steps"]) == 0 and np.isfinite(float(logs["contrastive_loss"]))
        if kernel.path not in changed:
            # An overflow: weights, slots and batch-norm statistics keep their values; the
            # counter and the scale move (its growth count restarts), and the u-table keeps
            # the forward pass's write (a moving average of the loss at the unchanged
            # weights, which the overflow in the backward pass does not touch).
            assert loss_scaled, f"step {step} was not applied under {policy}"
            skipped_overflows += 1
            moved = {model.optimizer.iterations.path, model.optimizer.dynamic_scale.path,
                     model.loss_layer.u_table.log_u.path}
            assert moved <= set(changed) <= moved | {model.optimizer.step_counter.path}
            assert int(model.optimizer.step_counter.numpy()) == 0
            scales.append(float(model.optimizer.dynamic_scale.numpy()))
    if loss_scaled:
        # The scale halved at each overflow, then settled where float16 holds the gradients.
        assert skipped_overflows >= 10
        assert scales[:10] == [OVERFLOWING_SCALE / 2 ** k for k in range(1, 11)]
        assert float(model.optimizer.dynamic_scale.numpy()) < 65504.0
        assert skipped_overflows < len(batches) - 5  # training went on
    else:
        assert skipped_overflows == 0
    log_u = model.loss_layer.u_table.log_u
    assert log_u.dtype == "float32"
    for path, copies in state(model).items():
        assert all(np.all(np.isfinite(c)) for c in copies), path
    assert np.all(log_u.numpy() != UNVISITED)  # the applied steps wrote every row
