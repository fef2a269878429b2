"""Tests of tf_sogclr.models.text: the tokenizer and the text encoder."""

import numpy as np
import pytest
import tensorflow as tf

import tiny
from tf_sogclr.models import text as text_lib
from tf_sogclr.training import modalities


def test_tokenizer_vocabulary_travels_in_checkpoints(tmp_path):
    source = tiny.tokenizer()
    texts = tf.constant(["A photo of a DOG!", "an unseen word", ""])
    ids = source(texts).numpy()
    assert ids.shape == (3, tiny.LENGTH) and ids.dtype == np.int32
    assert ids[0, 4] > 1 and ids[1, 1] == 1 and not ids[2].any()  # known, unknown, padding
    assert source.vocabulary[:2] == ["", "[UNK]"] and "dog" in source.vocabulary
    path = tf.train.Checkpoint(tokenizer=source).save(str(tmp_path / "ckpt"))
    assert modalities.vocabulary_from_checkpoint(path) == source.vocabulary
    other = text_lib.TextTokenizer(tiny.VOCAB, tiny.LENGTH, vocabulary=["dog", "zebra"])
    assert not np.array_equal(other(texts).numpy(), ids)
    tf.train.Checkpoint(tokenizer=other).restore(path).assert_consumed()
    np.testing.assert_array_equal(other(texts).numpy(), ids)
    with pytest.raises(ValueError, match="tf.string"):
        source(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="vocab_size"):
        text_lib.TextTokenizer(vocab_size=2)
    with pytest.raises(ValueError, match="no tokens"):
        text_lib.TextTokenizer.from_texts(["...", "!"], tiny.VOCAB, tiny.LENGTH)


@pytest.mark.parametrize("kind", text_lib.TEXT_ENCODERS)
def test_text_encoder_ignores_padding_and_compiles(kind):
    encoder = text_lib.TextEncoder(tiny.VOCAB, tiny.LENGTH, kind, width=8, num_layers=2, num_heads=2)
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
        text_lib.TextEncoder(tiny.VOCAB, tiny.LENGTH, "rnn")
    with pytest.raises(ValueError, match="divisible"):
        text_lib.TextEncoder(tiny.VOCAB, tiny.LENGTH, "transformer", width=6, num_heads=4)
