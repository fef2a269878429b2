"""Tests for tf_sogclr.training.optim: LARS, the warm-up + cosine schedule, scaling, weight decay."""

import contextlib
import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_sogclr import config
from tf_sogclr.training import optim

LR = 0.5
MOMENTUM = 0.9
WEIGHT_DECAY = 0.1
EETA = 0.2

# (path, shape, decays, adapts): exclusion expectations written out by hand, not recomputed.
VARIABLE_SPECS = (
    ("encoder/conv_1/kernel", (3, 4), True, True),
    ("encoder/batch_norm_1/gamma", (4,), False, False),
    ("encoder/dense/bias", (4,), False, False),
    ("head_supervised/kernel", (4, 2), False, False),
    ("encoder/zero_init/kernel", (2, 3), True, True),  # w = 0 at step 1: trust ratio 1
    ("encoder/no_decay/kernel", (5,), False, True),  # g = 0 at step 2: trust ratio 1
)
WD_EXCLUDES = ["batch_norm", "bias", "head_supervised", "no_decay"]
ADAPT_EXCLUDES = ["batch_norm", "bias", "head_supervised"]
NUM_STEPS = 3


def _make_variables(seed=0):
    rng = np.random.default_rng(seed)
    variables = []
    for path, shape, _, _ in VARIABLE_SPECS:
        *scopes, name = path.split("/")
        init = np.zeros(shape) if "zero_init" in path else rng.normal(size=shape)
        with contextlib.ExitStack() as stack:
            for scope in scopes:
                stack.enter_context(keras.name_scope(scope))
            variables.append(keras.Variable(init.astype("float32"), name=name))
        assert variables[-1].path == path
    return variables


def _make_gradients(seed=1):
    """gradients[step][variable], float32; the 'no_decay' gradient is 0 at step 2."""
    rng = np.random.default_rng(seed)
    steps = []
    for step in range(NUM_STEPS):
        grads = []
        for path, shape, _, _ in VARIABLE_SPECS:
            g = rng.normal(size=shape).astype("float32")
            if "no_decay" in path and step == 1:
                g = np.zeros(shape, "float32")
            grads.append(g)
        steps.append(grads)
    return steps


def _numpy_lars(weights, gradients, nesterov):
    """Independent float64 LARS (SimCLR classic momentum); returns weights and velocities."""
    weights = [w.astype("float64") for w in weights]
    velocities = [np.zeros_like(w) for w in weights]
    for step_grads in gradients:
        for i, (_, _, decays, adapts) in enumerate(VARIABLE_SPECS):
            w, g = weights[i], step_grads[i].astype("float64")
            if decays:
                g = g + WEIGHT_DECAY * w
            lr = LR
            if adapts:
                w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
                if w_norm > 0 and g_norm > 0:
                    lr = LR * EETA * w_norm / g_norm
            velocities[i] = MOMENTUM * velocities[i] + lr * g
            update = MOMENTUM * velocities[i] + lr * g if nesterov else velocities[i]
            weights[i] = w - update
    return weights, velocities


def _make_lars(**overrides):
    kwargs = dict(
        learning_rate=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        trust_coefficient=EETA,
        exclude_from_weight_decay=WD_EXCLUDES,
        exclude_from_layer_adaptation=ADAPT_EXCLUDES,
    )
    kwargs.update(overrides)
    return optim.LARS(**kwargs)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_numpy_reference(nesterov):
    variables = _make_variables()
    initial = [v.numpy() for v in variables]
    gradients = _make_gradients()
    opt = _make_lars(nesterov=nesterov)
    for step_grads in gradients:
        opt.apply([tf.constant(g) for g in step_grads], variables)
    expected_w, expected_v = _numpy_lars(initial, gradients, nesterov)
    for i, (path, *_) in enumerate(VARIABLE_SPECS):
        got_w, got_v = variables[i].numpy(), opt.momentums[i].numpy()
        assert np.all(np.isfinite(got_w)), path
        np.testing.assert_allclose(got_w, expected_w[i], rtol=1e-6, atol=1e-6, err_msg=path)
        np.testing.assert_allclose(got_v, expected_v[i], rtol=1e-5, atol=1e-6, err_msg=path)
    assert int(opt.iterations.numpy()) == NUM_STEPS


