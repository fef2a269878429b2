"""Tests of bimodal SogCLR: tokenizer, text encoders, losses, dual encoder, data, export, run.py."""

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_sogclr import config, data, losses
from tf_sogclr import export
from tf_sogclr import models as model_lib
from tf_sogclr.data import augment
from tf_sogclr.data import captions
from tf_sogclr.evaluation import zero_shot
from tf_sogclr.models import resnet
from tf_sogclr.models import text as text_lib
from tf_sogclr.training import checkpoints
from tf_sogclr.training import lifecycle
from tf_sogclr.training import loop as training_loop
from tf_sogclr.training import modalities
from tf_sogclr.training import optim

IMAGE_SHAPE = (8, 8, 1)
NUM_EXAMPLES = 24
LENGTH = 6
VOCAB = 32
CLASS_NAMES = ("cat", "dog", "car")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tokenizer():
    return text_lib.TextTokenizer.from_texts(
        [t.format(n) for n in CLASS_NAMES for t in captions.TEMPLATES], VOCAB, LENGTH,
        name="tokenizer")


def tiny_model(loss="sogclr", learnable=False, global_bn=False, kind="transformer",
               optimizer="lars", learning_rate=0.05, temperature=0.1, seed=0, vocabulary=None):
    """A built, compiled dual encoder: two convolutions with batch norm on 8x8x1 images, an
    8-wide one-block text encoder (run.py's test covers the ResNets)."""
    keras.utils.set_random_seed(seed)
    images = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(images)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = resnet.batch_norm_layer("encoder_batch_norm", global_bn=global_bn)(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    image_encoder = keras.Model(images, x, name="image_encoder")
    text_encoder = text_lib.TextEncoder(VOCAB, LENGTH, kind, width=8, num_layers=1,
                                        num_heads=2)

    def head():
        return model_lib.ProjectionHead("nonlinear", proj_out_dim=8, num_proj_layers=2,
                                        global_bn=global_bn)

    model = model_lib.DualEncoderModel(
        image_encoder, text_encoder, head(), head(),
        modalities.build_bimodal_loss(loss, NUM_EXAMPLES, temperature=temperature),
        tokenizer=tokenizer() if vocabulary is None else text_lib.TextTokenizer(
            VOCAB, LENGTH, vocabulary=vocabulary, name="tokenizer"),
        learnable_temperature=learnable, temperature_rho=1.0,
        weight_decay=1e-4)
    model.compile(optimizer=optim.build_optimizer(
        optimizer, learning_rate, weight_decay=1e-4,
        exclude_from_weight_decay=optim.DEFAULT_EXCLUDES + model_lib.NO_DECAY_PATTERNS))
    model.build((None, *IMAGE_SHAPE))
    model.optimizer.build(model.trainable_variables)
    return model


def mock_batch(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASS_NAMES), batch)
    texts = [captions.TEMPLATES[i % 8].format(CLASS_NAMES[c]) for i, c in enumerate(labels)]
    return {"image": tf.constant(rng.uniform(size=(batch, *IMAGE_SHAPE)).astype(np.float32)),
            "tokens": tokenizer()(tf.constant(texts)),
            "index": tf.constant(rng.choice(NUM_EXAMPLES, batch, replace=False), tf.int32)}


def replica_values(weight):
    return [v.numpy() for v in getattr(weight.value, "values", [weight.value])]


def run_steps(model, strategy, batches):
    loop = training_loop.train_loop_function(model, strategy)
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([b[k] for b in batches]) for k in batches[0]})
    if strategy is not tf.distribute.get_strategy():
        dataset = strategy.experimental_distribute_dataset(dataset)
    return {k: float(v) for k, v in loop(iter(dataset), tf.constant(len(batches))).items()}


# --------------------------------------------------------------------------- text


