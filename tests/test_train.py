"""Tests of tf_sogclr.training.lifecycle.pretrain (both modalities) on a small slice of
Fashion-MNIST."""

import dataclasses
import logging
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

import tiny
from tf_sogclr import config, data, distribute
from tf_sogclr.data import augment, captions
from tf_sogclr.training import checkpoints, lifecycle
from tf_sogclr.training import loop as training_loop
from tf_sogclr.training import modalities


def _state(model):
    """Every weight of the model, then of its optimiser (step and slots), in a fixed order."""
    return [(w.path, w.numpy()) for w in model.weights + model.optimizer.variables]


def test_pretrain_checkpoints_and_resumes_exactly(small_fashion_mnist, tmp_path):
    cfg = tiny.pretrain_config(small_fashion_mnist, tmp_path / "run", steps_per_execution=2)
    first = lifecycle.pretrain(cfg, verbose=0)
    assert first.step == 4
    assert np.isfinite(first.logs["contrastive_loss"]) and first.logs["bad_steps"] == 0
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-4")
    assert len(tf.io.gfile.glob(str(tmp_path / "run" / "ckpt-*.index"))) == 2
    events = tf.io.gfile.glob(os.path.join(first.summary_dir, "events.out.tfevents.*"))
    assert events
    # The run's description is a TensorBoard text summary too.
    texts = [tf.make_ndarray(v.tensor).item().decode()
             for path in events for event in tf.compat.v1.train.summary_iterator(path)
             for v in event.summary.value if v.tag == "run"]
    assert texts == [distribute.format_run(first.distribution)]
    assert first.distribution["per_replica_batch_size"] == cfg.run.train_batch_size
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
    cfg = tiny.pretrain_config(small_fashion_mnist, tmp_path / "run", train_steps=2)
    result = lifecycle.pretrain(cfg, strategy=mirrored_strategy, verbose=0)
    assert result.step == 2 and np.isfinite(result.logs["contrastive_loss"])
    tables = [v.numpy() for v in result.model.loss_layer.u_table.log_u.value.values]
    np.testing.assert_array_equal(tables[0], tables[1])


def test_pretrain_simclr_with_jit_compile(small_fashion_mnist, tmp_path):
    cfg = tiny.pretrain_config(small_fashion_mnist, tmp_path / "run", train_steps=2, jit_compile=True)
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
    cfg = tiny.pretrain_config(small_fashion_mnist, tmp_path / "run", **run)
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


# --------------------------------------------------------------------------- bimodal


def pair_batches(cfg, nan_batch=None, sigterm_batch=None):
    """A `dataset_fn`: the caption pipeline, with a NaN image in batch `nan_batch` and a
    SIGTERM to this process when batch `sigterm_batch` is made (both counted from 0)."""
    info = data.describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    tokenizer = modalities.make_tokenizer(cfg, info)

    def sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        return np.int64(0)

    def fn(context):
        augmenter = augment.SimCLRAugment(8, channels=1, color_distort=False)
        ds = captions.pair_dataset(info, 16, tokenizer, augmenter, data_dir=cfg.data.data_dir,
                                   seed=0, input_context=context)

        def mark(i, batch):
            if nan_batch is not None:
                first = tf.equal(tf.range(16), 0)[:, None, None, None]
                batch["image"] = tf.where(tf.equal(i, nan_batch) & first, np.nan,
                                          batch["image"])
            if sigterm_batch is not None:
                sent = tf.cond(tf.equal(i, sigterm_batch),
                               lambda: tf.numpy_function(sigterm, [], tf.int64),
                               lambda: tf.constant(0, tf.int64))
                with tf.control_dependencies([sent]):
                    batch["index"] = tf.identity(batch["index"])
            return batch

        return ds.enumerate().map(mark)
    return fn


def test_bimodal_pretraining_is_preempted_skips_or_stops_like_unimodal(small_fashion_mnist,
                                                                        tmp_path, caplog):
    # Shares `training_loop.run_schedule` with unimodal pretraining (tests/test_reliability.py).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # Never kill the test run.
    try:
        model_dir = tmp_path / "run"
        cfg = tiny.bimodal_config(small_fashion_mnist, model_dir, train_steps=6)
        preempted = lifecycle.pretrain(cfg, verbose=0,
                                             dataset_fn=pair_batches(cfg, sigterm_batch=1))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert preempted.preempted and 1 <= preempted.step < 6
    assert preempted.checkpoint == str(model_dir / f"ckpt-{preempted.step}")

    # Resumed with "skip": the first batch it reads has a NaN image, and is skipped.
    skip = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, nonfinite_policy="skip"))
    with caplog.at_level(logging.WARNING, logger="tf_sogclr.training.loop"):
        result = lifecycle.pretrain(skip, verbose=0,
                                          dataset_fn=pair_batches(cfg, nan_batch=0))
    assert "Non-finite embeddings, contrastive_loss" in caplog.text
    assert f"at step {preempted.step + 1}" in caplog.text
    assert not result.preempted and result.step == 6
    assert result.logs["nonfinite_steps"] == 1 and np.isfinite(result.logs["contrastive_loss"])
    for weight in result.model.weights:
        assert np.all(np.isfinite(weight.numpy())), weight.path

    # "stop" (the default): the bad step 3 is not applied nor checkpointed.
    stop_dir = tmp_path / "stop"
    cfg = tiny.bimodal_config(small_fashion_mnist, stop_dir)
    with pytest.raises(FloatingPointError) as raised:
        lifecycle.pretrain(cfg, verbose=0, dataset_fn=pair_batches(cfg, nan_batch=2))
    for part in ("Non-finite embeddings", "at step 3",
                 f"The last good checkpoint is {stop_dir / 'ckpt-2'}"):
        assert part in str(raised.value)
    assert checkpoints.latest_checkpoint(str(stop_dir)) == str(stop_dir / "ckpt-2")
