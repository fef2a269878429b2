"""Tests of tf_sogclr.training.finetune: fine-tuning a tiny pretrained encoder with Keras `fit`."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tiny
from tf_sogclr import config, data, export
from tf_sogclr.training import finetune, finetune_model
from tf_sogclr.training import lifecycle
from tf_sogclr.training import modalities


@pytest.fixture(scope="module")
def pretrained(small_fashion_mnist, tmp_path_factory):
    """(config, PretrainResult) of 4 tiny pretraining steps: checkpoints ckpt-2 and ckpt-4."""
    cfg = tiny.pretrain_config(small_fashion_mnist, tmp_path_factory.mktemp("pretrain") / "run",
                      train_steps=4, checkpoint_steps=2)
    result = lifecycle.pretrain(cfg, verbose=0)
    assert result.checkpoint.endswith("ckpt-4")
    return cfg, result


@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory):
    """(base_dir, path) of the pretrained model exported by export.export_for_step at step 4."""
    base_dir = str(tmp_path_factory.mktemp("exports") / "saved_model")
    return base_dir, export.export_for_step(pretrained[1].model, base_dir, 4, (28, 28, 1))


@pytest.fixture(scope="module")
def images(pretrained):
    """8 eval images [8, 28, 28, 1] in [0, 1]."""
    cfg = pretrained[0]
    batch = next(iter(data.eval_dataset(cfg.data.dataset, cfg.data.eval_split, 8,
                                        cfg.data.image_size, data_dir=cfg.data.data_dir)))
    return batch["image"].numpy()


def tiny_finetune(finetune_dir, **kwargs):
    return config.FinetuneConfig(**{"train_epochs": 1, "train_batch_size": 16,
                                      "finetune_dir": str(finetune_dir), **kwargs})


def layer_weights(model):
    """{"layer/variable": array} of every weight of a Keras model's layers."""
    return {f"{layer.name}/{v.name}": v.numpy() for layer in model.layers for v in layer.weights}


def restored_encoder_weights(cfg, checkpoint):
    """The encoder weights in `checkpoint`, restored independently of tf_sogclr.training.finetune."""
    info = data.describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    model = modalities.build_sogclr_model(cfg, info, num_replicas=1)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
    return layer_weights(model.encoder), model


def assert_same(got, want):
    assert sorted(got) == sorted(want) and got
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


class Probe(keras.callbacks.Callback):
    """Records the classifier as fit starts (after any restore) and the backup at epoch ends."""

    def __init__(self, images, backup_dir):
        super().__init__()
        self.images, self.backup_dir, self.backup_files = images, backup_dir, []

    def on_train_begin(self, logs=None):
        encoder = self.model.get_layer(finetune_model.ENCODER_NAME)
        self.encoder = ({v.path: v.numpy() for v in encoder.weights}
                        if isinstance(encoder, keras.layers.TFSMLayer) else layer_weights(encoder))
        self.features = encoder(self.images)
        if isinstance(self.features, dict):
            self.features = self.features["features"]
        self.layers = layer_weights(self.model)
        self.logits = self.model(self.images, training=False).numpy()

    def on_epoch_end(self, epoch, logs=None):
        self.backup_files.append(sorted(os.listdir(self.backup_dir)))


def assert_scores(result):
    assert 0.0 <= result.eval_top1 <= result.eval_top5 <= 1.0
    assert np.isfinite(result.eval_logs["loss"])


def test_frozen_encoder_from_model_dir_zero_init_and_resume(pretrained, images, tmp_path):
    cfg, pre = pretrained
    fc = tiny_finetune(tmp_path / "ft", fine_tune_after_block=4)
    probe = Probe(images, str(tmp_path / "ft" / "backup"))
    result = finetune.finetune(cfg, fc, verbose=0, callbacks=[probe])

    assert result.source == ("checkpoint", pre.checkpoint)
    assert_same(probe.encoder, layer_weights(pre.model.encoder))  # Starts pretrained.
    np.testing.assert_array_equal(probe.logits, 0.0)  # zero_init_logits_layer.
    assert probe.backup_files == [["latest.weights.h5", "training_metadata.json"]]
    # fine_tune_after_block=4: all encoder weights, batch-norm statistics too, stay as they were.
    assert_same(layer_weights(result.model.get_layer("encoder")), probe.encoder)
    assert np.any(result.model.get_layer("head_supervised").kernel.numpy() != 0.0)
    assert result.epochs == 1 and len(result.history["loss"]) == 1
    assert_scores(result)
    assert os.path.isfile(result.weights_path)
    assert tf.io.gfile.glob(os.path.join(result.log_dir, "train", "events.out.tfevents.*"))

    # A re-run resumes from the backup: nothing left to train, the same classifier evaluated.
    again = finetune.finetune(cfg, fc, verbose=0)
    assert again.history == {} and again.epochs == 1
    assert int(again.model.optimizer.iterations.numpy()) == 128 // 16  # Optimiser state too.
    assert_same(layer_weights(again.model), layer_weights(result.model))
    assert again.eval_top1 == pytest.approx(result.eval_top1)
    # Other settings would mix two fine-tunes in one directory.
    with pytest.raises(ValueError, match="--finetune_dir=.*other settings.*optimizer"):
        finetune.finetune(cfg, dataclasses.replace(fc, optimizer="adam"), verbose=0)