def test_lars_decay_is_coupled_and_applied_once():
    # Keras's own decoupled decay must stay off: one step with g = 0, momentum 0 and no
    # adaptation must give exactly w - lr * wd * w.
    with keras.name_scope("layer"):
        var = keras.Variable(np.array([1.0, -2.0], "float32"), name="kernel")
    opt = optim.LARS(
        0.1, momentum=0.0, weight_decay=0.5, exclude_from_layer_adaptation=["kernel"]
    )
    opt.apply([tf.zeros(2)], [var])
    np.testing.assert_allclose(var.numpy(), [1.0 - 0.05, -2.0 + 0.1], rtol=1e-6)
    assert opt.weight_decay is None
    assert opt.get_config()["weight_decay"] == 0.5


def test_lars_default_excludes_match_keras_layer_names():
    model = keras.Sequential(
        [
            keras.layers.Dense(3, name="encoder_dense"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2, name="head_supervised"),
        ],
        name="model",
    )
    model.build((None, 4))
    variables = model.trainable_variables
    before = {v.path: v.numpy() for v in variables}
    # Momentum 0, big decay, tiny eeta: excluded variables take a plain SGD step.
    opt = optim.LARS(0.1, momentum=0.0, weight_decay=1.0, trust_coefficient=1e-3)
    opt.apply([tf.ones_like(v) for v in variables], variables)
    plain = {p: np.allclose(v.numpy(), before[p] - 0.1, atol=1e-7) for p, v in
             ((v.path, v) for v in variables)}
    expected_plain = {
        p: ("batch_normalization" in p or "bias" in p or "head_supervised" in p) for p in before
    }
    assert plain == expected_plain
    assert expected_plain["model/encoder_dense/kernel"] is False


def test_lars_sparse_gradient_equals_dense():
    rows = [1, 1, 3]

    def run(sparse):
        with keras.name_scope("embedding"):
            var = keras.Variable(np.arange(15, dtype="float32").reshape(5, 3), name="table")
        opt = optim.LARS(0.1, weight_decay=0.01, exclude_from_weight_decay=[])
        for _ in range(2):
            with tf.GradientTape() as tape:
                if sparse:
                    loss = tf.reduce_sum(tf.gather(var.value, rows) ** 2)
                else:
                    loss = tf.reduce_sum(tf.matmul(tf.one_hot(rows, 5), var.value) ** 2)
            grad = tape.gradient(loss, var.value)
            assert isinstance(grad, tf.IndexedSlices) == sparse
            opt.apply([grad], [var])
        return var.numpy()

    np.testing.assert_allclose(run(True), run(False), rtol=1e-6)


def _run_lars_steps(strategy, per_replica, jit_compile=False):
    """NUM_STEPS of LARS; `per_replica[r][step][i]` is replica r's share of each gradient."""
    with strategy.scope():
        variables = _make_variables()
        opt = _make_lars()
        opt.build(variables)

    @tf.function(jit_compile=jit_compile)
    def replica_step(grads):
        opt.apply(grads, variables)

    @tf.function
    def distributed_step(values):
        strategy.run(replica_step, args=(values,))

    for step in range(NUM_STEPS):
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: [tf.constant(g) for g in per_replica[ctx.replica_id_in_sync_group][step]]
        )
        distributed_step(values)
    # Every device's copy (one per replica under MirroredStrategy).
    local = strategy.experimental_local_results
    return [[c.numpy() for c in local(v.value)] for v in variables + opt.momentums]


