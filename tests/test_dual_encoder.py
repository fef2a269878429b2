"""Tests of tf_sogclr.models.dual_encoder: mirrored steps and checkpoints of the image-text model."""

import numpy as np
import pytest
import tensorflow as tf

import tiny
from tf_sogclr.training import modalities


@pytest.mark.parametrize("loss", ["sogclr", "simclr"])
def test_mirrored_two_replicas_equal_one_device(mirrored_strategy, loss):
    """Two steps, learnable tau, synchronised batch norm: same losses, weights, tau, tables."""
    batches = [tiny.pair_batch(8, seed) for seed in (1, 2)]
    kind = "transformer" if loss == "sogclr" else "mlp"
    single = tiny.dual_encoder(loss, learnable=True, global_bn=True, kind=kind, learning_rate=0.01)
    with mirrored_strategy.scope():
        mirrored = tiny.dual_encoder(loss, learnable=True, global_bn=True, kind=kind,
                              learning_rate=0.01, seed=5)
    for s, m in zip(single.weights, mirrored.weights):
        m.assign(s.numpy())
    single_logs = tiny.run_steps(single, tf.distribute.get_strategy(), batches)
    mirrored_logs = tiny.run_steps(mirrored, mirrored_strategy, batches)
    for name in ("contrastive_loss", "objective", "temperature"):
        np.testing.assert_allclose(mirrored_logs[name], single_logs[name], rtol=1e-4,
                                   err_msg=name)
    assert single_logs["temperature"] != pytest.approx(0.1, abs=1e-7)  # tau was learnt
    for a, b in zip(mirrored.weights, single.weights):
        for value in tiny.replica_values(a):
            np.testing.assert_allclose(value, b.numpy(), rtol=2e-4, atol=2e-4, err_msg=b.path)
    if loss == "sogclr":
        visited = np.unique(np.concatenate([b["index"].numpy() for b in batches]))
        for table in ("image_u_table", "text_u_table"):
            single_table = getattr(single.loss_layer, table).log_u.numpy()
            assert np.count_nonzero(np.exp(single_table)) == visited.size
            for value in tiny.replica_values(getattr(mirrored.loss_layer, table).log_u):
                np.testing.assert_allclose(np.exp(value), np.exp(single_table), rtol=1e-4)


def test_checkpoint_restores_weights_tables_and_vocabulary(tmp_path):
    model = tiny.dual_encoder("sogclr", learnable=True)
    tiny.run_steps(model, tf.distribute.get_strategy(), [tiny.pair_batch(8, 3)])
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
        str(tmp_path / "ckpt"))
    assert modalities.vocabulary_from_checkpoint(path) == model.tokenizer.vocabulary
    restored = tiny.dual_encoder("sogclr", learnable=True, seed=9, vocabulary=["zebra", "dog"])
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(
        path).assert_existing_objects_matched()
    texts = tf.constant(["a photo of a dog.", "an image of a car."])
    np.testing.assert_array_equal(restored.tokenizer(texts), model.tokenizer(texts))
    np.testing.assert_allclose(restored.encode_text(texts), model.encode_text(texts), atol=1e-6)
    np.testing.assert_array_equal(restored.loss_layer.text_u_table.log_u.numpy(),
                                  model.loss_layer.text_u_table.log_u.numpy())
    assert float(restored.temperature()) == float(model.temperature())


def test_an_index_outside_the_u_tables_is_refused():
    with pytest.raises(ValueError, match="index must be in"):
        tiny.dual_encoder("sogclr").loss_layer(tf.ones((2, 8)), tf.ones((2, 8)),
                                               tf.constant([0, tiny.NUM_EXAMPLES]))


def test_adamw_decays_weights_but_not_norms_biases_or_the_temperature():
    """FastCLIP's AdamW: decoupled decay on kernels and embeddings only. With zero gradients
    Adam's own step is 0, so what one step changes is what the decay touches."""
    model = tiny.dual_encoder("sogclr", learnable=True, optimizer="adamw", learning_rate=0.5)
    assert float(model.weight_decay_loss()) == 0.0  # nothing of it left for the loss
    before = {v.path: v.numpy() for v in model.trainable_variables}
    model.optimizer.apply_gradients(
        [(tf.zeros_like(v), v) for v in model.trainable_variables])
    changed = {v.path for v in model.trainable_variables
               if not np.array_equal(v.numpy(), before[v.path])}
    excluded = ("batch_norm", "layer_norm", "bias", "temperature")
    expected = {p for p in before
                if not any(word in p for word in excluded) and np.any(before[p] != 0)}
    assert changed == expected
    assert any("temperature" in p for p in before) and any("layer_norm" in p for p in before)
    assert any("embedding" in p for p in changed)