def test_tokenizer_vocabulary_travels_in_checkpoints(tmp_path):
    source = tokenizer()
    texts = tf.constant(["A photo of a DOG!", "an unseen word", ""])
    ids = source(texts).numpy()
    assert ids.shape == (3, LENGTH) and ids.dtype == np.int32
    assert ids[0, 4] > 1 and ids[1, 1] == 1 and not ids[2].any()  # known, unknown, padding
    assert source.vocabulary[:2] == ["", "[UNK]"] and "dog" in source.vocabulary
    path = tf.train.Checkpoint(tokenizer=source).save(str(tmp_path / "ckpt"))
    assert modalities.vocabulary_from_checkpoint(path) == source.vocabulary
    other = text_lib.TextTokenizer(VOCAB, LENGTH, vocabulary=["dog", "zebra"])
    assert not np.array_equal(other(texts).numpy(), ids)
    tf.train.Checkpoint(tokenizer=other).restore(path).assert_consumed()
    np.testing.assert_array_equal(other(texts).numpy(), ids)
    with pytest.raises(ValueError, match="tf.string"):
        source(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="vocab_size"):
        text_lib.TextTokenizer(vocab_size=2)
    with pytest.raises(ValueError, match="no tokens"):
        text_lib.TextTokenizer.from_texts(["...", "!"], VOCAB, LENGTH)


@pytest.mark.parametrize("kind", text_lib.TEXT_ENCODERS)
def test_text_encoder_ignores_padding_and_compiles(kind):
    encoder = text_lib.TextEncoder(VOCAB, LENGTH, kind, width=8, num_layers=2, num_heads=2)
    tokens = tf.constant([[5, 6, 0, 0, 0, 0], [5, 6, 7, 0, 0, 0]], tf.int32)
    features = encoder(tokens)
    assert features.shape == (2, 8) and features.dtype == tf.float32
    compiled = tf.function(lambda t: encoder(t), jit_compile=True)
    np.testing.assert_allclose(compiled(tokens), features, atol=1e-5)
    # The embedding at the padding id does not matter: padded positions are masked.
    encoder.token_embedding.embeddings.assign(tf.tensor_scatter_nd_update(
        encoder.token_embedding.embeddings, [[0]], tf.ones((1, 8)) * 7.0))
    np.testing.assert_allclose(encoder(tokens), features, atol=1e-5)
    with pytest.raises(ValueError, match="text_encoder"):
        text_lib.TextEncoder(VOCAB, LENGTH, "rnn")
    with pytest.raises(ValueError, match="divisible"):
        text_lib.TextEncoder(VOCAB, LENGTH, "transformer", width=6, num_heads=4)


# --------------------------------------------------------------------------- losses


