"""Tests of tf_sogclr.training.lifecycle.pretrain on a small slice of Fashion-MNIST."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr import config
from tf_sogclr.training import lifecycle
from tf_sogclr.training import loop as training_loop


def tiny_config(data_dir, model_dir, **run):
    """ResNet-18 of width 1/16 on 28x28x1, batch 16: a few seconds a step at most."""
    run = {"model_dir": str(model_dir), "train_batch_size": 16, "train_epochs": 1,
           "train_steps": 4, "checkpoint_steps": 2, "keep_checkpoint_max": 2, "seed": 1, **run}
    return config.PretrainConfig(
        data=config.DataConfig(dataset="fashion_mnist_debian", data_dir=data_dir,
                               image_size=28, shuffle_buffer=64),
        model=config.ModelConfig(width_multiplier=0.0625, proj_out_dim=8),
        optimizer=config.OptimizerConfig(learning_rate=0.1, warmup_epochs=0.0),
        run=config.RunConfig(**run),
    )


def _state(model):
    """Every weight of the model, then of its optimiser (step and slots), in a fixed order."""
    return [(w.path, w.numpy()) for w in model.weights + model.optimizer.variables]


def test_pretrain_checkpoints_and_resumes_exactly(small_fashion_mnist, tmp_path):
    cfg = tiny_config(small_fashion_mnist, tmp_path / "run", steps_per_execution=2)
    first = lifecycle.pretrain(cfg, verbose=0)
    assert first.step == 4
    assert np.isfinite(first.logs["contrastive_loss"]) and first.logs["bad_steps"] == 0
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-4")
    assert len(tf.io.gfile.glob(str(tmp_path / "run" / "ckpt-*.index"))) == 2
    assert tf.io.gfile.glob(os.path.join(first.summary_dir, "events.out.tfevents.*"))
    table = first.model.loss_layer.estimates().numpy()
    assert 0 < np.count_nonzero(table) <= 4 * 16

    # A fresh run on the same model_dir restores everything exactly and trains no more.
    again = lifecycle.pretrain(cfg, verbose=0)
    assert again.step == 4
    before, after = _state(first.model), _state(again.model)
    assert len(before) == len(after) > 100
    for (path, want), (_, got) in zip(before, after):
        np.testing.assert_array_equal(got, want, err_msg=path)

    # Asking for more steps continues from step 4.
    longer = lifecycle.pretrain(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, train_steps=6)),
                            verbose=0)
    assert longer.step == 6 and int(longer.model.optimizer.iterations.numpy()) == 6
    assert np.count_nonzero(longer.model.loss_layer.estimates()) >= np.count_nonzero(table)


def test_pretrain_mirrored_with_global_bn(small_fashion_mnist, tmp_path, mirrored_strategy):
    cfg = tiny_config(small_fashion_mnist, tmp_path / "run", train_steps=2)
    result = lifecycle.pretrain(cfg, strategy=mirrored_strategy, verbose=0)
    assert result.step == 2 and np.isfinite(result.logs["contrastive_loss"])
    tables = [v.numpy() for v in result.model.loss_layer.u_table.log_u.value.values]
    np.testing.assert_array_equal(tables[0], tables[1])


def test_pretrain_simclr_with_jit_compile(small_fashion_mnist, tmp_path):
    cfg = tiny_config(small_fashion_mnist, tmp_path / "run", train_steps=2, jit_compile=True)
    cfg = dataclasses.replace(cfg, loss=config.LossConfig(loss="simclr"))
    result = lifecycle.pretrain(cfg, verbose=0)
    assert result.step == 2 and np.isfinite(result.logs["contrastive_loss"])
    assert "gamma" not in result.logs


@pytest.mark.parametrize("run, message", [
    (dict(train_batch_size=15), "divisible by the 2 replicas"),
    (dict(train_batch_size=256), "larger than split"),
    (dict(jit_compile=True), "jit_compile=True is not available"),
])
def test_bad_runs_fail_before_writing(small_fashion_mnist, tmp_path, mirrored_strategy, run, message):
    cfg = tiny_config(small_fashion_mnist, tmp_path / "run", **run)
    with pytest.raises(ValueError, match=message):
        lifecycle.pretrain(cfg, strategy=mirrored_strategy, verbose=0)
    assert not (tmp_path / "run").exists()


def test_schedule_stops_at_epoch_checkpoint_and_execution_boundaries():
    schedule = training_loop.Schedule(steps_per_epoch=10, total_steps=25, checkpoint_every=4)
    assert schedule.next_stop(0, 100) == 4
    assert schedule.next_stop(8, 100) == 10
    assert schedule.next_stop(21, 2) == 23
    assert schedule.next_stop(24, 100) == 25
    assert schedule.checkpoint_due(8) and schedule.checkpoint_due(25)
    assert not schedule.checkpoint_due(10)
