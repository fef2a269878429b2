"""Tiny models, mock batches and small configs that several test files share.

Models run on 8x8x1 images with 24 examples in the u-tables, so a step takes milliseconds:
`sogclr_model` (a ResNet-18 of width 1/16 with a linear head) and `dual_encoder` (two
convolutions and an 8-wide text encoder). `view_batch` / `pair_batch` make batches for them;
`run_steps` runs batches through the product's multi-step loop; `pretrain_config` and
`bimodal_config` describe small runs on the `small_fashion_mnist` fixture's data.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tf_sogclr import config, losses
from tf_sogclr import models as model_lib
from tf_sogclr.data import captions
from tf_sogclr.models import batch_norm, resnet
from tf_sogclr.models import text as text_lib
from tf_sogclr.training import loop as training_loop
from tf_sogclr.training import modalities, optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (8, 8, 1)
NUM_EXAMPLES = 24  # rows of the tiny models' u-tables
NUM_CLASSES = 3
CLASS_NAMES = ("cat", "dog", "car")
VOCAB = 32
LENGTH = 6


# --------------------------------------------------------------------------- image-image


def sogclr_model(loss="sogclr", global_bn=False, optimizer="lars", weight_decay=1e-4,
                 individual_temperatures=None):
    """A ResNet-18 of width 1/16 on 8x8x1 images, built and compiled (optimizer built);
    `individual_temperatures`: the SogCLR loss's `TemperatureTable` arguments, or None."""
    encoder = resnet.build_resnet(18, width_multiplier=0.0625, small_image_stem=True,
                                  global_bn=global_bn, input_shape=IMAGE_SHAPE)
    head = model_lib.ProjectionHead("nonlinear", proj_out_dim=8, num_proj_layers=2,
                                    global_bn=global_bn)
    loss_layer = (losses.GlobalContrastiveLoss(
        NUM_EXAMPLES, temperature=0.2, individual_temperatures=individual_temperatures)
                  if loss == "sogclr" else losses.NTXentLoss(temperature=0.2))
    model = model_lib.SogCLRModel(encoder, head, loss_layer, num_classes=NUM_CLASSES,
                                  weight_decay=weight_decay)
    model.compile(optimizer=optim.build_optimizer(optimizer, 0.05, weight_decay=weight_decay))
    model.build((None, *IMAGE_SHAPE))
    model.optimizer.build(model.trainable_variables)
    return model


def view_batch(batch=8, seed=0):
    """{"view1", "view2" (view1 + noise): [b, 8, 8, 1], "index": distinct in [0, 24),
    "label": [b] in [0, 3)}."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(batch, *IMAGE_SHAPE)).astype(np.float32)
    noise = 0.05 * rng.normal(size=images.shape).astype(np.float32)
    return {
        "view1": tf.constant(images),
        "view2": tf.constant(np.clip(images + noise, 0, 1)),
        "index": tf.constant(rng.choice(NUM_EXAMPLES, batch, replace=False), tf.int32),
        "label": tf.constant(rng.integers(0, NUM_CLASSES, batch), tf.int64),
    }


# --------------------------------------------------------------------------- image-text


def tokenizer():
    """A tokenizer whose vocabulary holds every template filled with every class name."""
    return text_lib.TextTokenizer.from_texts(
        [t.format(n) for n in CLASS_NAMES for t in captions.TEMPLATES], VOCAB, LENGTH,
        name="tokenizer")


def dual_encoder(loss="sogclr", learnable=False, global_bn=False, kind="transformer",
                 optimizer="lars", learning_rate=0.05, temperature=0.1, seed=0,
                 vocabulary=None, temperature_objective="isogclr",
                 learning_rate_multipliers=None):
    """A built, compiled dual encoder: two convolutions with batch norm on 8x8x1 images, an
    8-wide one-block text encoder (run.py's tests cover the ResNets)."""
    keras.utils.set_random_seed(seed)
    images = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(images)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = batch_norm.batch_norm_layer("encoder_batch_norm", global_bn=global_bn)(x)
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
        temperature_objective=temperature_objective, weight_decay=1e-4)
    model.compile(optimizer=optim.build_optimizer(
        optimizer, learning_rate, weight_decay=1e-4,
        exclude_from_weight_decay=optim.weight_decay_excludes(optimizer,
                                                              model_lib.NO_DECAY_PATTERNS),
        learning_rate_multipliers=learning_rate_multipliers))
    model.build((None, *IMAGE_SHAPE))
    model.optimizer.build(model.trainable_variables)
    return model