def test_clip_loss_is_symmetric_infonce():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(2, 6, 5)).astype(np.float32)
    loss, metrics = losses.ClipContrastiveLoss(temperature=0.05)(
        image, text, return_metrics=True)
    e = image / np.linalg.norm(image, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = e @ t.T / 0.05

    def cross_entropy(z):
        z = z - z.max(1, keepdims=True)
        return -(np.diag(z) - np.log(np.exp(z).sum(1)))

    np.testing.assert_allclose(loss, np.mean(cross_entropy(logits) + cross_entropy(logits.T)),
                               rtol=1e-5)
    assert 0.0 <= metrics["contrastive_accuracy"] <= 1.0 and metrics["input_ok"] == 1.0


def test_sogclr_temperature_gradient_is_the_objective_derivative_on_a_first_visit():
    """With a fresh table u = g, so the estimate is exactly dF/dtau of the global objective."""
    rng = np.random.default_rng(1)
    image, text = (tf.math.l2_normalize(rng.normal(size=(6, 4)).astype(np.float32), -1)
                   for _ in range(2))
    loss_layer = losses.BimodalGlobalContrastiveLoss(NUM_EXAMPLES, temperature=0.5)
    _, metrics = loss_layer(image, text, tf.range(6), return_metrics=True,
                            temperature=tf.constant(0.07))
    tau = tf.Variable(0.07)
    with tf.GradientTape() as tape:
        sims = tf.matmul(image, text, transpose_b=True)
        off = ~tf.eye(6, dtype=tf.bool)

        def log_g(s):
            return tf.reduce_logsumexp(tf.where(off, s / tau, -np.inf), 1) - tf.math.log(5.0)

        objective = tf.reduce_mean(tau * (log_g(sims) + log_g(tf.transpose(sims)))
                                   - 2.0 * tf.linalg.diag_part(sims))
    np.testing.assert_allclose(metrics["temperature_gradient"], tape.gradient(objective, tau),
                               rtol=1e-4)
    np.testing.assert_allclose(metrics["objective"], objective, rtol=1e-5)


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("loss", ["sogclr", "simclr"])
def test_mirrored_two_replicas_equal_one_device(mirrored_strategy, loss):
    """Two steps, learnable tau, synchronised batch norm: same losses, weights, tau, tables."""
    batches = [mock_batch(8, seed) for seed in (1, 2)]
    kind = "transformer" if loss == "sogclr" else "mlp"
    single = tiny_model(loss, learnable=True, global_bn=True, kind=kind, learning_rate=0.01)
    with mirrored_strategy.scope():
        mirrored = tiny_model(loss, learnable=True, global_bn=True, kind=kind,
                              learning_rate=0.01, seed=5)
    for s, m in zip(single.weights, mirrored.weights):
        m.assign(s.numpy())
    single_logs = run_steps(single, tf.distribute.get_strategy(), batches)
    mirrored_logs = run_steps(mirrored, mirrored_strategy, batches)
    for name in ("contrastive_loss", "objective", "temperature"):
        np.testing.assert_allclose(mirrored_logs[name], single_logs[name], rtol=1e-4,
                                   err_msg=name)
    assert single_logs["temperature"] != pytest.approx(0.1, abs=1e-7)  # tau was learnt
    for a, b in zip(mirrored.weights, single.weights):
        for value in replica_values(a):
            np.testing.assert_allclose(value, b.numpy(), rtol=2e-4, atol=2e-4, err_msg=b.path)
    if loss == "sogclr":
        visited = np.unique(np.concatenate([b["index"].numpy() for b in batches]))
        for table in ("image_u_table", "text_u_table"):
            single_table = getattr(single.loss_layer, table).log_u.numpy()
            assert np.count_nonzero(np.exp(single_table)) == visited.size
            for value in replica_values(getattr(mirrored.loss_layer, table).log_u):
                np.testing.assert_allclose(np.exp(value), np.exp(single_table), rtol=1e-4)


def _three_class_images(count, rng):
    """8x8x1 images whose class (0, 1, 2) is a dark, mid or bright square on noise."""
    labels = np.arange(count) % 3
    images = rng.uniform(0.0, 0.3, size=(count, *IMAGE_SHAPE)).astype(np.float32)
    images[:, 2:6, 2:6, 0] += (0.35 * labels)[:, None, None]
    return images, labels


def test_zero_shot_beats_chance_after_short_training():
    rng = np.random.default_rng(0)
    model = tiny_model("sogclr", kind="mlp", optimizer="adam", learning_rate=1e-2,
                       temperature=0.1)
    # 24 pairs seen 40 times (80 steps of 12), with fresh noise and a random template each time.
    images, labels = _three_class_images(40 * NUM_EXAMPLES, rng)
    prompts = [[t.format(name) for t in captions.TEMPLATES] for name in CLASS_NAMES]
    texts = [prompts[c][rng.integers(8)] for c in labels]
    data = tf.data.Dataset.from_tensor_slices({
        "image": images, "tokens": model.tokenizer(tf.constant(texts)),
        "index": np.tile(np.arange(NUM_EXAMPLES, dtype=np.int32), 40)}).batch(12)
    history = model.fit(data, epochs=1, shuffle=False, verbose=0).history
    assert history["bad_steps"][-1] == 0
    test_images, test_labels = _three_class_images(60, rng)
    classifier = zero_shot.class_embeddings(model.encode_text, prompts)
    accuracy = zero_shot.zero_shot_top1(model.encode_image(test_images), test_labels, classifier)
    assert accuracy >= 0.7, accuracy  # chance: 1/3
    scores = model.evaluate(data.take(2), return_dict=True, verbose=0)
    assert 0.0 <= scores["eval_image_to_text_top1"] <= 1.0


def test_recall_counts_ties_in_the_images_favour():
    image = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    recall = zero_shot.image_to_text_recall(image, texts, [0, 1, 2, 2], ks=(1, 2))
    # Image 2's own texts score 0.8 and 0.6: its best (text 2) ties text 1 -> rank 0.
    assert recall == {1: 1.0, 2: 1.0}
    recall = zero_shot.image_to_text_recall(image, texts, [0, 1, 1, 2], ks=(1, 2, 3))
    assert recall == {1: 2 / 3, 2: 2 / 3, 3: 1.0}  # image 2's only text (0.6): rank 2.
    with pytest.raises(ValueError, match="no caption"):
        zero_shot.image_to_text_recall(image, texts, [0, 0, 1, 1])


def test_checkpoint_restores_weights_tables_and_vocabulary(tmp_path):
    model = tiny_model("sogclr", learnable=True)
    run_steps(model, tf.distribute.get_strategy(), [mock_batch(8, 3)])
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
        str(tmp_path / "ckpt"))
    assert modalities.vocabulary_from_checkpoint(path) == model.tokenizer.vocabulary
    restored = tiny_model("sogclr", learnable=True, seed=9, vocabulary=["zebra", "dog"])
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(
        path).assert_existing_objects_matched()
    texts = tf.constant(["a photo of a dog.", "an image of a car."])
    np.testing.assert_array_equal(restored.tokenizer(texts), model.tokenizer(texts))
    np.testing.assert_allclose(restored.encode_text(texts), model.encode_text(texts), atol=1e-6)
    np.testing.assert_array_equal(restored.loss_layer.text_u_table.log_u.numpy(),
                                  model.loss_layer.text_u_table.log_u.numpy())
    assert float(restored.temperature()) == float(model.temperature())


