"""Tests for tf_sogclr.models.resnet: layout, stems, freezing, init, arguments, global BN, XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr.models import resnet

TINY = 0.0625  # base width 4.


def _images(batch, size, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(batch, size, size, channels)).astype("float32")


def _layer_names(model, contains):
    return [layer.name for layer in model.layers if contains in layer.name]


def _tiny_resnet18(**kwargs):
    kwargs.setdefault("input_shape", (16, 16, 3))
    return resnet.build_resnet(18, TINY, small_image_stem=True, **kwargs)


# --- layout and shapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, width, expected",
    [
        (18, 1.0, 512),
        (34, 1.0, 512),
        (50, 1.0, 2048),
        (101, 2.0, 4096),
        (152, 1.0, 2048),
        (18, 0.25, 128),
        (50, 0.25, 512),
        (34, 1e-4, 1),  # channel counts never drop below 1.
        (50, 1e-4, 4),
    ],
)
def test_feature_dim(depth, width, expected):
    assert resnet.feature_dim(depth, width) == expected


@pytest.mark.parametrize(
    "depth, bottleneck, blocks",
    [
        (18, False, (2, 2, 2, 2)),
        (34, False, (3, 4, 6, 3)),
        (50, True, (3, 4, 6, 3)),
        (101, True, (3, 4, 23, 3)),
        (152, True, (3, 8, 36, 3)),
    ],
)
def test_layout_and_output_shape(depth, bottleneck, blocks):
    assert depth in resnet.RESNET_DEPTHS
    model = resnet.build_resnet(depth, TINY, input_shape=(32, 32, 3))
    dim = resnet.feature_dim(depth, TINY)
    assert model.output.shape == (None, dim)
    for group, num_blocks in enumerate(blocks, start=1):
        assert len(_layer_names(model, f"block_group{group}_")) > 0
        adds = _layer_names(model, f"block_group{group}_block")
        assert {n.split("_")[2] for n in adds} == {f"block{b}" for b in range(num_blocks)}
        # Convs per block: 3 in a bottleneck, 2 in a basic block.
        convs = [
            n
            for n in _layer_names(model, f"block_group{group}_block1_conv")
            if not n.endswith("padding")
        ]
        assert len(convs) == (3 if bottleneck else 2)
    # A projection only where stride or channels change: the first block of each group,
    # except group 1 of basic-block nets (64 -> 64 channels at stride 1).
    projections = _layer_names(model, "projection_conv")
    expected_groups = (1, 2, 3, 4) if bottleneck else (2, 3, 4)
    assert projections == [f"block_group{g}_block0_projection_conv" for g in expected_groups]
    out = model(_images(2, 32))
    assert out.shape == (2, dim) and out.dtype == tf.float32


def test_channel_widths_follow_width_multiplier():
    model = resnet.build_resnet(50, 0.25, input_shape=(32, 32, 3))
    assert model.get_layer("stem_conv").filters == 16
    assert model.get_layer("block_group1_block0_conv1").filters == 16
    assert model.get_layer("block_group1_block0_conv3").filters == 64
    assert model.get_layer("block_group4_block2_conv3").filters == 512


def test_small_stem_keeps_resolution_standard_stem_divides_by_four():
    small = resnet.build_resnet(18, TINY, small_image_stem=True, input_shape=(32, 32, 3))
    standard = resnet.build_resnet(18, TINY, input_shape=(64, 64, 3))
    assert "stem_max_pool" not in [layer.name for layer in small.layers]
    assert small.get_layer("stem_conv").kernel_size == (3, 3)
    assert small.get_layer("stem_conv").strides == (1, 1)
    assert standard.get_layer("stem_conv").kernel_size == (7, 7)
    assert standard.get_layer("stem_max_pool").output.shape[1:3] == (16, 16)
    for group, (s_small, s_standard) in enumerate([(32, 16), (16, 8), (8, 4), (4, 2)], 1):
        assert small.get_layer(f"block_group{group}_block1_relu").output.shape[1:3] == (
            s_small,
            s_small,
        )
        assert standard.get_layer(f"block_group{group}_block1_relu").output.shape[
            1:3
        ] == (s_standard, s_standard)


def test_strided_convs_use_fixed_symmetric_padding():
    model = resnet.build_resnet(18, TINY, input_shape=(None, None, 3))
    stem_pad = model.get_layer("stem_conv_padding")
    assert stem_pad.padding == ((3, 3), (3, 3))
    assert model.get_layer("stem_conv").padding == "valid"
    assert model.get_layer("block_group2_block0_conv1_padding").padding == ((1, 1), (1, 1))
    # Numerically: output pixel (0, 0) of the stem conv sees input rows/cols -3..3.
    sub = keras.Model(model.input, model.get_layer("stem_conv").output)
    kernel = model.get_layer("stem_conv").kernel
    for size in (32, 33):  # same alignment for even and odd sizes.
        x = _images(1, size)
        padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
        expected = tf.nn.conv2d(padded, kernel, strides=2, padding="VALID")
        np.testing.assert_allclose(sub(x), expected, rtol=1e-5, atol=1e-5)


def test_grayscale_input():
    model = resnet.build_resnet(18, TINY, small_image_stem=True, input_shape=(28, 28, 1))
    assert model.get_layer("stem_conv").kernel.shape == (3, 3, 1, 4)
    out = model(_images(2, 28, channels=1), training=True)
    assert out.shape == (2, resnet.feature_dim(18, TINY))
    assert np.all(np.isfinite(out))


def test_default_input_shape_accepts_any_rgb_size():
    model = resnet.build_resnet(18, TINY, small_image_stem=True)
    assert model.input.shape == (None, None, None, 3)
    assert model(_images(2, 12)).shape == model(_images(2, 20)).shape == (2, 32)


def test_output_is_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _tiny_resnet18()
        assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
        out = model(_images(2, 16), training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert out.dtype == tf.float32


# --- initialisation ----------------------------------------------------------------------


@pytest.mark.parametrize("depth, last_bn", [(18, "batch_norm2"), (50, "batch_norm3")])
def test_last_batch_norm_of_each_block_has_zero_gamma(depth, last_bn):
    model = resnet.build_resnet(depth, TINY, batch_norm_decay=0.97, input_shape=(32, 32, 3))
    batch_norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    zero = [l.name for l in batch_norms if not np.any(l.gamma.numpy())]
    num_blocks = len(_layer_names(model, "_add"))
    assert len(zero) == num_blocks
    assert all(name.endswith(last_bn) and "projection" not in name for name in zero)
    for layer in batch_norms:
        assert "batch_norm" in layer.name
        assert layer.momentum == 0.97 and layer.epsilon == 1e-5 and not layer.synchronized
        if layer.name not in zero:
            np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert all("conv" in l.name and not l.use_bias and len(l.weights) == 1 for l in convs)


# --- fine_tune_after_block ---------------------------------------------------------------

# Trainable variables (kernels, gammas, betas) of a ResNet-18: stem 3, group 1 12, groups 2-4
# 15 each (with the projection).
_TRAINABLE_COUNTS = {-1: 60, 0: 57, 1: 45, 2: 30, 3: 15, 4: 0}


@pytest.mark.parametrize("fine_tune_after_block", [-1, 0, 1, 2, 3, 4])
def test_fine_tune_after_block_freezes_stem_and_groups(fine_tune_after_block):
    model = _tiny_resnet18(fine_tune_after_block=fine_tune_after_block)

    def frozen(path):
        if path.startswith("stem_"):
            return fine_tune_after_block >= 0
        return int(path[len("block_group")]) <= fine_tune_after_block

    trainable = {v.path for v in model.trainable_variables}
    assert len(trainable) == _TRAINABLE_COUNTS[fine_tune_after_block]
    learnable = [v for v in model.weights if v.name in ("kernel", "gamma", "beta")]
    assert trainable == {v.path for v in learnable if not frozen(v.path)}

    # Unit gammas so that every residual branch carries gradient.
    for v in model.weights:
        if v.name == "gamma":
            v.assign(tf.ones_like(v))
    moving_before = {v.path: v.numpy() for v in model.weights if v.name == "moving_mean"}
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([v.value for v in learnable])  # frozen ones too: stop_gradient must cut them.
        loss = tf.reduce_sum(tf.square(model(_images(4, 16), training=True)))
    grads = tape.gradient(loss, [v.value for v in learnable])
    for v, g in zip(learnable, grads):
        if frozen(v.path):
            assert g is None or not np.any(g.numpy()), v.path
        else:
            assert g is not None and np.any(g.numpy()), v.path
    # Frozen batch norms run in inference mode: their moving statistics stay put.
    for v in model.weights:
        if v.name == "moving_mean":
            changed = np.any(v.numpy() != moving_before[v.path])
            assert changed != frozen(v.path), v.path


def test_frozen_model_saves_and_loads(tmp_path):
    model = _tiny_resnet18(fine_tune_after_block=2)
    x = _images(2, 16)
    rebuilt = keras.Model.from_config(model.get_config())
    assert [l.name for l in rebuilt.layers] == [l.name for l in model.layers]
    path = str(tmp_path / "encoder.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    assert len(loaded.trainable_variables) == _TRAINABLE_COUNTS[2]
    assert isinstance(loaded.get_layer("block_group2_stop_gradient"), resnet.StopGradient)


# --- argument validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"depth": 20}, "depth"),
        ({"depth": True}, "depth"),
        ({"width_multiplier": 0}, "width_multiplier"),
        ({"width_multiplier": -0.5}, "width_multiplier"),
        ({"width_multiplier": float("nan")}, "width_multiplier"),
        ({"width_multiplier": "1"}, "width_multiplier"),
        ({"small_image_stem": "yes"}, "small_image_stem"),
        ({"global_bn": 1}, "global_bn"),
        ({"batch_norm_decay": 1.0}, "batch_norm_decay"),
        ({"batch_norm_decay": -0.1}, "batch_norm_decay"),
        ({"fine_tune_after_block": -2}, "fine_tune_after_block"),
        ({"fine_tune_after_block": 5}, "fine_tune_after_block"),
        ({"fine_tune_after_block": 1.0}, "fine_tune_after_block"),
        ({"fine_tune_after_block": True}, "fine_tune_after_block"),
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"input_shape": (32, 32, 0)}, "input_shape"),
        ({"input_shape": (32, 32, None)}, "input_shape"),
        ({"input_shape": 32}, "input_shape"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    kwargs = {"depth": 18, "width_multiplier": TINY, **kwargs}
    with pytest.raises(ValueError, match=argument):
        resnet.build_resnet(**kwargs)


def test_feature_dim_rejects_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        resnet.feature_dim(19)
    with pytest.raises(ValueError, match="width_multiplier"):
        resnet.feature_dim(18, 0.0)


def test_numpy_integer_arguments_are_accepted():
    model = resnet.build_resnet(
        np.int64(18),
        TINY,
        fine_tune_after_block=np.int32(1),
        input_shape=(np.int64(16), 16, np.int64(1)),
    )
    assert model.output.shape == (None, resnet.feature_dim(18, TINY))


# --- distribution and compilation --------------------------------------------------------


@pytest.mark.parametrize("global_bn", [True, False])
def test_global_bn_uses_global_batch_statistics_under_mirrored_strategy(global_bn, mirrored_strategy):
    # Two replicas with very different halves of the batch; decay 0 makes the moving
    # statistics equal to the last batch statistics.
    x = _images(8, 16)
    x[4:] = 0.3 * x[4:] + 0.6
    reference = _tiny_resnet18(batch_norm_decay=0.0)
    initial = reference.get_weights()
    reference(x, training=True)

    strategy = mirrored_strategy
    with strategy.scope():
        model = _tiny_resnet18(batch_norm_decay=0.0, global_bn=global_bn)
    model.set_weights(initial)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: x[4 * ctx.replica_id_in_sync_group : 4 * ctx.replica_id_in_sync_group + 4]
    )

    @tf.function
    def train_call(images):
        return strategy.run(lambda batch: model(batch, training=True), args=(images,))

    train_call(per_replica)
    stats = [v.name in ("moving_mean", "moving_variance") for v in model.weights]
    got = [v.numpy() for v, s in zip(model.weights, stats) if s]
    want = [v.numpy() for v, s in zip(reference.weights, stats) if s]
    assert len(got) == 2 * 20  # 20 batch norms in a ResNet-18 with projections.
    if global_bn:
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5)
    else:  # Control: per-replica statistics differ from the global ones.
        assert not np.allclose(got[1], want[1], rtol=1e-2)


def test_jit_compiled_train_step_matches_eager():
    model = _tiny_resnet18()
    x = _images(4, 16)
    eager_out = model(x, training=False)
    optimizer = keras.optimizers.SGD(0.1)
    kernel = model.get_layer("stem_conv").kernel
    kernel_before = kernel.numpy()

    @tf.function(jit_compile=True)
    def train_step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(images, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function(jit_compile=True)
    def predict(images):
        return model(images, training=False)

    np.testing.assert_allclose(predict(x), eager_out, rtol=1e-4, atol=1e-5)
    loss = train_step(x)
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0
    assert np.any(kernel.numpy() != kernel_before)
    assert np.any(model.get_layer("stem_batch_norm").moving_mean.numpy() != 0)