def test_lars_mirrored_two_replicas_and_xla_match_one_device(mirrored_strategy):
    total = _make_gradients()
    share = [[0.25 * g for g in step] for step in total]
    rest = [[t - s for t, s in zip(ts, ss)] for ts, ss in zip(total, share)]

    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    expected = _run_lars_steps(one_device, [total])
    mirrored = mirrored_strategy
    assert mirrored.num_replicas_in_sync == 2
    got = _run_lars_steps(mirrored, [share, rest])
    # XLA on the default (no) strategy. (XLA around `apply` under MirroredStrategy fails for
    # built-in Keras optimisers too: cross-device variable access; Keras turns it off.)
    xla = _run_lars_steps(tf.distribute.get_strategy(), [total], jit_compile=True)

    for copies, xla_copies, (reference,) in zip(got, xla, expected):
        assert len(copies) == 2  # weights and momentum slots on both devices
        for value in copies + xla_copies:
            np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-6)
    numpy_weights = _numpy_lars([v.numpy() for v in _make_variables()], total, nesterov=False)[0]
    for (copy_0, _), w in zip(got, numpy_weights):
        np.testing.assert_allclose(copy_0, w, rtol=1e-5, atol=1e-6)


def test_lars_with_warmup_schedule_under_xla_matches_eager():
    schedule = optim.WarmupCosineDecay(1.0, warmup_steps=2, total_steps=10)
    gradients = _make_gradients()

    def run(jit_compile):
        variables = _make_variables()
        opt = _make_lars(learning_rate=schedule)
        opt.build(variables)
        step = tf.function(lambda grads: opt.apply(grads, variables), jit_compile=jit_compile)
        history = []
        for step_grads in gradients:
            step([tf.constant(g) for g in step_grads])
            history.append([v.numpy() for v in variables])
        return history

    eager, xla = run(False), run(True)
    initial = [v.numpy() for v in _make_variables()]
    for a, b in zip(eager[0], initial):  # lr(0) = 0: the first step changes nothing
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(eager[1][0], initial[0])
    for step_e, step_x in zip(eager, xla):
        for a, b in zip(step_e, step_x):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_lars_checkpoint_round_trip_restores_momentum(tmp_path):
    gradients = _make_gradients()
    variables = _make_variables()
    opt = _make_lars()
    for step_grads in gradients[:2]:
        opt.apply([tf.constant(g) for g in step_grads], variables)
    path = tf.train.Checkpoint(variables=variables, optimizer=opt).save(str(tmp_path / "ckpt"))

    restored_vars = _make_variables(seed=7)
    restored = _make_lars()
    restored.build(restored_vars)
    tf.train.Checkpoint(variables=restored_vars, optimizer=restored).restore(
        path
    ).assert_consumed()
    assert int(restored.iterations.numpy()) == 2
    for a, b in zip(restored.momentums, opt.momentums):
        assert np.any(b.numpy() != 0)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # One more step gives the same weights as the uninterrupted run.
    last = [tf.constant(g) for g in gradients[2]]
    opt.apply(last, variables)
    restored.apply(last, restored_vars)
    for a, b in zip(restored_vars, variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_lars_config_round_trip_with_schedule():
    schedule = optim.WarmupCosineDecay(1.2, warmup_steps=10, total_steps=100)
    opt = optim.LARS(
        schedule,
        momentum=0.8,
        weight_decay=1e-4,
        trust_coefficient=0.002,
        nesterov=True,
        exclude_from_weight_decay=["bias"],
    )
    config = opt.get_config()
    assert config["exclude_from_layer_adaptation"] == ["bias"]
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, optim.LARS)
    assert clone.get_config() == config
    assert clone.weight_decay is None and clone.lars_weight_decay == 1e-4
    assert isinstance(clone._learning_rate, optim.WarmupCosineDecay)
    assert optim.LARS.from_config(opt.get_config()).get_config() == config