def test_export_and_reload_give_the_same_embeddings(tmp_path):
    model = tiny_model("simclr", learnable=True)
    base = str(tmp_path / "saved_model")
    path = export.export_dual_encoder_for_step(model, base, 3, IMAGE_SHAPE, keep_max=1)
    assert path == f"{base}/3"
    export.export_dual_encoder_for_step(model, base, 4, IMAGE_SHAPE, keep_max=1)
    assert os.listdir(base) == ["4"]
    loaded = export.LoadedDualEncoder(f"{base}/4")
    texts = ["a photo of a dog.", "A DOG", "never seen words", ""]
    np.testing.assert_allclose(loaded.encode_text(texts), model.encode_text(tf.constant(texts)),
                               atol=1e-5)
    images = np.random.default_rng(2).uniform(size=(3, *IMAGE_SHAPE)).astype(np.float32)
    np.testing.assert_allclose(loaded.encode_image(images), model.encode_image(images),
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(loaded.encode_image(images), axis=1), 1.0,
                               rtol=1e-5)
    assert loaded.temperature == pytest.approx(float(model.temperature()))
    raw = tf.saved_model.load(f"{base}/4")
    assert sorted(raw.signatures) == ["encode_image", "encode_text"]
    out = raw.signatures["encode_text"](texts=tf.constant(texts))
    np.testing.assert_allclose(out["embedding"], loaded.encode_text(texts), atol=1e-6)
    model.tokenizer = None
    with pytest.raises(ValueError, match="tokenizer"):
        export.export_dual_encoder(model, str(tmp_path / "x"), IMAGE_SHAPE)
    with pytest.raises(ValueError, match="not a complete SavedModel"):
        export.LoadedDualEncoder(base)


# --------------------------------------------------------------------------- data