def test_explicit_checkpoint_with_projection_layer(pretrained, images, tmp_path):
    cfg, pre = pretrained
    ckpt2 = os.path.join(cfg.run.model_dir, "ckpt-2")
    fc = tiny_finetune(tmp_path / "ft", checkpoint=ckpt2, ft_proj_selector=1,
                       zero_init_logits_layer=False, optimizer="lars", weight_decay=1e-4)
    probe = Probe(images, str(tmp_path / "ft" / "backup"))
    result = finetune.finetune(cfg, fc, verbose=0, callbacks=[probe])

    assert result.source == ("checkpoint", ckpt2)
    want, source = restored_encoder_weights(cfg, ckpt2)
    assert_same(probe.encoder, want)
    latest = layer_weights(pre.model.encoder)
    assert any(not np.array_equal(latest[k], want[k]) for k in want)  # ckpt-2 is not ckpt-4.
    dense = source.projection_head.dense_0.kernel.numpy()
    np.testing.assert_array_equal(probe.layers["projection_dense_0/kernel"], dense)
    assert "projection_dense_1/kernel" not in probe.layers
    assert result.model.get_layer("head_supervised").input.shape[-1] == dense.shape[-1]
    assert np.any(probe.logits != 0.0)
    # fine_tune_after_block=-1: the encoder itself is fine-tuned.
    after = layer_weights(result.model.get_layer("encoder"))
    assert any(not np.array_equal(after[k], probe.encoder[k]) for k in after)
    assert_scores(result)


