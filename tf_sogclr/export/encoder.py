"""SavedModel export of an image encoder (and its heads), and loading it back.

`export_saved_model` writes a SavedModel whose object holds:

    serve(images)           -> {"features", "projection", "logits"}, inference mode; also the
                               `serving_default` signature (input name `images`)
    serve_training(images)  -> the same dict in training mode: batch norm uses batch statistics
                               and updates its moving averages (TFSMLayer's training endpoint)
    features(images)        -> pooled encoder features `[b, f]`, inference mode
    __call__(images, training=False) -> the features `[b, f]`; training=True uses batch
                               statistics and updates the moving averages
    variables, trainable_variables, non_trainable_variables   (lists of tf.Variable)
    regularization_losses   (empty: weight decay lives in the optimiser)

The callable root, the variable lists and `regularization_losses` are TF Hub's Reusable
SavedModel API, so `hub.KerasLayer(path, trainable=True)` fine-tunes the encoder inside a
tf-keras model. The root returns the features alone, as TF Hub's image feature-vector models
do (SimCLR TF2's hub module returns a dict; here the dict is the `serve` endpoint).

`images` are float32 `[b, H, W, C]` in [0, 1]; every output is float32 (also under mixed
precision). "projection" and "logits" are there only when the model has those heads. Trainable
variables stay trainable, so `keras.layers.TFSMLayer(path, call_endpoint="serving_default")`
(or "serve" with `call_training_endpoint="serve_training"`) fine-tunes the encoder with `fit`.

Atomic writes and rotation: `export.saved_model`. `load_encoder` loads an export back
(features for k-NN or linear evaluation).
"""

import numbers

import keras
import tensorflow as tf

from tf_sogclr import checks
from tf_sogclr.export import reusable, saved_model
from tf_sogclr.export.saved_model import check_image_shape, check_path, check_step


SERVING_SIGNATURE = "serving_default"
SERVE_ENDPOINT = "serve"
TRAINING_ENDPOINT = "serve_training"
FEATURES_ENDPOINT = "features"
INPUT_NAME = "images"


def export_saved_model(model, export_dir, image_shape, include_projection=True,
                       include_logits=True, overwrite=False):
    """Writes `model`'s encoder (and heads) as a SavedModel at `export_dir`; returns the path.

    `model` is a built `SogCLRModel` or a bare encoder (Keras layer: images `[b, H, W, C]` ->
    features `[b, f]`); `image_shape` is `(H, W, C)` (H, W may be None). Call it from the
    cross-replica context (not inside `strategy.run`).
    """
    export_dir = check_path("export_dir", export_dir)
    image_shape = check_image_shape(image_shape)
    checks.boolean("include_projection", include_projection)
    checks.boolean("include_logits", include_logits)
    checks.boolean("overwrite", overwrite)
    saved_model.check_destination(export_dir, overwrite)
    module = _export_module(model, image_shape, include_projection, include_logits)
    return saved_model.save_atomically(module, export_dir, {
        SERVING_SIGNATURE: getattr(module, SERVE_ENDPOINT).get_concrete_function()}, overwrite)


def export_for_step(model, base_dir, step, image_shape, keep_max=5, include_projection=True,
                    include_logits=True, overwrite=True):
    """Exports to `base_dir/<step>` (SimCLR's `saved_model/<step>`), keeps the newest `keep_max`.

    Numeric subdirectories beyond the newest `keep_max` are deleted; other entries are left
    alone. An existing `<step>` export is replaced unless `overwrite=False`. Returns the path.
    """
    base_dir = check_path("base_dir", base_dir)
    step = check_step(step)
    if isinstance(keep_max, bool) or not isinstance(keep_max, numbers.Integral) or keep_max < 1:
        raise ValueError(f"keep_max must be an integer >= 1, got {keep_max!r}.")
    path = export_saved_model(model, saved_model.join_path(base_dir, str(step)), image_shape,
                              include_projection=include_projection,
                              include_logits=include_logits, overwrite=overwrite)
    saved_model.remove_old_exports(base_dir, keep_max)
    return path