def test_fashion_mnist_pairs_have_stable_indices_and_template_captions(small_fashion_mnist):
    info = data.describe("fashion_mnist_debian", "train", small_fashion_mnist)
    captions.check_pairs(info)
    assert captions.templated(info) and info.num_examples == 128 and info.num_classes == 10
    vocabulary_source = captions.training_captions(info)
    assert len(vocabulary_source) == 10 * len(captions.TEMPLATES)
    tok = text_lib.TextTokenizer.from_texts(vocabulary_source, 64, 8)
    from tf_sogclr.data import augment

    augmenter = augment.SimCLRAugment(28, channels=1, color_distort=False)
    batch = next(iter(captions.pair_dataset(info, 32, tok, augmenter,
                                            data_dir=small_fashion_mnist, seed=3)))
    assert batch["image"].shape == (32, 28, 28, 1) and batch["tokens"].shape == (32, 8)
    index = batch["index"].numpy()
    assert len(set(index)) == 32 and index.min() >= 0 and index.max() < 128
    assert (batch["tokens"].numpy() > 1).sum(axis=1).min() >= 4  # no unknown words, no blanks
    test_info = data.describe("fashion_mnist_debian", "test", small_fashion_mnist)
    first = next(iter(captions.eval_pairs(test_info, 16, 28, data_dir=small_fashion_mnist)))
    np.testing.assert_array_equal(first["index"], np.arange(16))
    names = captions.FASHION_MNIST_CLASS_NAMES
    expected = [captions.TEMPLATES[i % 8].format(names[c]).encode()
                for i, c in enumerate(first["label"].numpy())]
    assert [c[0] for c in first["captions"].numpy().tolist()] == expected