def test_saved_model_source(pretrained, exported, images, tmp_path):
    cfg, pre = pretrained
    base_dir, path = exported
    probe = Probe(images, str(tmp_path / "ft" / "backup"))
    fc = tiny_finetune(tmp_path / "ft", checkpoint=base_dir, optimizer="momentum")
    result = finetune.finetune(cfg, fc, verbose=0, callbacks=[probe])

    assert result.source == ("saved_model", path)
    np.testing.assert_allclose(probe.features, pre.model.encoder(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(probe.logits, 0.0)
    encoder = result.model.get_layer("encoder")
    assert any(not np.array_equal(v.numpy(), probe.encoder[v.path])
               for v in encoder.trainable_weights)
    assert_scores(result)


def test_from_scratch_is_the_same_classifier_with_random_weights(pretrained, images, tmp_path):
    """--checkpoint=none: the supervised baseline through the same path."""
    cfg, pre = pretrained
    probe = Probe(images, str(tmp_path / "ft" / "backup"))
    result = finetune.finetune(cfg, tiny_finetune(tmp_path / "ft", checkpoint="none"),
                               verbose=0, callbacks=[probe])
    assert result.source == ("scratch", "none")
    pretrained_weights = layer_weights(pre.model.encoder)
    assert sorted(probe.encoder) == sorted(pretrained_weights)  # The same architecture,
    kernels = [k for k in pretrained_weights if k.endswith("kernel")]
    assert kernels and all(not np.array_equal(probe.encoder[k], pretrained_weights[k])
                           for k in kernels)  # none of its pretrained weights,
    after = layer_weights(result.model.get_layer("encoder"))
    # and fit trains it (zero-initialised residual branches start moving after a few steps).
    assert any(not np.array_equal(after[k], probe.encoder[k]) for k in kernels)
    assert sorted(layer.name for layer in result.model.layers) == [
        "encoder", "head_supervised", "images"]
    assert_scores(result)
    for kwargs, message in (({"ft_proj_selector": 1}, r"--ft_proj_selector must be 0 with "
                                                      r"--checkpoint=none"),
                            ({"fine_tune_after_block": 2}, r"--fine_tune_after_block must be "
                                                           r"-1 \(train all\) with "
                                                           r"--checkpoint=none")):
        with pytest.raises(ValueError, match=message):
            finetune.check_finetune(cfg, tiny_finetune(tmp_path / "other", checkpoint="none",
                                                       **kwargs), tf.distribute.get_strategy())


def test_fine_tunes_under_mirrored_strategy(pretrained, images, tmp_path, mirrored_strategy):
    cfg, pre = pretrained
    probe = Probe(images, str(tmp_path / "ft" / "backup"))
    fc = tiny_finetune(tmp_path / "ft", fine_tune_after_block=3)  # Trains block group 4.
    result = finetune.finetune(cfg, fc, strategy=mirrored_strategy, verbose=0, callbacks=[probe])
    assert_same(probe.encoder, layer_weights(pre.model.encoder))
    encoder = result.model.get_layer("encoder")
    for layer, changes in (("block_group4_block1_conv2", True),
                           ("block_group4_block1_batch_norm2", True),
                           ("block_group3_block1_conv2", False)):
        for variable in encoder.get_layer(layer).weights:
            replicas = [v.numpy() for v in variable.value.values]
            assert len(replicas) == 2
            np.testing.assert_array_equal(replicas[0], replicas[1])  # In sync.
            start = probe.encoder[f"{layer}/{variable.name}"]
            assert (not np.array_equal(replicas[0], start)) == changes, variable.path
    assert len(result.history["loss"]) == 1
    assert_scores(result)


def _saved_model_without_features(path):
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.serve = tf.function(lambda images: {"embedding": module.scale * images},
                               input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


@pytest.mark.parametrize("case, message", [
    ("no_checkpoint", r"--train_mode=finetune needs --checkpoint or a pretraining checkpoint "
                      r"in --model_dir=.*empty_run"),
    ("bad_path", r"--checkpoint=.*nowhere is neither a checkpoint"),
    ("selector", r"--ft_proj_selector must be in \[0, 2\]"),
    ("saved_model_selector", r"--ft_proj_selector must be 0 with a SavedModel"),
    ("saved_model_block", r"--fine_tune_after_block must be -1 \(train all\) or 4"),
    ("no_features", r"returns \['embedding'\], not 'features'"),
    ("batch", r"--train_batch_size=256 is larger than split"),
    ("orphan_weights", r"--finetune_dir=.* already holds model.weights.h5"),
])
def test_bad_requests_fail_before_writing(pretrained, exported, tmp_path, case, message):
    cfg, _ = pretrained
    finetune_dir = tmp_path / "ft"
    kwargs = {
        "bad_path": {"checkpoint": str(tmp_path / "nowhere")},
        "selector": {"ft_proj_selector": 3},
        "saved_model_selector": {"checkpoint": exported[1], "ft_proj_selector": 1},
        "saved_model_block": {"checkpoint": exported[1], "fine_tune_after_block": 2},
        "batch": {"train_batch_size": 256},
    }.get(case, {})
    if case == "no_checkpoint":
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(
            cfg.run, model_dir=str(tmp_path / "empty_run")))
    elif case == "no_features":
        kwargs = {"checkpoint": _saved_model_without_features(str(tmp_path / "other_export"))}
    elif case == "orphan_weights":
        finetune_dir.mkdir()
        (finetune_dir / "model.weights.h5").write_bytes(b"earlier")

    def listing():
        return {d: sorted(os.listdir(d)) for d in (tmp_path, cfg.run.model_dir)
                if os.path.isdir(d)}

    before = listing()
    with pytest.raises(ValueError, match=message):
        finetune.finetune(cfg, tiny_finetune(finetune_dir, **kwargs), verbose=0)
    assert listing() == before  # No model_dir or finetune_dir made, nothing added to them.
    if case == "orphan_weights":
        assert (finetune_dir / "model.weights.h5").read_bytes() == b"earlier"


def test_checkpoint_of_another_architecture_is_refused(pretrained, tmp_path):
    cfg, _ = pretrained
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, resnet_depth=34))
    with pytest.raises(ValueError, match=r"--checkpoint=.*ckpt-4 does not hold .*depth=34"):
        finetune.finetune(cfg, tiny_finetune(tmp_path / "ft"), verbose=0)
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "sgd", r"--optimizer must be one of lars, momentum, adam"),
    ("fine_tune_after_block", 5, r"--fine_tune_after_block must be an integer in \[-1, 4\]"),
    ("ft_proj_selector", -1, r"--ft_proj_selector must be an integer >= 0"),
    ("zero_init_logits_layer", 1, r"--zero_init_logits_layer must be True or False"),
    ("train_epochs", 0, r"--train_epochs must be an integer >= 1"),
    ("learning_rate_scaling", "log", r"--learning_rate_scaling must be one of linear, sqrt"),
])
def test_config_validation_names_the_flag(field, value, message):
    with pytest.raises(ValueError, match=message):
        config.FinetuneConfig(**{field: value}).validate()


def test_model_config_values_apply_unless_overridden(pretrained):
    cfg, _ = pretrained
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, fine_tune_after_block=2, ft_proj_selector=1))
    assert finetune_model.fine_tune_after_block(cfg, config.FinetuneConfig()) == 2
    assert finetune_model.ft_proj_selector(cfg, config.FinetuneConfig()) == 1
    assert finetune_model.fine_tune_after_block(
        cfg, config.FinetuneConfig(fine_tune_after_block=-1)) == -1
    assert finetune_model.ft_proj_selector(cfg, config.FinetuneConfig(ft_proj_selector=0)) == 0
