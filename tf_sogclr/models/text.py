"""Text side of the bimodal model: a caption tokeniser and small text encoders (Keras layers).

`TextTokenizer` turns raw strings `[b]` into token ids `[b, max_text_length]` with
`keras.layers.TextVectorization` (lower case, punctuation stripped, whitespace split; id 0 is
padding, 1 out-of-vocabulary). Its vocabulary is built once from the training captions
(`TextTokenizer.from_texts`) and travels with the model: a `tf.train.Checkpoint` holding the
tokenizer saves the vocabulary as a string tensor and restoring it resets the lookup table,
so a restored model maps every caption to the ids it was trained with. (TextVectorization's
own lookup table is a `StaticHashTable`, which checkpoints do not hold.) A SavedModel that
calls the tokenizer carries the table itself.

`TextEncoder` maps token ids to pooled features `[b, width]`: a pre-norm Transformer
("transformer") or an embedding bag with an MLP ("mlp"), both mean-pooled over real tokens.
"""

import numbers

import keras
import tensorflow as tf

from tf_sogclr.config import TEXT_ENCODERS

STANDARDIZE = "lower_and_strip_punctuation"
NUM_SPECIAL_TOKENS = 2  # "" (padding, id 0) and "[UNK]" (id 1).


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


class _VocabularyCheckpoint(tf.__internal__.tracking.Trackable):
    """Checkpoint state of a tokenizer: its vocabulary as a string tensor; restoring resets it."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def _serialize_to_tensors(self):
        with tf.device("/cpu:0"):
            return {"vocabulary": tf.constant(self._tokenizer.vocabulary, tf.string)}

    def _restore_from_tensors(self, restored_tensors):
        if not tf.executing_eagerly():
            raise ValueError("A TextTokenizer vocabulary can only be restored eagerly.")
        values = restored_tensors["vocabulary"].numpy()
        self._tokenizer.set_vocabulary([v.decode("utf-8") for v in values])
        return tf.no_op()


@keras.saving.register_keras_serializable(package="tf_sogclr")
class TextTokenizer(keras.layers.Layer):
    """Raw strings `[b]` (tf.string) -> token ids int32 `[b, max_text_length]`, 0 = padding.

    `vocab_size` counts every id, padding and out-of-vocabulary included; `vocabulary` is the
    list `get_vocabulary()` returned (special tokens first) or the plain tokens.
    """

    def __init__(self, vocab_size=1000, max_text_length=16, vocabulary=None, **kwargs):
        self.vocab_size = _check_int("vocab_size", vocab_size, NUM_SPECIAL_TOKENS + 1)
        self.max_text_length = _check_int("max_text_length", max_text_length, 1)
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.vectorizer = keras.layers.TextVectorization(
            max_tokens=self.vocab_size, standardize=STANDARDIZE, split="whitespace",
            output_mode="int", output_sequence_length=self.max_text_length,
            vocabulary=self._strip_special(vocabulary) if vocabulary else None,
            name="text_vectorization")
        self.vocabulary_checkpoint = _VocabularyCheckpoint(self)
        self.built = True

    @classmethod
    def from_texts(cls, texts, vocab_size=1000, max_text_length=16, **kwargs):
        """A tokenizer whose vocabulary is the `vocab_size - 2` most frequent tokens of `texts`.

        `texts`: a list of strings or a `tf.data.Dataset` of tf.string scalars or batches.
        """
        vocab_size = _check_int("vocab_size", vocab_size, NUM_SPECIAL_TOKENS + 1)
        if isinstance(texts, tf.data.Dataset):
            if texts.element_spec.dtype != tf.string:
                raise ValueError(f"texts must hold tf.string, got {texts.element_spec}.")
        else:
            texts = [str(t) for t in texts]
            if not texts:
                raise ValueError("texts must hold at least one caption, got none.")
        counter = keras.layers.TextVectorization(max_tokens=vocab_size, standardize=STANDARDIZE,
                                                 split="whitespace", output_mode="int")
        counter.adapt(texts)
        vocabulary = counter.get_vocabulary()
        if len(vocabulary) <= NUM_SPECIAL_TOKENS:
            raise ValueError("texts hold no tokens after standardisation (lower case, no "
                             "punctuation): cannot build a vocabulary.")
        return cls(vocab_size, max_text_length, vocabulary=vocabulary, **kwargs)

    @staticmethod
    def _strip_special(vocabulary):
        vocabulary = [str(v) for v in vocabulary]
        return vocabulary[NUM_SPECIAL_TOKENS:] if vocabulary[:1] == [""] else vocabulary

    @property
    def vocabulary(self):
        """The vocabulary by id, special tokens first: `["", "[UNK]", ...]` (list of str)."""
        return [str(v) for v in self.vectorizer.get_vocabulary(include_special_tokens=True)]

    def set_vocabulary(self, vocabulary):
        """Replaces the vocabulary (a list as `vocabulary` returns, or the plain tokens)."""
        tokens = self._strip_special(vocabulary)
        if len(tokens) + NUM_SPECIAL_TOKENS > self.vocab_size:
            raise ValueError(f"vocabulary has {len(tokens) + NUM_SPECIAL_TOKENS} ids but "
                             f"vocab_size is {self.vocab_size}.")
        self.vectorizer.set_vocabulary(tokens)

    def call(self, texts):
        texts = tf.convert_to_tensor(texts)
        if texts.dtype != tf.string or texts.shape.rank != 1:
            raise ValueError(f"texts must be a [batch] tf.string tensor, got dtype "
                             f"{texts.dtype.name} and shape {texts.shape}.")
        return tf.cast(self.vectorizer(texts), tf.int32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.max_text_length)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_text_length=self.max_text_length,
                      vocabulary=self.vocabulary)
        return config


@keras.saving.register_keras_serializable(package="tf_sogclr")
class TextEncoder(keras.layers.Layer):
    """Token ids `[b, L]` (0 = padding) -> mean-pooled features float32 `[b, width]`.

    "transformer": token + learned position embeddings, `num_layers` pre-norm blocks
    (multi-head self-attention over real tokens, GELU MLP of `mlp_ratio * width`), a final
    layer norm. "mlp": token embeddings, then two dense layers (ReLU between).
    """

    def __init__(self, vocab_size, max_text_length, kind="transformer", width=128,
                 num_layers=2, num_heads=4, mlp_ratio=2, **kwargs):
        if kind not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {kind!r}.")
        self.vocab_size = _check_int("vocab_size", vocab_size, NUM_SPECIAL_TOKENS + 1)
        self.max_text_length = _check_int("max_text_length", max_text_length, 1)
        self.width = _check_int("text_width", width, 1)
        self.num_layers = _check_int("text_layers", num_layers, 1)
        self.num_heads = _check_int("num_heads", num_heads, 1)
        self.mlp_ratio = _check_int("mlp_ratio", mlp_ratio, 1)
        if kind == "transformer" and self.width % self.num_heads:
            raise ValueError(f"text_width={width} must be divisible by the {num_heads} "
                             "attention heads.")
        super().__init__(**kwargs)
        self.kind = kind
        init = keras.initializers.RandomNormal(stddev=0.02)
        self.token_embedding = keras.layers.Embedding(
            self.vocab_size, self.width, embeddings_initializer=init, name="token_embedding")
        if kind == "mlp":
            self.dense_0 = keras.layers.Dense(self.width, activation="relu", name="mlp_dense_0")
            self.dense_1 = keras.layers.Dense(self.width, name="mlp_dense_1")
            return
        # One attribute per layer: Keras 3 hides layers kept in lists from tf.train.Checkpoint.
        for j in range(self.num_layers):
            setattr(self, f"attention_norm_{j}",
                    keras.layers.LayerNormalization(epsilon=1e-5, name=f"layer_norm_{j}_0"))
            setattr(self, f"attention_{j}", keras.layers.MultiHeadAttention(
                self.num_heads, self.width // self.num_heads, name=f"attention_{j}"))
            setattr(self, f"mlp_norm_{j}",
                    keras.layers.LayerNormalization(epsilon=1e-5, name=f"layer_norm_{j}_1"))
            setattr(self, f"mlp_in_{j}", keras.layers.Dense(
                self.mlp_ratio * self.width, activation="gelu", name=f"mlp_{j}_dense_0"))
            setattr(self, f"mlp_out_{j}", keras.layers.Dense(self.width, name=f"mlp_{j}_dense_1"))
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="layer_norm_final")

    def build(self, input_shape):
        length = input_shape[-1]
        if length is not None and length != self.max_text_length:
            raise ValueError(f"token ids must have {self.max_text_length} columns "
                             f"(max_text_length), got shape {input_shape}.")
        batch = input_shape[0]
        self.token_embedding.build((batch, self.max_text_length))
        hidden = (batch, self.max_text_length, self.width)
        if self.kind == "mlp":
            self.dense_0.build((batch, self.width))
            self.dense_1.build((batch, self.width))
        else:
            self.position_embedding = self.add_weight(
                shape=(self.max_text_length, self.width),
                initializer=keras.initializers.RandomNormal(stddev=0.01),
                name="position_embedding")
            for j in range(self.num_layers):
                getattr(self, f"attention_norm_{j}").build(hidden)
                getattr(self, f"attention_{j}").build(hidden, hidden)
                getattr(self, f"mlp_norm_{j}").build(hidden)
                getattr(self, f"mlp_in_{j}").build(hidden)
                getattr(self, f"mlp_out_{j}").build(
                    (batch, self.max_text_length, self.mlp_ratio * self.width))
            self.final_norm.build(hidden)
        self.built = True

    def call(self, tokens, training=False):
        tokens = tf.convert_to_tensor(tokens)
        if tokens.shape.rank != 2 or not tokens.dtype.is_integer:
            raise ValueError(f"tokens must be an integer [batch, length] tensor, got dtype "
                             f"{tokens.dtype.name} and shape {tokens.shape}.")
        real = tf.not_equal(tokens, 0)  # [b, L]
        x = self.token_embedding(tokens)  # [b, L, w]
        if self.kind == "transformer":
            x = x + tf.cast(self.position_embedding, x.dtype)[None]
            attention_mask = tf.logical_and(real[:, None, :], tf.ones_like(real)[:, :, None])
            for j in range(self.num_layers):
                h = getattr(self, f"attention_norm_{j}")(x)
                x = x + getattr(self, f"attention_{j}")(h, h, attention_mask=attention_mask,
                                                        training=training)
                h = getattr(self, f"mlp_norm_{j}")(x)
                x = x + getattr(self, f"mlp_out_{j}")(getattr(self, f"mlp_in_{j}")(h))
            x = self.final_norm(x)
        weights = tf.cast(real, x.dtype)[:, :, None]
        pooled = tf.reduce_sum(x * weights, axis=1) / tf.maximum(
            tf.reduce_sum(weights, axis=1), tf.cast(1.0, x.dtype))
        if self.kind == "mlp":
            pooled = self.dense_1(self.dense_0(pooled))
        return tf.cast(pooled, tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.width)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_text_length=self.max_text_length,
                      kind=self.kind, width=self.width, num_layers=self.num_layers,
                      num_heads=self.num_heads, mlp_ratio=self.mlp_ratio)
        return config

