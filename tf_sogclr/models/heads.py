"""SimCLR's projection head: features -> projections, with the hidden layers fine-tuning reads.
"""

import keras
import tensorflow as tf

from tf_sogclr.config import PROJECTION_HEAD_MODES
from tf_sogclr.models import batch_norm


@keras.saving.register_keras_serializable(package="tf_sogclr")
class ProjectionHead(keras.layers.Layer):
    """SimCLR's projection head: features `[b, f]` -> projections `[b, proj_out_dim]`.

    "nonlinear": `num_proj_layers` dense + batch norm layers, ReLU between them; hidden
    layers keep the input width, the last has `proj_out_dim` units and no bias or beta.
    "linear": one such last layer. "none": identity. `call(..., return_hiddens=True)` also
    returns the list [features, hidden 1, ...] that SimCLR's `ft_proj_selector` indexes.
    """

    def __init__(self, mode="nonlinear", proj_out_dim=128, num_proj_layers=2,
                 batch_norm_decay=0.9, global_bn=False, **kwargs):
        if mode not in PROJECTION_HEAD_MODES:
            raise ValueError(
                f"proj_head_mode must be one of {PROJECTION_HEAD_MODES}, got {mode!r}.")
        if mode != "none" and not (isinstance(proj_out_dim, int) and proj_out_dim >= 1):
            raise ValueError(f"proj_out_dim must be an integer >= 1, got {proj_out_dim!r}.")
        if mode == "nonlinear" and not (isinstance(num_proj_layers, int) and num_proj_layers >= 1):
            raise ValueError(f"num_proj_layers must be an integer >= 1, got {num_proj_layers!r}.")
        super().__init__(**kwargs)
        self.mode = mode
        self.proj_out_dim = proj_out_dim
        self.num_proj_layers = num_proj_layers if mode == "nonlinear" else int(mode == "linear")
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = global_bn

    def build(self, input_shape):
        width = int(input_shape[-1])
        for j in range(self.num_proj_layers):
            last = j == self.num_proj_layers - 1
            dense = keras.layers.Dense(
                self.proj_out_dim if last else width, use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                name=f"projection_dense_{j}")
            norm = batch_norm.batch_norm_layer(f"projection_batch_norm_{j}", self.batch_norm_decay,
                                           self.global_bn, center=not last)
            dense.build(input_shape if j == 0 else (None, width))
            norm.build((None, self.proj_out_dim if last else width))
            # One attribute per layer: Keras 3 hides layers kept in lists from tf.train.Checkpoint.
            setattr(self, f"dense_{j}", dense)
            setattr(self, f"batch_norm_{j}", norm)

    def call(self, features, training=False, return_hiddens=False):
        hiddens = [features]
        x = features
        for j in range(self.num_proj_layers):
            x = getattr(self, f"batch_norm_{j}")(getattr(self, f"dense_{j}")(x), training=training)
            if j != self.num_proj_layers - 1:
                x = tf.nn.relu(x)
            hiddens.append(x)
        return (x, hiddens) if return_hiddens else x

    def compute_output_shape(self, input_shape):
        return input_shape if self.mode == "none" else (*input_shape[:-1], self.proj_out_dim)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, proj_out_dim=self.proj_out_dim,
                      num_proj_layers=self.num_proj_layers,
                      batch_norm_decay=self.batch_norm_decay, global_bn=self.global_bn)
        return config