def test_lars_argument_errors():
    with pytest.raises(ValueError, match="momentum"):
        optim.LARS(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.LARS(0.1, weight_decay=-1e-4)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.LARS(-0.1)
    with pytest.raises(ValueError, match="trust_coefficient"):
        optim.LARS(0.1, trust_coefficient=0.0)
    with pytest.raises(ValueError, match="exclude_from_weight_decay"):
        optim.LARS(0.1, exclude_from_weight_decay="bias")
    with pytest.raises(ValueError, match="constructor"):
        optim.LARS(0.1).exclude_from_weight_decay(var_names=["bias"])


def _simclr_lr(step, base, warmup, total):
    if step < warmup:
        return step / warmup * base
    step = min(step, total)
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _numpy_adamw(weights, gradients, weight_decay=WEIGHT_DECAY, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7):
    """Independent float64 AdamW (Loshchilov & Hutter, as Keras orders it: the decoupled
    decay w -= lr * wd * w first, then Adam's bias-corrected step)."""
    weights = [w.astype("float64") for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t, step_grads in enumerate(gradients, start=1):
        alpha = LR * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        for i, (_, _, decays, _) in enumerate(VARIABLE_SPECS):
            g = step_grads[i].astype("float64")
            if decays:
                weights[i] = weights[i] - LR * weight_decay * weights[i]
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            weights[i] = weights[i] - alpha * m[i] / (np.sqrt(v[i]) + epsilon)
    return weights


def test_adamw_matches_numpy_reference_and_excludes_by_path():
    variables, gradients = _make_variables(), _make_gradients()
    expected = _numpy_adamw([v.numpy() for v in variables], gradients)
    optimizer = optim.AdamW(LR, weight_decay=WEIGHT_DECAY, exclude_from_weight_decay=WD_EXCLUDES)
    for step_grads in gradients:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads], variables))
    undecayed = _numpy_adamw([v.numpy() for v in _make_variables()], gradients,
                             weight_decay=0.0)
    for (path, _, decays, _), variable, want, plain in zip(VARIABLE_SPECS, variables, expected,
                                                           undecayed):
        # float32 Adam: where m nearly cancels, updates of ~LR carry ~1e-5 of rounding.
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=2e-5, err_msg=path)
        # The decay, where it applies, moves weights ~100x further than that tolerance.
        assert (np.abs(want - plain).max() > 2e-3) == decays, path
    # The config round trip keeps the path exclusions.
    again = optim.AdamW.from_config(optimizer.get_config())
    assert again.weight_decay_excludes == tuple(WD_EXCLUDES) and again.weight_decay == WEIGHT_DECAY
    with pytest.raises(ValueError, match="weight_decay"):
        optim.AdamW(LR, weight_decay=-1.0)