class MockCaptions(tfds.core.GeneratorBasedBuilder):
    """A caption dataset like coco_captions: images of varying size, 0-3 captions each."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(10)}

    def _generate_examples(self, count):
        rng = np.random.default_rng(0)
        for i in range(count):
            size = int(rng.integers(10, 20))
            yield i, {"image": rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8),
                      "captions": [{"text": f"picture {i} number {j}"} for j in range(i % 4)]}


def test_caption_datasets_give_one_index_per_image(tmp_path):
    data_dir = str(tmp_path / "tfds")
    MockCaptions(data_dir=data_dir).download_and_prepare()
    info = data.describe("mock_captions", "train", data_dir)
    captions.check_pairs(info)
    assert captions.caption_feature(info) == "captions/text" and captions.class_names(info) is None
    tok = text_lib.TextTokenizer.from_texts(captions.training_captions(info, data_dir), 32, 4)
    assert {"picture", "number", "3"} <= set(tok.vocabulary)
    augmenter = augment.SimCLRAugment(8, channels=3, color_distort=False)
    # deterministic: else parallel maps may emit an element of the second epoch first.
    batch = next(iter(captions.pair_dataset(info, 10, tok, augmenter, data_dir=data_dir,
                                            seed=0, deterministic=True)))
    assert sorted(batch["index"].numpy()) == list(range(10))
    first = next(iter(captions.eval_pairs(info, 10, 8, data_dir=data_dir)))
    assert first["image"].shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(first["index"], np.arange(10))  # index order
    own = [[c.decode() for c in cs] for cs in first["captions"].to_list()]
    assert sorted(len(c) for c in own) == sorted(i % 4 for i in range(10))
    for i, tokens in zip(batch["index"].numpy(), batch["tokens"].numpy()):
        # Each image is paired with one of its own captions ("picture k number j"), or a
        # blank caption when it has none.
        if own[i]:
            assert tokens[1] == tok.vocabulary.index(own[i][0].split()[1])
        else:
            assert not tokens.any()


# --------------------------------------------------------------------------- bad input


def test_bad_configs_name_the_flag(small_fashion_mnist):
    cfg = config.BimodalConfig()
    with pytest.raises(ValueError, match="--text_encoder must be one of transformer, mlp"):
        dataclasses.replace(cfg, text=config.TextConfig(text_encoder="rnn")).validate()
    with pytest.raises(ValueError, match="--text_width must be divisible by the 4"):
        dataclasses.replace(cfg, text=config.TextConfig(text_width=30)).validate()
    with pytest.raises(ValueError, match=r"--temperature must be in \(0.005, 1.0\)"):
        dataclasses.replace(cfg, loss=config.LossConfig(temperature=2.0),
                            text=config.TextConfig(learnable_temperature=True)).validate()
    with pytest.raises(ValueError, match="split='validation' must be one split"):
        data.describe("fashion_mnist_debian", "validation", small_fashion_mnist)
    with pytest.raises(ValueError, match="hold one"):
        captions.check_pairs(data.describe("fashion_mnist_debian", "train", small_fashion_mnist),
                             templates=("no placeholder",))
    with pytest.raises(ValueError, match="index must be in"):
        tiny_model("sogclr").loss_layer(tf.ones((2, 8)), tf.ones((2, 8)),
                                         tf.constant([0, NUM_EXAMPLES]))


# --------------------------------------------------------------------------- reliability


def tiny_bimodal_config(data_dir, model_dir, **run):
    """ResNet-18 of width 1/16 on 8x8 images, an MLP text encoder, batch 16, checkpoints
    every 2 steps."""
    run = {"model_dir": str(model_dir), "train_batch_size": 16, "train_steps": 4,
           "checkpoint_steps": 2, "steps_per_execution": 1, "seed": 1, **run}
    return config.BimodalConfig(
        data=config.DataConfig(data_dir=data_dir, image_size=8),
        model=config.ModelConfig(width_multiplier=0.0625, proj_out_dim=8),
        optimizer=config.OptimizerConfig(learning_rate=0.1, warmup_epochs=0.0),
        run=config.RunConfig(lineareval_while_pretraining=False, **run),
        text=config.TextConfig(text_encoder="mlp", text_width=16, vocab_size=64,
                                max_text_length=8))


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
        cfg = tiny_bimodal_config(small_fashion_mnist, model_dir, train_steps=6)
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
    cfg = tiny_bimodal_config(small_fashion_mnist, stop_dir)
    with pytest.raises(FloatingPointError) as raised:
        lifecycle.pretrain(cfg, verbose=0, dataset_fn=pair_batches(cfg, nan_batch=2))
    for part in ("Non-finite embeddings", "at step 3",
                 f"The last good checkpoint is {stop_dir / 'ckpt-2'}"):
        assert part in str(raised.value)
    assert checkpoints.latest_checkpoint(str(stop_dir)) == str(stop_dir / "ckpt-2")


# --------------------------------------------------------------------------- run.py


def test_run_py_bimodal_trains_evaluates_and_exports(small_fashion_mnist, tmp_path):
    model_dir = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "run.py"), "--modality=bimodal",
         f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", "--train_steps=3",
         "--checkpoint_steps=2", "--train_batch_size=16", "--eval_batch_size=64",
         "--width_multiplier=0.0625", "--proj_out_dim=8", "--text_encoder=mlp",
         "--text_width=16", "--vocab_size=64", "--max_text_length=8",
         "--learnable_temperature"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("Summary:") + len("Summary:"):])
    assert summary["step"] == 3 and summary["checkpoint"].endswith("ckpt-3")
    assert summary["train"]["bad_steps"] == 0
    assert 0.005 < summary["train"]["temperature"] < 1.0
    scores = summary["eval"]
    for name in ("zero_shot_top1", "image_to_text_recall@1", "image_to_text_recall@5"):
        assert 0.0 <= scores[name] <= 1.0, name
    assert scores["image_to_text_recall@5"] >= scores["image_to_text_recall@1"]
    assert scores["num_images"] == 128
    vocabulary = modalities.vocabulary_from_checkpoint(summary["checkpoint"])
    assert vocabulary[:2] == ["", "[UNK]"] and "sneaker" in vocabulary
    assert summary["export"] == os.path.join(model_dir, "saved_model", "3")
    loaded = export.LoadedDualEncoder(summary["export"])
    assert loaded.encode_text(["a photo of a bag."]).shape == (1, 8)
