"""Tests of tf_sogclr.training.step_guard through the train loop: a step with a non-finite term
or an index outside the table changes nothing but the step counter."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr import losses
from tf_sogclr import models as model_lib
from tf_sogclr.training import loop as training_loop
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
