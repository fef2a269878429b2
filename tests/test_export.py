"""Tests of tf_sogclr.export: SavedModel round trips, Keras fine-tuning, rotation, atomicity.

The two `test_readme_*` functions are the README snippets, verbatim.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import precision
import tiny
from tf_sogclr import export, losses
from tf_sogclr import models as model_lib
from tf_sogclr.evaluation import knn
from tf_sogclr.models import batch_norm, resnet

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 3
FEATURE_DIM = resnet.feature_dim(18, 0.0625)


def tiny_model(num_classes=NUM_CLASSES, global_bn=False, seed=0):
    """A built SogCLRModel, ResNet-18 of width 1/16 on 8x8x1 (tests/test_model.py's, no optimizer).

    Random batch norm parameters and statistics make inference and training mode differ.
    """
    encoder = resnet.build_resnet(18, width_multiplier=0.0625, small_image_stem=True,
                                  global_bn=global_bn, input_shape=IMAGE_SHAPE)
    return _built(encoder, num_classes, global_bn, seed)


def small_encoder(seed=0, global_bn=False):
    """A bare encoder, 8x8x1 images -> conv, batch norm, average pool -> 4 features (fast)."""
    images = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.GlorotUniform(seed))(
        images)
    x = batch_norm.batch_norm_layer("encoder_batch_norm", global_bn=global_bn)(x)
    return keras.Model(images, keras.layers.GlobalAveragePooling2D()(x))


def small_model(num_classes=NUM_CLASSES, global_bn=False, seed=0):
    """A built SogCLRModel on `small_encoder`, with random batch norm statistics."""
    return _built(small_encoder(seed, global_bn), num_classes, global_bn, seed)


def _built(encoder, num_classes, global_bn, seed):
    head = model_lib.ProjectionHead("nonlinear", proj_out_dim=8, num_proj_layers=2,
                                    global_bn=global_bn)
    model = model_lib.SogCLRModel(encoder, head, losses.NTXentLoss(temperature=0.2),
                                  num_classes=num_classes)
    model.build((None, *IMAGE_SHAPE))
    rng = np.random.default_rng(seed)
    for weight in model.weights:  # Kernels keep their initial values (activations ~ 1).
        name = weight.path.split("/")[-1]
        if name in ("gamma", "moving_variance"):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
        elif name in ("beta", "moving_mean", "bias"):
            weight.assign(rng.normal(scale=0.2, size=weight.shape).astype(np.float32))
    return model


def random_images(batch=6, seed=1):
    return np.random.default_rng(seed).uniform(size=(batch, *IMAGE_SHAPE)).astype(np.float32)


def assert_same_outputs(outputs, expected, atol=1e-5, compute_dtype="float32"):
    """float32 outputs equal to `expected`: to `atol` when computed in float32, else to a few
    machine epsilons of `compute_dtype` (tests/precision.py)."""
    assert sorted(outputs) == sorted(expected)
    for key, value in expected.items():
        assert outputs[key].dtype == tf.float32, key
        if compute_dtype == "float32":
            np.testing.assert_allclose(outputs[key], value, rtol=atol, atol=atol, err_msg=key)
        else:
            precision.assert_close_in(compute_dtype, outputs[key], value, err_msg=key)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, path) of one tiny SogCLRModel exported once for the whole module."""
    model = tiny_model()
    path = str(tmp_path_factory.mktemp("export") / "saved_model")
    assert export.export_saved_model(model, path, IMAGE_SHAPE) == path
    return model, path


@pytest.fixture
def export_path(exported):
    return exported[1]


@pytest.fixture
def dataset():
    """A tiny labelled dataset: (images [4, 8, 8, 1] in [0, 1], labels [4]) batches."""
    rng = np.random.default_rng(3)
    images = rng.uniform(size=(8, *IMAGE_SHAPE)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 10, 8))).batch(4)


