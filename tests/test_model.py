"""Tests of tf_sogclr.models.sogclr_model and the multi-step loop of tf_sogclr.training.loop on
the tiny ResNet of tests/tiny.py."""

import numpy as np
import pytest
import tensorflow as tf

import tiny
from tf_sogclr import models as model_lib
from tf_sogclr.models import resnet
from tf_sogclr.training import loop as training_loop
from tiny import IMAGE_SHAPE, NUM_CLASSES, NUM_EXAMPLES


@pytest.mark.parametrize("loss", ["sogclr", "simclr"])
def test_fit_on_a_fixed_batch_lowers_the_loss(loss):
    model = tiny.sogclr_model(loss)
    batch = tiny.view_batch()
    data = tf.data.Dataset.from_tensors(batch).repeat()
    history = model.fit(data, epochs=6, steps_per_epoch=3, verbose=0).history
    for name in ("contrastive_loss", "objective", "linear_loss", "learning_rate"):
        assert np.all(np.isfinite(history[name])), name
    assert history["objective"][-1] < history["objective"][0]
    assert history["contrastive_loss"][-1] < history["contrastive_loss"][0]
    assert history["bad_steps"][-1] == 0
    if loss == "sogclr":
        estimates = model.loss_layer.estimates().numpy()
        seen = np.zeros(NUM_EXAMPLES, bool)
        seen[batch["index"].numpy()] = True
        assert np.all(estimates[seen] > 0) and np.all(estimates[~seen] == 0)
        assert history["gamma"][-1] == pytest.approx(0.9)


def test_call_and_evaluate_report_linear_head_scores():
    model = tiny.sogclr_model()
    outputs = model(tf.zeros((5, *IMAGE_SHAPE)))
    assert outputs["features"].shape == (5, resnet.feature_dim(18, 0.0625))
    assert outputs["projection"].shape == (5, 8)
    assert outputs["logits"].shape == (5, NUM_CLASSES)
    batch = tiny.view_batch()
    data = tf.data.Dataset.from_tensors({"image": batch["view1"], "label": batch["label"]})
    scores = model.evaluate(data, return_dict=True, verbose=0)
    assert set(scores) == {"linear_loss", "linear_top1", "linear_top5"}
    assert scores["linear_top5"] == 1.0  # 3 classes: the true one is always in the top 5.
    assert 0.0 <= scores["linear_top1"] <= 1.0


def test_projection_head_modes_and_bad_arguments():
    features = tf.random.normal((4, 6))
    assert model_lib.ProjectionHead("none")(features).shape == (4, 6)
    assert model_lib.ProjectionHead("linear", proj_out_dim=3)(features).shape == (4, 3)
    head = model_lib.ProjectionHead("nonlinear", proj_out_dim=3, num_proj_layers=3)
    out, hiddens = head(features, return_hiddens=True)
    assert out.shape == (4, 3) and [h.shape[-1] for h in hiddens] == [6, 6, 6, 3]
    with pytest.raises(ValueError, match="proj_head_mode"):
        model_lib.ProjectionHead("mlp")
    with pytest.raises(ValueError, match="num_proj_layers"):
        model_lib.ProjectionHead("nonlinear", num_proj_layers=0)
    with pytest.raises(ValueError, match="proj_out_dim"):
        model_lib.ProjectionHead("linear", proj_out_dim=0)


def test_lars_excludes_batch_norm_bias_and_linear_head_by_path():
    model = tiny.sogclr_model()
    optimizer = model.optimizer
    for variable, adapted in zip(model.trainable_variables, optimizer._adaptation_flags):
        excluded = any(p in variable.path for p in ("batch_norm", "bias", "head_supervised"))
        assert adapted != excluded, variable.path
    assert any("head_supervised" in v.path for v in model.trainable_variables)


