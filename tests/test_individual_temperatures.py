"""iSogCLR's individual temperatures (`losses.TemperatureTable` inside both global losses),
against an independent NumPy implementation written here: loss, gradients, the u-, tau- and
moving-average tables over several steps (new, repeated and mixed indices, a duplicate),
eagerly and under XLA; checkpoints; overflow at tau_min; through a model, one device and
mirrored. (Mirrored against one device, for the losses alone: test_collective_free_backward.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import loss_reference as ref
import tiny
from tf_sogclr import losses

RTOL, ATOL = 1e-5, 1e-6
# The tau-gradient estimate, log u - sum p s / (tau K), cancels terms of size 1 / tau in
# float32: the tables are compared to 1e-5 absolute.
TABLE_ATOL = 1e-5
STEPS = [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], [9, 10, 9, 1, 11, 12]]
TABLE = dict(temperature_range=(0.05, 0.7), learning_rate=0.05, momentum=0.3, gradient_clip=2.0)


class NumpyISogCLR:
    """Float64, linear-space iSogCLR (docs/algorithm.md, "Individual temperatures").

    `tables`: one (tau, moving average) pair of `[N]` arrays per anchor kind: "both" for the
    unimodal loss (one tau per example for both views), "image" and "text" for the bimodal.
    """

    def __init__(self, num_examples, tau0, gamma, rho, scale, kinds, range_, eta, momentum,
                 clip):
        self.gamma, self.rho, self.scale = gamma, rho, scale
        self.range, self.eta, self.momentum, self.clip = range_, eta, momentum, clip
        self.u = {kind: np.full(num_examples, np.nan) for kind in kinds}
        self.tau = {kind: np.full(num_examples, tau0) for kind in kinds}
        self.average = {kind: np.zeros(num_examples) for kind in kinds}

    def anchor(self, S, W, row, pos, neg, u_old, tau):
        """One anchor: adds its gradient weights to W; returns (loss, u, dF/dtau)."""
        e = np.exp(S[row, neg] / tau)
        g = e.mean()
        u = g if np.isnan(u_old) else (1 - self.gamma) * u_old + self.gamma * g
        p = e / u
        s = 1.0 / tau if self.scale == "infonce" else 1.0
        W[row, pos] -= s
        W[row, neg] += s * p / len(neg)
        weighted = np.sum(p * S[row, neg]) / len(neg)
        loss = s * (-S[row, pos] + weighted)
        return loss, u, np.log(u) + self.rho - weighted / tau

    def step_tables(self, kind, index, values_u, gradients):
        """u, tau and the moving average of rows `index`, duplicates stored as means."""
        tau_old, average_old = self.tau[kind].copy(), self.average[kind].copy()
        new_tau, new_average = [], []
        for i, d in zip(index, gradients):
            m = self.momentum * average_old[i] + (1 - self.momentum) * np.clip(
                d, -self.clip, self.clip)
            new_average.append(m)
            new_tau.append(np.clip(tau_old[i] - self.eta * m, *self.range))
        ref.write_mean(self.u[kind], index, values_u)
        ref.write_mean(self.tau[kind], index, new_tau)
        ref.write_mean(self.average[kind], index, new_average)

    def unimodal(self, z1, z2, index):
        """Returns loss, dL/dz1, dL/dz2; steps the "both" tables."""
        a, b = ref.normalize(z1), ref.normalize(z2)
        B = len(a)
        V = np.concatenate([a, b])
        S, W = V @ V.T, np.zeros((2 * B, 2 * B))
        loss, u, d = 0.0, {}, {}
        for r in range(2 * B):
            i, partner = r % B, (r + B) % (2 * B)
            neg = [c for c in range(2 * B) if c not in (r, partner)]
            l, u[r], d[r] = self.anchor(S, W, r, partner, neg, self.u["both"][index[i]],
                                        self.tau["both"][index[i]])
            loss += l
        self.step_tables("both", index, [(u[i] + u[B + i]) / 2 for i in range(B)],
                         [(d[i] + d[B + i]) / 2 for i in range(B)])
        grad_V = (W + W.T) @ V / B
        return (loss / B, ref.grad_through_normalize(z1, grad_V[:B]),
                ref.grad_through_normalize(z2, grad_V[B:]))

    def bimodal(self, image, text, index):
        """Returns loss, dL/dimage, dL/dtext; steps the "image" and "text" tables."""
        e, t = ref.normalize(image), ref.normalize(text)
        B = len(e)
        V = np.concatenate([e, t])
        S, W = V @ V.T, np.zeros((2 * B, 2 * B))
        loss = 0.0
        for kind, offset, other in (("image", 0, B), ("text", B, 0)):
            u, d = [], []
            for i in range(B):
                neg = [other + j for j in range(B) if j != i]
                l, ui, di = self.anchor(S, W, offset + i, other + i, neg, self.u[kind][index[i]],
                                        self.tau[kind][index[i]])
                loss += l
                u.append(ui)
                d.append(di)
            self.step_tables(kind, index, u, d)
        grad_V = (W + W.T) @ V / B
        return (loss / B, ref.grad_through_normalize(image, grad_V[:B]),
                ref.grad_through_normalize(text, grad_V[B:]))


WRAPS = {"eager": None, "jit": lambda f: tf.function(f, jit_compile=True)}


@pytest.mark.parametrize("mode, gradient_scale", [
    ("eager", "libauc"), ("eager", "infonce"), ("jit", "infonce")])
def test_unimodal_matches_numpy_over_steps(mode, gradient_scale):
    rng = np.random.default_rng(0)
    num_examples, tau0, gamma, rho = 16, 0.2, 0.8, 0.5
    loss_fn = losses.GlobalContrastiveLoss(
        num_examples, temperature=tau0, gamma=gamma, gradient_scale=gradient_scale,
        individual_temperatures=TABLE, temperature_rho=rho)
    want = NumpyISogCLR(num_examples, tau0, gamma, rho, gradient_scale, ["both"],
                        TABLE["temperature_range"], TABLE["learning_rate"], TABLE["momentum"],
                        TABLE["gradient_clip"])
    table = loss_fn.temperature_table
    for index in STEPS:
        z1, z2 = ref.random_views(rng, len(index))
        tau_batch = want.tau["both"][index]
        loss, metrics, g1, g2 = tiny.loss_and_grads(loss_fn, z1, z2, index, WRAPS[mode])
        want_loss, want_g1, want_g2 = want.unimodal(z1, z2, index)
        np.testing.assert_allclose(loss, want_loss, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g1, want_g1, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g2, want_g2, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(loss_fn.estimates(), np.nan_to_num(want.u["both"]), rtol=RTOL)
        np.testing.assert_allclose(table.tau.numpy(), want.tau["both"], rtol=RTOL,
                                   atol=TABLE_ATOL)
        np.testing.assert_allclose(table.gradient_average.numpy(), want.average["both"],
                                   rtol=RTOL, atol=TABLE_ATOL)
        np.testing.assert_allclose(metrics["temperature_mean"], tau_batch.mean(), rtol=RTOL)
        np.testing.assert_allclose(metrics["temperature_min"], tau_batch.min(), rtol=RTOL)
        np.testing.assert_allclose(metrics["temperature_max"], tau_batch.max(), rtol=RTOL)
    moved = want.tau["both"] != tau0
    assert moved.sum() == 13  # every visited row's tau moved, the others kept tau0
    assert (want.average["both"] != 0).sum() == 13


@pytest.mark.parametrize("mode, gradient_scale", [("eager", "libauc"), ("jit", "infonce")])
def test_bimodal_matches_numpy_over_steps(mode, gradient_scale):
    rng = np.random.default_rng(1)
    num_examples, tau0, gamma, rho = 16, 0.3, 0.7, 1.0
    loss_fn = losses.BimodalGlobalContrastiveLoss(
        num_examples, temperature=tau0, gamma=gamma, gradient_scale=gradient_scale,
        individual_temperatures=TABLE, temperature_rho=rho)
    want = NumpyISogCLR(num_examples, tau0, gamma, rho, gradient_scale, ["image", "text"],
                        TABLE["temperature_range"], TABLE["learning_rate"], TABLE["momentum"],
                        TABLE["gradient_clip"])
    for index in STEPS:
        image, text = ref.random_views(rng, len(index))
        loss, _, g_image, g_text = tiny.loss_and_grads(loss_fn, image, text, index, WRAPS[mode])
        want_loss, want_image, want_text = want.bimodal(image, text, index)
        np.testing.assert_allclose(loss, want_loss, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g_image, want_image, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g_text, want_text, rtol=RTOL, atol=ATOL)
        for kind in ("image", "text"):
            np.testing.assert_allclose(loss_fn.estimates()[kind], np.nan_to_num(want.u[kind]),
                                       rtol=RTOL)
            table = getattr(loss_fn, f"{kind}_temperature_table")
            np.testing.assert_allclose(table.tau.numpy(), want.tau[kind], rtol=RTOL,
                                       atol=TABLE_ATOL)
            np.testing.assert_allclose(table.gradient_average.numpy(), want.average[kind],
                                       rtol=RTOL, atol=TABLE_ATOL)
    assert not np.allclose(want.tau["image"], want.tau["text"])  # two tables, two paths


def test_a_global_temperature_override_is_refused_with_individual_ones():
    loss_fn = losses.BimodalGlobalContrastiveLoss(8, individual_temperatures={})
    with pytest.raises(ValueError, match="temperature must be None with individual"):
        loss_fn(tf.ones([2, 3]), tf.ones([2, 3]), tf.range(2), temperature=tf.constant(0.1))


def test_tau_min_cannot_overflow_and_the_clamp_holds():
    """tau = 0.01 and similarities near +-1: exp(s / tau) is e^100, past float32; log-space
    weights keep every value finite, and the tau steps never leave the range."""
    loss_fn = losses.BimodalGlobalContrastiveLoss(
        4, temperature=0.01, individual_temperatures=dict(
            temperature_range=(0.01, 0.02), learning_rate=10.0, momentum=0.0),
        temperature_rho=0.0)
    image = tf.constant([[1.0, 0.0], [0.999, 0.045], [0.0, 1.0], [-1.0, 0.0]])
    for _ in range(3):
        with tf.GradientTape() as tape:
            tape.watch(image)
            loss, metrics = loss_fn(image, image[::-1], tf.range(4), return_metrics=True)
        assert np.isfinite(loss) and np.all(np.isfinite(tape.gradient(loss, image)))
        assert all(np.isfinite(value) for value in metrics.values())
        for table in (loss_fn.image_temperature_table, loss_fn.text_temperature_table):
            tau = table.tau.numpy()
            assert np.all((tau >= 0.01) & (tau <= 0.02)), tau
    assert np.all(np.isfinite(loss_fn.image_u_table.log_u.numpy()))


def test_checkpoint_round_trip_restores_both_tables_exactly(tmp_path):
    def make():
        return losses.BimodalGlobalContrastiveLoss(12, temperature=0.1,
                                                   individual_temperatures=TABLE)

    loss_fn = make()
    loss_fn(tf.random.normal([4, 3]), tf.random.normal([4, 3]), tf.constant([1, 4, 6, 11]))
    saved = [w.numpy().copy() for w in loss_fn.non_trainable_weights]
    path = tf.train.Checkpoint(loss=loss_fn).save(str(tmp_path / "ckpt"))
    fresh = make()
    tf.train.Checkpoint(loss=fresh).restore(path).assert_consumed()
    names = [w.name for w in fresh.non_trainable_weights]
    assert names == [w.name for w in loss_fn.non_trainable_weights]
    assert names.count("tau") == 2 and names.count("tau_gradient_average") == 2
    assert len(saved) == 7  # gamma, two u-tables, two (tau, moving average) pairs
    for want, got in zip(saved, fresh.non_trainable_weights):
        np.testing.assert_array_equal(got.numpy(), want)
    assert not np.all(fresh.image_temperature_table.tau.numpy() == 0.1)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(temperature_range=(0.5, 0.1)), "temperature_range"),
    (dict(temperature_range=(0.0, 1.0)), "temperature_range"),
    (dict(initial_temperature=2.0), "initial_temperature"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(momentum=1.0), "momentum"),
    (dict(gradient_clip=0.0), "gradient_clip"),
])
def test_bad_table_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        losses.TemperatureTable(10, **kwargs)


def test_bad_loss_arguments_name_the_argument():
    with pytest.raises(ValueError, match="individual_temperatures must be None or a dict"):
        losses.GlobalContrastiveLoss(10, individual_temperatures=True)
    with pytest.raises(ValueError, match="temperature_rho"):
        losses.GlobalContrastiveLoss(10, temperature_rho=-1.0)
    with pytest.raises(ValueError, match="initial_temperature"):  # tau outside the range
        losses.GlobalContrastiveLoss(10, temperature=0.005, individual_temperatures={})


def test_a_model_step_logs_the_temperatures_and_moves_their_table(mirrored_strategy):
    """Through the product's multi-step loop, one device and mirrored: the logs carry the
    batch temperatures' statistics, and both runs leave the same tau table.

    Seeded: this ResNet with synchronised batch norm on 8 examples of 8x8 ends in 1x1 maps,
    whose batch variances are tiny for some initial weights; there the summation order of
    two replicas moves batch-norm weights by up to 0.03 in three steps and tau by 3e-4
    (2 of 8 seeds measured), far beyond float32 rounding elsewhere."""
    keras.utils.set_random_seed(0)
    arguments = dict(TABLE, temperature_range=(0.1, 0.7))
    batches = [tiny.view_batch(seed=s) for s in range(3)]
    single = tiny.sogclr_model(global_bn=True, individual_temperatures=arguments)
    with mirrored_strategy.scope():
        mirrored = tiny.sogclr_model(global_bn=True, individual_temperatures=arguments)
    tiny.copy_weights(single, mirrored)
    logs = tiny.run_steps(single, tf.distribute.get_strategy(), batches)
    mirrored_logs = tiny.run_steps(mirrored, mirrored_strategy, batches)
    for name in ("temperature_mean", "temperature_min", "temperature_max"):
        assert 0.1 <= logs[name] <= 0.7, (name, logs[name])
        np.testing.assert_allclose(mirrored_logs[name], logs[name], rtol=1e-5)
    tau = single.loss_layer.temperature_table.tau.numpy()
    visited = np.unique(np.concatenate([b["index"].numpy() for b in batches]))
    assert np.all(tau[visited] != 0.2) and np.all(np.delete(tau, visited) == 0.2)
    for replica_tau in tiny.replica_values(mirrored.loss_layer.temperature_table.tau):
        np.testing.assert_allclose(replica_tau, tau, rtol=1e-4, atol=1e-5)
    assert set(single.loss_layer.table_estimates()) == {"u_table", "temperature_table"}


def test_the_config_checks_name_the_flag():
    from tf_sogclr import config

    on = dict(individual_temperatures=True)
    arguments = config.LossConfig(**on).validate().temperature_table_arguments()
    assert arguments == dict(temperature_range=(0.01, 1.0), learning_rate=0.01, momentum=0.1,
                             gradient_clip=5.0)
    assert config.LossConfig().temperature_table_arguments() is None
    assert config.LossConfig().rho_for("unimodal") == 0.3
    assert config.LossConfig().rho_for("bimodal") == 2.0
    assert config.LossConfig(temperature_rho=1.5).rho_for("bimodal") == 1.5
    for kwargs, message in [
        (dict(loss="simclr"), "--individual_temperatures must be false with --loss=simclr"),
        (dict(temperature_min=0.0), "--temperature_min must be a number in"),
        (dict(temperature_max=0.005), "--temperature_max must be a number in"),
        (dict(temperature=0.005), "--temperature must be a number in"),
        (dict(temperature_momentum=1.0), "--temperature_momentum must be a number in"),
        (dict(temperature_learning_rate=-0.1), "--temperature_learning_rate must be"),
        (dict(temperature_gradient_clip=0.0), "--temperature_gradient_clip must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            config.LossConfig(**on, **kwargs).validate()
    with pytest.raises(ValueError, match="--temperature_rho must be a number in"):
        config.LossConfig(temperature_rho=-1.0).validate()
    with pytest.raises(ValueError, match="--temperature_min must be a number in"):
        config.LossConfig(temperature_min=-0.1).validate()  # checked even when off
    with pytest.raises(ValueError, match="--learnable_temperature must be false with "
                                         "--individual_temperatures"):
        config.BimodalConfig(loss=config.LossConfig(temperature=0.03, **on),
                             text=config.TextConfig(learnable_temperature=True)).validate()