def pair_batch(batch=8, seed=0):
    """{"image": [b, 8, 8, 1], "tokens": template captions of random classes, "index":
    distinct in [0, 24)}."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASS_NAMES), batch)
    texts = [captions.TEMPLATES[i % 8].format(CLASS_NAMES[c]) for i, c in enumerate(labels)]
    return {"image": tf.constant(rng.uniform(size=(batch, *IMAGE_SHAPE)).astype(np.float32)),
            "tokens": tokenizer()(tf.constant(texts)),
            "index": tf.constant(rng.choice(NUM_EXAMPLES, batch, replace=False), tf.int32)}


# --------------------------------------------------------------------------- running steps


def loss_and_grads(loss_fn, z1, z2, index, wrap=None):
    """One loss step on NumPy inputs (eagerly, or through `wrap`, e.g. tf.function): loss,
    metrics and the gradients with respect to both inputs."""

    def step(z1, z2, index):
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            loss, metrics = loss_fn(z1, z2, index, return_metrics=True)
        return (loss, metrics) + tuple(tape.gradient(loss, [z1, z2]))

    step = wrap(step) if wrap else step
    return step(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32),
                tf.constant(index, tf.int32))



def run_steps(model, strategy, batches, steps_per_execution=None, jit_compile=False):
    """Runs `batches` through `training.loop.train_loop_function`, `steps_per_execution` per
    call (None: all in one); the last call's logs as NumPy values."""
    loop = training_loop.train_loop_function(model, strategy, jit_compile=jit_compile)
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([b[k] for b in batches]) for k in batches[0]})
    if strategy is not tf.distribute.get_strategy():
        dataset = strategy.experimental_distribute_dataset(dataset)
    iterator = iter(dataset)
    per_call = steps_per_execution or len(batches)
    done = 0
    while done < len(batches):
        n = min(per_call, len(batches) - done)
        logs = loop(iterator, tf.constant(n))
        done += n
    return {k: np.asarray(v) for k, v in logs.items()}


def replica_values(weight):
    """A weight's value on every replica (one entry outside a strategy)."""
    return [v.numpy() for v in getattr(weight.value, "values", [weight.value])]


def copy_weights(source, target):
    """Assigns `source`'s weights (its first replica's) to `target`'s, in order."""
    for s, t in zip(source.weights, target.weights):
        t.assign(replica_values(s)[0])


def assert_same_weights(a, b, rtol):
    """Same values, replica by replica; a one-device `b` stands for every replica."""
    for wa, wb in zip(a.weights, b.weights):
        values_a, values_b = replica_values(wa), replica_values(wb)
        if len(values_b) == 1:
            values_b = values_b * len(values_a)
        for value_a, value_b in zip(values_a, values_b):
            np.testing.assert_allclose(value_a, value_b, rtol=rtol, atol=rtol, err_msg=wa.path)


# --------------------------------------------------------------------------- run configs


def pretrain_config(data_dir, model_dir, **run):
    """ResNet-18 of width 1/16 on 28x28x1 Fashion-MNIST, batch 16: a few seconds a step at
    most."""
    run = {"model_dir": str(model_dir), "train_batch_size": 16, "train_epochs": 1,
           "train_steps": 4, "checkpoint_steps": 2, "keep_checkpoint_max": 2, "seed": 1, **run}
    return config.PretrainConfig(
        data=config.DataConfig(dataset="fashion_mnist_debian", data_dir=data_dir,
                               image_size=28, shuffle_buffer=64),
        model=config.ModelConfig(width_multiplier=0.0625, proj_out_dim=8),
        optimizer=config.OptimizerConfig(learning_rate=0.1, warmup_epochs=0.0),
        run=config.RunConfig(**run),
    )


def bimodal_config(data_dir, model_dir, **run):
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