def test_mirrored_two_replicas_equal_one_device_with_global_bn(mirrored_strategy):
    batches = [tiny.view_batch(8, seed) for seed in (1, 2)]
    single = tiny.sogclr_model(global_bn=True)
    with mirrored_strategy.scope():
        mirrored = tiny.sogclr_model(global_bn=True)
    tiny.copy_weights(single, mirrored)
    single_logs = tiny.run_steps(single, tf.distribute.get_strategy(), batches, 1)
    mirrored_logs = tiny.run_steps(mirrored, mirrored_strategy, batches, 2)
    tiny.assert_same_weights(mirrored, single, rtol=1e-4)
    np.testing.assert_allclose(mirrored_logs["contrastive_loss"],
                               single_logs["contrastive_loss"], rtol=1e-4)
    assert np.count_nonzero(single.loss_layer.estimates()) == len(
        np.unique(np.concatenate([b["index"].numpy() for b in batches])))
    for table in tiny.replica_values(mirrored.loss_layer.u_table.log_u):
        np.testing.assert_allclose(np.exp(table), single.loss_layer.estimates(), rtol=1e-4)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_steps_per_execution_equals_single_steps_on_one_device(jit_compile):
    batches = [tiny.view_batch(8, seed) for seed in (3, 4, 5)]
    one_at_a_time, grouped = tiny.sogclr_model(), tiny.sogclr_model()
    tiny.copy_weights(one_at_a_time, grouped)
    tiny.run_steps(one_at_a_time, tf.distribute.get_strategy(), batches, 1, jit_compile)
    tiny.run_steps(grouped, tf.distribute.get_strategy(), batches, 3, jit_compile)
    tiny.assert_same_weights(grouped, one_at_a_time, rtol=1e-5)
    assert int(grouped.optimizer.iterations.numpy()) == 3


def test_steps_per_execution_equals_single_steps_mirrored(mirrored_strategy):
    batches = [tiny.view_batch(8, seed) for seed in (6, 7)]
    with mirrored_strategy.scope():
        one_at_a_time, grouped = tiny.sogclr_model(), tiny.sogclr_model()
    tiny.copy_weights(one_at_a_time, grouped)
    tiny.run_steps(one_at_a_time, mirrored_strategy, batches, 1)
    tiny.run_steps(grouped, mirrored_strategy, batches, 2)
    tiny.assert_same_weights(grouped, one_at_a_time, rtol=1e-5)


def test_jit_compile_refused_for_mirrored(mirrored_strategy):
    with mirrored_strategy.scope():
        model = tiny.sogclr_model()
    with pytest.raises(ValueError, match="jit_compile=True is not available"):
        training_loop.train_loop_function(model, mirrored_strategy, jit_compile=True)


def test_fit_under_mirrored_strategy(mirrored_strategy):
    with mirrored_strategy.scope():
        model = tiny.sogclr_model(loss="sogclr")
    data = tf.data.Dataset.from_tensors(tiny.view_batch()).repeat()
    history = model.fit(data, epochs=1, steps_per_epoch=2, verbose=0).history
    assert np.isfinite(history["contrastive_loss"][0])
    for replica_table in model.loss_layer.u_table.log_u.value.values:
        np.testing.assert_array_equal(
            replica_table.numpy(), model.loss_layer.u_table.log_u.value.values[0].numpy())


def test_sgd_weight_decay_goes_through_the_loss():
    model = tiny.sogclr_model(optimizer="momentum", weight_decay=1e-3)
    logs = model.train_step(tiny.view_batch())
    assert logs["weight_decay_loss"] > 0
    lars = tiny.sogclr_model(optimizer="lars", weight_decay=1e-3)
    lars_logs = lars.train_step(tiny.view_batch())
    assert 0 < lars_logs["weight_decay_loss"] < logs["weight_decay_loss"]  # linear head only
    adamw = tiny.sogclr_model(optimizer="adamw", weight_decay=1e-3)
    assert float(adamw.train_step(tiny.view_batch())["weight_decay_loss"]) == 0.0  # decoupled


def test_local_batch_norm_statistics_agree_across_replicas(mirrored_strategy):
    with mirrored_strategy.scope():
        model = tiny.sogclr_model(global_bn=False)
    tiny.run_steps(model, mirrored_strategy, [tiny.view_batch(8, 9)], 1)
    moving = [w for w in model.weights if "moving_" in w.path]
    assert len(moving) > 10
    for weight in moving:
        copies = tiny.replica_values(weight)
        assert len(copies) == 2
        np.testing.assert_allclose(copies[1], copies[0], rtol=1e-6, err_msg=weight.path)
