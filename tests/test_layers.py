"""One harness for every Keras layer the package registers: build, call, round-trip.

Each registered layer (`keras.saving.register_keras_serializable(package="tf_sogclr")`) has a
case here: a small instance and a call on sample inputs. The harness checks that the call
gives finite outputs, that `from_config(get_config())` and Keras serialisation give a layer of
the same class and config, and that the clone, given the original's weights, computes the
same outputs. A newly registered layer without a case fails `test_every_registered_layer_has_a_case`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr import losses
from tf_sogclr import models as model_lib
from tf_sogclr.losses.u_table import UTable
from tf_sogclr.models import batch_norm, resnet
from tf_sogclr.models import text as text_lib

PACKAGE = "tf_sogclr"
_RNG = np.random.default_rng(0)
PAIR = (tf.constant(_RNG.normal(size=(6, 5)), tf.float32),
        tf.constant(_RNG.normal(size=(6, 5)), tf.float32))
INDEX = tf.constant([0, 3, 1, 6, 2, 5], tf.int32)
TEXTS = tf.constant(["a photo of a dog", "a cat", "", "never seen words"])


def _loss(layer, index=True):
    return layer(*PAIR, INDEX) if index else layer(*PAIR)


# name -> (make a small instance, call it on sample inputs)
CASES = {
    "GlobalContrastiveLoss": (
        lambda: losses.GlobalContrastiveLoss(7, temperature=0.3, gamma=0.5,
                                             gamma_schedule="cosine", gamma_decay_epochs=2,
                                             individual_temperatures=dict(
                                                 temperature_range=(0.1, 0.5), momentum=0.5)),
        _loss),
    "BimodalGlobalContrastiveLoss": (
        lambda: losses.BimodalGlobalContrastiveLoss(7, temperature=0.02), _loss),
    "NTXentLoss": (lambda: losses.NTXentLoss(temperature=0.4, normalize=False),
                   lambda layer: _loss(layer, index=False)),
    "ClipContrastiveLoss": (lambda: losses.ClipContrastiveLoss(temperature=0.05),
                            lambda layer: _loss(layer, index=False)),
    "UTable": (lambda: UTable(9), lambda layer: layer.read(INDEX)),
    "LearnableTemperature": (
        lambda: losses.LearnableTemperature(0.07, (0.02, 0.5), objective="fastclip_v3", rho=1.5),
        lambda layer: layer(PAIR[0])),
    "TemperatureTable": (
        lambda: losses.TemperatureTable(9, initial_temperature=0.2, temperature_range=(0.1, 0.5)),
        lambda layer: layer.read(INDEX)),
    "ProjectionHead": (
        lambda: model_lib.ProjectionHead("nonlinear", proj_out_dim=3, num_proj_layers=2),
        lambda layer: layer(PAIR[0], training=False)),
    "StopGradient": (lambda: resnet.StopGradient(name="cut"), lambda layer: layer(PAIR[0])),
    "BatchNormalization": (lambda: batch_norm.batch_norm_layer("norm", 0.9),
                           lambda layer: layer(PAIR[0], training=False)),
    "TextTokenizer": (
        lambda: text_lib.TextTokenizer.from_texts(["a photo of a dog", "a cat"], 16, 5),
        lambda layer: layer(TEXTS)),
    "TextEncoder": (
        lambda: text_lib.TextEncoder(16, 5, "transformer", width=8, num_layers=1, num_heads=2),
        lambda layer: layer(tf.constant([[2, 3, 4, 0, 0], [5, 0, 0, 0, 0]]), training=False)),
}


def _registered_layers():
    return {key.split(">", 1)[1]: obj for key, obj in keras.saving.get_custom_objects().items()
            if key.startswith(PACKAGE + ">") and isinstance(obj, type)
            and issubclass(obj, keras.layers.Layer)}


def test_every_registered_layer_has_a_case():
    assert set(_registered_layers()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_builds_calls_and_round_trips_its_config(name):
    make, call = CASES[name]
    layer = make()
    assert type(layer) is _registered_layers()[name]
    outputs = tf.nest.flatten(call(layer))
    assert outputs and all(np.all(np.isfinite(np.asarray(o, np.float64))) for o in outputs)
    config = layer.get_config()
    for clone in (type(layer).from_config(config),
                  keras.layers.deserialize(keras.layers.serialize(layer))):
        assert type(clone) is type(layer)
        assert clone.get_config() == config
        fresh = make()  # calls may write state (u-tables): clone and fresh step in lockstep
        call(fresh), call(clone)  # builds both
        clone.set_weights(fresh.get_weights())
        for got, want in zip(tf.nest.flatten(call(clone)), tf.nest.flatten(call(fresh))):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_stop_gradient_blocks_the_gradient_after_a_round_trip():
    layer = resnet.StopGradient(name="cut")
    clone = resnet.StopGradient.from_config(layer.get_config())
    assert clone.name == "cut"
    x = tf.constant([[1.0, 2.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(clone(x))
    assert tape.gradient(y, x) is None