@pytest.mark.parametrize("warmup", [0, 20])
def test_warmup_cosine_decay_matches_simclr(warmup):
    base, total = 2.4, 120
    schedule = optim.WarmupCosineDecay(base, warmup_steps=warmup, total_steps=total)
    mid_decay = (warmup + total) // 2
    for step in (0, warmup // 2, warmup, warmup + 1, mid_decay, total - 1, total, total + 50):
        got = float(schedule(tf.constant(step, tf.int64)))
        assert got == pytest.approx(_simclr_lr(step, base, warmup, total), rel=1e-6, abs=1e-6)
    assert float(schedule(mid_decay)) == pytest.approx(base / 2, rel=1e-6)
    assert float(schedule(total)) == pytest.approx(0.0, abs=1e-7)
    if warmup:
        assert float(schedule(0)) == 0.0
        assert float(schedule(warmup // 2)) == pytest.approx(base / 2, rel=1e-6)


def test_warmup_cosine_decay_config_round_trip_and_errors():
    schedule = optim.WarmupCosineDecay(0.3, warmup_steps=5, total_steps=50)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(clone, optim.WarmupCosineDecay)
    assert clone.get_config() == schedule.get_config()
    for step in (0, 3, 5, 27, 50):
        assert float(clone(step)) == float(schedule(step))
    with pytest.raises(ValueError, match="total_steps"):
        optim.WarmupCosineDecay(0.3, warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.WarmupCosineDecay(0.3, warmup_steps=-1, total_steps=10)
    with pytest.raises(ValueError, match="base_learning_rate"):
        optim.WarmupCosineDecay(-0.3, warmup_steps=1, total_steps=10)


def test_scaled_learning_rate():
    assert optim.scaled_learning_rate(0.3, 512, "linear") == pytest.approx(0.6)
    assert optim.scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    with pytest.raises(ValueError, match=r"learning_rate_scaling.*'linear', 'sqrt'"):
        optim.scaled_learning_rate(0.3, 512, "log")
    with pytest.raises(ValueError, match="global_batch_size"):
        optim.scaled_learning_rate(0.3, 0, "linear")


def test_steps_per_epoch():
    assert optim.steps_per_epoch(50000, 512) == 97
    assert optim.steps_per_epoch(512, 512) == 1
    with pytest.raises(ValueError, match="global_batch_size"):
        optim.steps_per_epoch(100, 101)
    with pytest.raises(ValueError, match="num_examples"):
        optim.steps_per_epoch(0, 1)


def test_build_optimizer_choices_and_errors():
    lars = optim.build_optimizer("lars", 0.3, momentum=0.8, weight_decay=1e-6)
    assert isinstance(lars, optim.LARS)
    assert (lars.momentum, lars.lars_weight_decay) == (0.8, 1e-6)
    assert lars.weight_decay_excludes == optim.DEFAULT_EXCLUDES
    sgd = optim.build_optimizer("momentum", 0.3, momentum=0.8, weight_decay=1e-6)
    assert isinstance(sgd, keras.optimizers.SGD)
    assert (sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.8, False, None)
    adam = optim.build_optimizer("adam", 1e-3, weight_decay=1e-6)
    assert isinstance(adam, keras.optimizers.Adam) and adam.weight_decay is None
    adamw = optim.build_optimizer("adamw", 1e-3, weight_decay=0.1)
    assert isinstance(adamw, optim.AdamW) and adamw.weight_decay == 0.1
    assert adamw.weight_decay_excludes == optim.ADAMW_EXCLUDES
    assert optim.weight_decay_excludes("lars", ("x",)) == optim.DEFAULT_EXCLUDES + ("x",)
    assert optim.weight_decay_excludes("adamw") == ("batch_norm", "bias")
    assert optim.weight_decay_excludes("momentum", ("x",)) == ("x",)
    assert optim.weight_decay_excludes("adam") == ()
    assert optim.weight_decay_in_optimizer("lars") and optim.weight_decay_in_optimizer("adamw")
    assert not optim.weight_decay_in_optimizer("momentum")
    assert not optim.weight_decay_in_optimizer("adam")
    for optimizer, name in ((lars, "lars"), (sgd, "momentum"), (adam, "adam"), (adamw, "adamw"),
                            (keras.optimizers.LossScaleOptimizer(adamw), "adamw")):
        assert optim.optimizer_name(optimizer) == name

    with pytest.raises(ValueError, match=r"optimizer.*'lars', 'momentum', 'adam', 'adamw'"):
        optim.build_optimizer("sgd", 0.1)
    with pytest.raises(ValueError, match="optimizer"):
        optim.weight_decay_in_optimizer("adagrad")
    with pytest.raises(ValueError, match="learning_rate"):
        optim.build_optimizer("momentum", -0.1)
    with pytest.raises(ValueError, match="momentum"):
        optim.build_optimizer("momentum", 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.build_optimizer("lars", 0.1, weight_decay=-1.0)


def test_l2_weight_decay_loss_excludes_batch_norm_and_weight_decay_loss_policy():
    model = keras.Sequential(
        [
            keras.layers.Dense(3, name="encoder_dense"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2, name="head_supervised"),
        ],
        name="model",
    )
    model.build((None, 4))
    variables = model.trainable_variables
    for i, v in enumerate(variables):  # non-trivial batch-norm values too
        v.assign(np.full(v.shape, i + 1.0, "float32"))
    half_sq = {v.path: 0.5 * float(np.sum(v.numpy() ** 2)) for v in variables}

    got = float(optim.l2_weight_decay_loss(variables, 1e-2))
    expected = 1e-2 * sum(s for p, s in half_sq.items() if "batch_normalization" not in p)
    assert got == pytest.approx(expected, rel=1e-6)
    assert float(optim.l2_weight_decay_loss(variables, 0.0)) == 0.0

    for name in ("momentum", "adam"):
        assert float(optim.weight_decay_loss(name, variables, 1e-2)) == pytest.approx(expected)
    # LARS decays in the optimiser; only the supervised head's kernel stays for the loss
    # (SimCLR). AdamW decays the head too, so nothing is left for the loss.
    term = float(optim.weight_decay_loss("lars", variables, 1e-2))
    assert term == pytest.approx(1e-2 * half_sq["model/head_supervised/kernel"])
    assert float(optim.weight_decay_loss("adamw", variables, 1e-2)) == 0.0


def test_adamw_decays_the_supervised_head_but_not_batch_norm_or_biases():
    """One AdamW step with zero gradients is its decoupled decay alone: w -= lr * wd * w on
    the encoder's and the supervised head's kernels, nothing on batch norm and biases."""
    model = keras.Sequential([keras.layers.Dense(3, name="encoder_dense"),
                              keras.layers.BatchNormalization(),
                              keras.layers.Dense(2, name="head_supervised")], name="model")
    model.build((None, 4))
    variables = model.trainable_variables
    for v in variables:
        v.assign(np.ones(v.shape, "float32"))
    optimizer = optim.build_optimizer("adamw", 0.1, weight_decay=0.5)
    optimizer.apply([keras.ops.zeros(v.shape) for v in variables], variables)
    for v in variables:
        decayed = "kernel" in v.path and "batch_normalization" not in v.path
        np.testing.assert_allclose(v.numpy(), 1.0 - 0.1 * 0.5 if decayed else 1.0,
                                   rtol=1e-6, err_msg=v.path)
    assert {v.path for v in variables if "kernel" in v.path} == {
        "model/encoder_dense/kernel", "model/head_supervised/kernel"}


@pytest.mark.parametrize("name", config.OPTIMIZERS)
def test_learning_rate_multipliers_scale_only_the_matching_variables(name):
    """A variable matching a multiplier's regex follows the run at factor x the learning rate
    (momentum, trust ratio, Adam moments included); every other variable the plain run."""
    factor = 0.25

    def run(learning_rate, multipliers=None):
        variables = _make_variables()
        optimizer = optim.build_optimizer(
            name, learning_rate, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
            exclude_from_weight_decay=WD_EXCLUDES, learning_rate_multipliers=multipliers)
        for step_grads in _make_gradients():
            optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads], variables))
        return optimizer, {v.path: v.numpy() for v in variables}

    optimizer, multiplied = run(LR, {"no_decay": factor})
    _, plain = run(LR)
    _, slow = run(LR * factor)
    for path, value in multiplied.items():
        want = slow[path] if "no_decay" in path else plain[path]
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-6, err_msg=path)
    assert np.abs(plain["encoder/no_decay/kernel"] - slow["encoder/no_decay/kernel"]).max() > 0.01
    again = type(optimizer).from_config(optimizer.get_config())
    assert again.learning_rate_multipliers == {"no_decay": factor}


def test_learning_rate_multipliers_reject_bad_values():
    for bad in ({"temperature": 0.0}, {"temperature": -1.0}, {3: 1.0}, {"t": "1"},
                [("temperature", 1.0)]):
        with pytest.raises(ValueError, match="`learning_rate_multipliers` must be a dict "
                                             r"\{regex string: factor > 0\}"):
            optim.build_optimizer("adamw", LR, learning_rate_multipliers=bad)


def test_scheduled_optimizer_gives_peak_learning_rates_the_schedules_shape():
    cfg = config.OptimizerConfig(optimizer="adamw", learning_rate=0.01,
                                 learning_rate_scaling="sqrt", warmup_epochs=1.0)
    optimizer = optim.build_scheduled_optimizer(cfg, 64, steps_per_epoch=10, total_steps=50,
                                                peak_learning_rates={"temperature": 0.02})
    # Peak 0.01 * sqrt(64) = 0.08; the temperature's own peak 0.02 is a quarter of it.
    assert optimizer.learning_rate_multipliers == {"temperature": pytest.approx(0.25)}
    with pytest.raises(ValueError, match="peak_learning_rates need a learning rate > 0"):
        optim.build_scheduled_optimizer(dataclasses.replace(cfg, learning_rate=0.0), 64, 10,
                                        50, peak_learning_rates={"temperature": 0.02})
