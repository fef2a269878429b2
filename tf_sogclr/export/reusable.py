"""TF Hub's Reusable SavedModel API over Keras layers, for the objects an export saves.

An object following it has `__call__(inputs, training=False)`, `variables`,
`trainable_variables` and `regularization_losses`, so `hub.KerasLayer(obj, trainable=True)`
(or `hub.KerasLayer(path, ...)` when it is the SavedModel's root) fine-tunes it inside a
tf-keras model. Keras 3 variables are not `tf.Variable`s, so `tf.Module`'s own variable
properties would find none: the lists are kept as plain tracked lists (as
`keras.export.ExportArchive` does).
"""

import tensorflow as tf


def holding_variables(parts):
    """A trackable object whose `variables`, `trainable_variables` and
    `non_trainable_variables` are those of the Keras layers `parts`, in order."""
    obj = tf.__internal__.tracking.AutoTrackable()
    obj.variables = [v for p in parts for v in p.variables]
    obj.trainable_variables = [v for p in parts for v in p.trainable_variables]
    obj.non_trainable_variables = [v for p in parts for v in p.non_trainable_variables]
    return obj


def reusable_object(parts, call, input_spec):
    """A trackable object with the Reusable SavedModel API over the Keras layers `parts`.

    `call(inputs, training)` runs them (`inputs` as `input_spec` describes); it is traced for
    `training=False` and `training=True` (TF Hub passes a Python bool), so errors surface
    before anything is written. `regularization_losses` is empty: weight decay lives in the
    optimiser. Add further endpoints as attributes of the returned object.
    """
    obj = holding_variables(parts)
    obj.regularization_losses = []
    obj.__call__ = tf.function(call, autograph=False)
    for training in (False, True):
        obj.__call__.get_concrete_function(input_spec, training=training)
    return obj