def load_encoder(path):
    """Loads an export as a `LoadedEncoder`: `.features(images)` -> `[b, f]`, `(images)` -> dict.

    Unlike the object of `tf.saved_model.load`, its bound endpoints keep the variables alive.
    """
    path = check_path("path", path)
    if not saved_model.is_complete_export(path):
        raise ValueError(f"path {path!r} is not a complete SavedModel export "
                         "(no saved_model.pb and variables index).")
    return LoadedEncoder(tf.saved_model.load(path), path)


class LoadedEncoder:
    """An export loaded back, for feature extraction and fine-tuning.

    `features(images [b, H, W, C])` -> `[b, f]`; `__call__(images, training=False)` -> the
    `serve` / `serve_training` dict; variable lists as saved; `saved_model` is the raw object.
    (A bare `tf.saved_model.load(path).features` loses its variables with the object.)
    """

    def __init__(self, saved_model, path=None):
        missing = [name for name in (SERVE_ENDPOINT, TRAINING_ENDPOINT, FEATURES_ENDPOINT,
                                     "trainable_variables") if not hasattr(saved_model, name)]
        if missing:
            raise ValueError(f"path {path!r} is a SavedModel without {missing}; was it written "
                             "by tf_sogclr.export.export_saved_model?")
        self.saved_model = saved_model
        self.path = path

    def features(self, images):
        """Pooled encoder features `[b, f]` float32, inference mode."""
        return self.saved_model.features(images)

    def __call__(self, images, training=False):
        """{"features", "projection"?, "logits"?}; training=True updates batch-norm statistics."""
        endpoint = TRAINING_ENDPOINT if training else SERVE_ENDPOINT
        return getattr(self.saved_model, endpoint)(images)

    @property
    def variables(self):
        return list(self.saved_model.variables)

    @property
    def trainable_variables(self):
        return list(self.saved_model.trainable_variables)

    @property
    def non_trainable_variables(self):
        return list(self.saved_model.non_trainable_variables)

    @property
    def signatures(self):
        return self.saved_model.signatures


def _export_module(model, image_shape, include_projection, include_logits):
    """The tf.Module-like object to save: endpoints traced, variables listed."""
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"model must be a SogCLRModel or a Keras encoder, got {type(model)}.")
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        encoder, projection_head, linear_head = model, None, None
    else:
        projection_head = getattr(model, "projection_head", None) if include_projection else None
        linear_head = getattr(model, "linear_head", None) if include_logits else None
    parts = [p for p in (encoder, projection_head, linear_head) if p is not None]
    for part in parts:
        if not part.built:
            raise ValueError(f"model must be built before export ({part.name} is not); call "
                             "model.build((None, H, W, C)) or run it on a batch.")

    def outputs(images, training):
        features = encoder(images, training=training)
        result = {"features": tf.cast(features, tf.float32)}
        if projection_head is not None:
            result["projection"] = tf.cast(projection_head(features, training=training),
                                           tf.float32)
        if linear_head is not None:
            result["logits"] = tf.cast(linear_head(features), tf.float32)
        return result

    spec = [tf.TensorSpec([None, *image_shape], tf.float32, name=INPUT_NAME)]

    def serve(images):
        return outputs(images, training=False)

    def serve_training(images):
        return outputs(images, training=True)

    def call(images, training=False):
        return tf.cast(encoder(images, training=training), tf.float32)

    def features(images):
        return call(images, training=False)

    # The root is TF Hub's Reusable SavedModel over the encoder and heads; it runs the encoder.
    module = reusable.reusable_object(parts, call, spec[0])
    for name, fn in ((SERVE_ENDPOINT, serve), (TRAINING_ENDPOINT, serve_training),
                     (FEATURES_ENDPOINT, features)):
        function = tf.function(fn, input_signature=spec, autograph=False)
        function.get_concrete_function()  # Trace now: errors before anything is written.
        setattr(module, name, function)
    return module