def readme_snippet(name):
    """The ```python block after `<!-- snippet: name -->` in README.md."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "README.md")) as f:
        text = f.read()
    marker = f"<!-- snippet: {name} -->"
    assert marker in text, marker
    block = text[text.index(marker):].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


def test_readme_load_and_call(export_path):
    exec(readme_snippet("load_and_call"), {"export_path": export_path})


def test_readme_fine_tune_with_tfsm_layer(export_path, dataset):
    exec(readme_snippet("fine_tune_with_tfsm_layer"),
         {"export_path": export_path, "dataset": dataset})


def test_readme_fine_tune_with_tf_hub(export_path, dataset):
    exec(readme_snippet("fine_tune_with_tf_hub"),
         {"export_path": export_path, "dataset": dataset})


def test_reload_gives_the_in_memory_outputs(exported):
    model, path = exported
    images = random_images()
    expected = {k: v.numpy() for k, v in model(images, training=False).items()}
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["images"]
    assert signature.structured_input_signature[1]["images"].shape.as_list() == [None, 8, 8, 1]
    assert_same_outputs(signature(images=tf.constant(images)), expected)
    assert_same_outputs(loaded.serve(images), expected)
    np.testing.assert_allclose(loaded.features(images), expected["features"], atol=1e-5)
    assert loaded.features(images).shape == (6, FEATURE_DIM)
    # load_encoder's endpoints keep the variables alive (tf.saved_model.load(path).serve
    # alone does not: the loaded object would be collected first).
    np.testing.assert_allclose(export.load_encoder(path).features(images), expected["features"],
                               atol=1e-5)
    # Variables: all of them, trainable ones still trainable, and they are the ones used.
    assert len(loaded.trainable_variables) == len(model.encoder.trainable_variables) + len(
        model.projection_head.trainable_variables) + len(model.linear_head.trainable_variables)
    assert all(v.trainable for v in loaded.trainable_variables)
    assert not any(v.trainable for v in loaded.non_trainable_variables)
    assert {id(v) for v in signature.trainable_variables} == {
        id(v) for v in loaded.trainable_variables}
    # Nothing but the export was written next to it.
    assert os.listdir(os.path.dirname(path)) == ["saved_model"]


def test_training_endpoint_uses_and_updates_batch_statistics(exported, dataset):
    model, path = exported
    encoder = keras.layers.TFSMLayer(path, call_endpoint="serve",
                                     call_training_endpoint="serve_training")
    images = keras.Input((8, 8, 1))
    classifier = keras.Model(images, keras.layers.Dense(10)(encoder(images)["features"]))
    classifier.compile(optimizer=keras.optimizers.SGD(0.1),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    moving = [w for w in encoder.non_trainable_weights if "moving_mean" in w.name]
    assert len(moving) == len([w for w in model.weights if "moving_mean" in w.path])
    before = [w.numpy() for w in moving + encoder.trainable_weights]
    classifier.fit(dataset, epochs=1, verbose=0)
    after = [w.numpy() for w in moving + encoder.trainable_weights]
    assert not any(np.array_equal(b, a) for b, a in zip(before[:len(moving)], after))
    assert any(not np.array_equal(b, a) for b, a in zip(before[len(moving):],
                                                        after[len(moving):]))
    # Training mode (batch statistics) differs from inference mode.
    batch = random_images()
    assert not np.allclose(encoder(batch, training=True)["features"],
                           encoder(batch)["features"], atol=1e-3)


def test_model_without_linear_head(tmp_path):
    model = small_model(num_classes=None, seed=4)
    images = random_images()
    path = export.export_saved_model(model, str(tmp_path / "no_head"), IMAGE_SHAPE)
    expected = {k: v.numpy() for k, v in model(images).items()}
    assert sorted(expected) == ["features", "projection"]
    loaded = export.load_encoder(path)
    assert_same_outputs(loaded.signatures["serving_default"](images=tf.constant(images)),
                        expected)
    # Training mode: batch statistics (summed in another order, hence the tolerance).
    assert_same_outputs(loaded(images, training=True), {
        k: v.numpy() for k, v in model(images, training=True).items()}, atol=1e-4)


def test_heads_can_be_left_out(tmp_path):
    model = small_model(seed=7)
    images = random_images()
    features = model(images)["features"].numpy()
    path = export.export_saved_model(model, str(tmp_path / "features_only"), IMAGE_SHAPE,
                                     include_projection=False, include_logits=False)
    assert_same_outputs(export.load_encoder(path)(images), {"features": features})
    path = export.export_saved_model(model.encoder, str(tmp_path / "encoder"), IMAGE_SHAPE)
    assert_same_outputs(export.load_encoder(path)(images), {"features": features})
    # The loaded features feed k-NN evaluation.
    data = tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(6)}).batch(4)
    normalised, labels = knn.extract_features(export.load_encoder(path).features, data)
    np.testing.assert_allclose(
        normalised, features / np.linalg.norm(features, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(labels, np.arange(6))


def test_export_from_a_model_built_under_mirrored_strategy(mirrored_strategy, tmp_path):
    with mirrored_strategy.scope():
        model = small_model(global_bn=True, seed=5)
    images = random_images()
    expected = {k: v.numpy() for k, v in model(images).items()}
    path = export.export_saved_model(model, str(tmp_path / "mirrored"), IMAGE_SHAPE)
    loaded = export.load_encoder(path)
    assert_same_outputs(loaded.signatures["serving_default"](images=tf.constant(images)),
                        expected)
    assert all(isinstance(v, tf.Variable) and not hasattr(v, "values")
               for v in loaded.variables)
    with pytest.raises(ValueError, match="cross-replica context"):
        mirrored_strategy.run(
            lambda: export.export_saved_model(model, str(tmp_path / "replica"), IMAGE_SHAPE))
    assert not os.path.exists(tmp_path / "replica")


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_float16", "float16"),
                                                   ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_outputs_are_float32(tmp_path, policy, compute_dtype):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = small_model(seed=6)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    images = random_images()
    outputs = model(images)
    # The linear head computes in float32 (its logits feed losses and metrics).
    assert {k: v.dtype for k, v in outputs.items()} == {
        "features": compute_dtype, "projection": compute_dtype, "logits": "float32"}
    expected = {k: tf.cast(v, tf.float32).numpy() for k, v in outputs.items()}
    path = export.export_saved_model(model, str(tmp_path / "mixed"), IMAGE_SHAPE)
    loaded = export.load_encoder(path)
    # The export's graph may take other kernels than Keras's eager calls (with AMX, oneDNN
    # runs them natively in the low precision): equal to a few units in its last place.
    assert_same_outputs(loaded(images), expected, compute_dtype=compute_dtype)
    assert loaded.features(images).dtype == tf.float32


def test_export_for_step_keeps_the_newest(tmp_path):
    base = str(tmp_path / "saved_model")
    encoder = small_encoder()
    tf.io.gfile.makedirs(base + "/notes")
    for step in (9, 2, 100, 10):
        path = export.export_for_step(encoder, base, step, IMAGE_SHAPE, keep_max=2)
        assert path == f"{base}/{step}"
    assert sorted(os.listdir(base)) == ["10", "100", "notes"]
    assert export.latest_export(base) == f"{base}/100"
    # An existing step is replaced; a step tensor works; overwrite=False refuses.
    export.export_for_step(encoder, base, tf.Variable(100, dtype=tf.int64), IMAGE_SHAPE)
    with pytest.raises(ValueError, match="overwrite"):
        export.export_for_step(encoder, base, 100, IMAGE_SHAPE, overwrite=False)
    assert sorted(os.listdir(base)) == ["10", "100", "notes"]
    assert export.latest_export(str(tmp_path / "missing")) is None


def test_leftovers_of_a_killed_export_are_ignored(tmp_path, monkeypatch):
    base = str(tmp_path / "saved_model")
    encoder = small_encoder()
    export.export_for_step(encoder, base, 5, IMAGE_SHAPE)
    # Killed while writing step 7 (temporary directory left behind), and a step 8 whose
    # copy on an object store stopped before the variables index.
    os.makedirs(f"{base}/7.tmp-123-abcdef01/variables")
    open(f"{base}/7.tmp-123-abcdef01/saved_model.pb", "wb").close()
    os.makedirs(f"{base}/8")
    open(f"{base}/8/saved_model.pb", "wb").close()
    assert export.latest_export(base) == f"{base}/5"
    with pytest.raises(ValueError, match="not a complete SavedModel"):
        export.load_encoder(f"{base}/8")
    # The next exports work, and the leftovers do not count towards keep_max.
    export.export_for_step(encoder, base, 7, IMAGE_SHAPE, keep_max=3)
    assert export.latest_export(base) == f"{base}/7"
    images = random_images()
    np.testing.assert_allclose(export.load_encoder(f"{base}/7").features(images),
                               encoder(images), atol=1e-6)

    # A failure while writing removes the temporary directory and keeps the old export.
    def failing_save(obj, export_dir, **kwargs):
        tf.io.gfile.makedirs(export_dir)
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_for_step(small_encoder(seed=1), base, 7, IMAGE_SHAPE)
    assert sorted(os.listdir(base)) == ["5", "7", "7.tmp-123-abcdef01", "8"]
    np.testing.assert_allclose(export.load_encoder(f"{base}/7").features(images),
                               encoder(images), atol=1e-6)


def test_overwrite_is_refused_unless_asked(tmp_path):
    path = str(tmp_path / "export")
    first, second = small_encoder(seed=1), small_encoder(seed=2)
    os.makedirs(path)  # An empty directory is fine.
    export.export_saved_model(first, path, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="overwrite=True"):
        export.export_saved_model(second, path, IMAGE_SHAPE)
    images = random_images()
    np.testing.assert_allclose(export.load_encoder(path).features(images), first(images),
                               atol=1e-6)
    export.export_saved_model(second, path, IMAGE_SHAPE, overwrite=True)
    np.testing.assert_allclose(export.load_encoder(path).features(images), second(images),
                               atol=1e-6)
    assert os.listdir(tmp_path) == ["export"]  # No temporary or moved-aside directory left.


def test_bad_arguments_are_rejected(tmp_path):
    encoder = small_encoder()
    path = str(tmp_path / "x")
    for kwargs, argument in [(dict(image_shape=(8, 8)), "image_shape"),
                             (dict(image_shape=(8, 8, 0)), "image_shape"),
                             (dict(image_shape=(8, None, None)), "image_shape"),
                             (dict(include_projection=1), "include_projection"),
                             (dict(export_dir=""), "export_dir")]:
        with pytest.raises(ValueError, match=argument):
            export.export_saved_model(**{"model": encoder, "export_dir": path,
                                         "image_shape": IMAGE_SHAPE, **kwargs})
    with pytest.raises(ValueError, match="keep_max"):
        export.export_for_step(encoder, path, 1, IMAGE_SHAPE, keep_max=0)
    with pytest.raises(ValueError, match="step"):
        export.export_for_step(encoder, path, -1, IMAGE_SHAPE)
    unbuilt = model_lib.SogCLRModel(small_encoder(), model_lib.ProjectionHead("linear", 4),
                                    losses.NTXentLoss())
    with pytest.raises(ValueError, match="must be built"):
        export.export_saved_model(unbuilt, path, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="model must be"):
        export.export_saved_model(lambda x: x, path, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="not a complete SavedModel"):
        export.load_encoder(str(tmp_path))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- dual encoder


def test_export_and_reload_give_the_same_embeddings(tmp_path):
    model = tiny.dual_encoder("simclr", learnable=True)
    base = str(tmp_path / "saved_model")
    path = export.export_dual_encoder_for_step(model, base, 3, tiny.IMAGE_SHAPE, keep_max=1)
    assert path == f"{base}/3"
    export.export_dual_encoder_for_step(model, base, 4, tiny.IMAGE_SHAPE, keep_max=1)
    assert os.listdir(base) == ["4"]
    loaded = export.LoadedDualEncoder(f"{base}/4")
    texts = ["a photo of a dog.", "A DOG", "never seen words", ""]
    np.testing.assert_allclose(loaded.encode_text(texts), model.encode_text(tf.constant(texts)),
                               atol=1e-5)
    images = np.random.default_rng(2).uniform(size=(3, *tiny.IMAGE_SHAPE)).astype(np.float32)
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
        export.export_dual_encoder(model, str(tmp_path / "x"), tiny.IMAGE_SHAPE)
    with pytest.raises(ValueError, match="not a complete SavedModel"):
        export.LoadedDualEncoder(base)


def test_tf_hub_fine_tunes_the_export_as_a_reusable_saved_model(exported, dataset):
    """SimCLR TF2's way: `hub.KerasLayer(path, trainable=True)` in a tf-keras model."""
    import tensorflow_hub as hub  # test-only: requirements-test.txt
    import tf_keras

    model, path = exported
    images = random_images()
    loaded = tf.saved_model.load(path)
    # The Reusable SavedModel API: a callable root taking `training`, variable lists,
    # regularization_losses; the root returns the features.
    np.testing.assert_allclose(loaded(images, training=False),
                               model.encoder(images, training=False), atol=1e-5)
    assert not np.allclose(loaded(images, training=True), loaded(images, training=False),
                           atol=1e-3)
    assert list(loaded.regularization_losses) == []
    layer = hub.KerasLayer(path, trainable=True)
    classifier = tf_keras.Sequential([tf_keras.Input(IMAGE_SHAPE), layer,
                                      tf_keras.layers.Dense(10)])
    classifier.compile(optimizer=tf_keras.optimizers.SGD(0.1),
                       loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    encoder_kernels = [v for v in layer.trainable_weights if "block_group" in v.name]
    assert encoder_kernels
    # The root runs the encoder alone; the heads' variables are listed but get no gradient.
    moving = [v for v in layer.non_trainable_weights
              if "moving_mean" in v.name and "projection_head" not in v.name]
    assert len(moving) == len([w for w in model.encoder.weights if "moving_mean" in w.path])
    before = [v.numpy() for v in encoder_kernels + moving]
    classifier.fit(dataset, epochs=1, verbose=0)
    after = [v.numpy() for v in encoder_kernels + moving]
    changed = [not np.array_equal(b, a) for b, a in zip(before, after)]
    assert all(changed[len(encoder_kernels):])  # batch norm ran in training mode
    assert any(changed[:len(encoder_kernels)])  # and fit trained the encoder's weights


def test_tf_hub_fine_tunes_each_dual_encoder_tower(tmp_path):
    """Each tower is a Reusable SavedModel object: `hub.KerasLayer(tower, trainable=True)`."""
    import tensorflow_hub as hub  # test-only: requirements-test.txt
    import tf_keras

    model = tiny.dual_encoder("sogclr")
    path = export.export_dual_encoder(model, str(tmp_path / "dual"), tiny.IMAGE_SHAPE)
    loaded = hub.load(path)
    images = np.random.default_rng(3).uniform(size=(6, *tiny.IMAGE_SHAPE)).astype(np.float32)
    texts = tf.constant(["a photo of a dog.", "a cat", "A DOG", "never seen words", "", "cat"])
    labels = np.array([0, 1, 0, 2, 2, 1])
    towers = [(export.IMAGE_TOWER, images, model.encode_image(images), tf.float32,
               tiny.IMAGE_SHAPE, [model.image_encoder, model.image_head]),
              (export.TEXT_TOWER, texts, model.encode_text(texts), tf.string, (),
               [model.text_encoder, model.text_head])]
    for name, inputs, embeddings, dtype, shape, parts in towers:
        tower = getattr(loaded, name)
        np.testing.assert_allclose(tower(inputs, training=False), embeddings, atol=1e-5,
                                   err_msg=name)
        assert list(tower.regularization_losses) == []
        layer = hub.KerasLayer(tower, trainable=True)
        classifier = tf_keras.Sequential([tf_keras.Input(shape, dtype=dtype), layer,
                                          tf_keras.layers.Dense(3)])
        classifier.compile(optimizer=tf_keras.optimizers.SGD(0.5),
                           loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # The tower's own variables, and only those, are trained.
        assert len(layer.trainable_weights) == sum(len(p.trainable_weights) for p in parts) > 0
        before = [v.numpy() for v in layer.trainable_weights]
        classifier.fit(inputs, labels, batch_size=6, epochs=2, verbose=0)
        changed = [not np.array_equal(b, v.numpy())
                   for b, v in zip(before, layer.trainable_weights)]
        assert sum(changed) > len(changed) // 2, (name, changed)
