"""SavedModel export of the encoder (and heads), and loading it back for Keras fine-tuning.

`export_saved_model` writes a SavedModel whose object holds:

    serve(images)           -> {"features", "projection", "logits"}, inference mode; also the
                               `serving_default` signature (input name `images`)
    serve_training(images)  -> the same dict in training mode: batch norm uses batch statistics
                               and updates its moving averages (TFSMLayer's training endpoint)
    features(images)        -> pooled encoder features `[b, f]`, inference mode
    variables, trainable_variables, non_trainable_variables   (lists of tf.Variable)

`images` are float32 `[b, H, W, C]` in [0, 1]; every output is float32 (also under mixed
precision). "projection" and "logits" are there only when the model has those heads. Trainable
variables stay trainable, so `keras.layers.TFSMLayer(path, call_endpoint="serving_default")`
(or "serve" with `call_training_endpoint="serve_training"`) fine-tunes the encoder with `fit`.

Writes are atomic where the file system allows it: the SavedModel is written to a sibling
`<export_dir>.tmp-<pid>-<token>` and renamed into place, so a killed export leaves only a
`.tmp-` directory, which `latest_export` ignores. Object stores (gs://) have no atomic
directory rename; there `latest_export` also checks that the variables index (the last file
moved) is present. All file operations use `tf.io.gfile`. With several workers, export from
the chief only. `load_encoder` loads an export back (features for k-NN or linear evaluation).
"""

import numbers
import os
import uuid

import keras
import tensorflow as tf

SERVING_SIGNATURE = "serving_default"
SERVE_ENDPOINT = "serve"
TRAINING_ENDPOINT = "serve_training"
FEATURES_ENDPOINT = "features"
INPUT_NAME = "images"

_TMP_MARKER = ".tmp-"
_OLD_MARKER = ".old-"


def export_saved_model(model, export_dir, image_shape, include_projection=True,
                       include_logits=True, overwrite=False):
    """Writes `model`'s encoder (and heads) as a SavedModel at `export_dir`; returns the path.

    `model` is a built `SogCLRModel` or a bare encoder (Keras layer: images `[b, H, W, C]` ->
    features `[b, f]`); `image_shape` is `(H, W, C)` (H, W may be None). Call it from the
    cross-replica context (not inside `strategy.run`).
    """
    export_dir = _check_path("export_dir", export_dir)
    image_shape = _check_image_shape(image_shape)
    _check_bool("include_projection", include_projection)
    _check_bool("include_logits", include_logits)
    _check_bool("overwrite", overwrite)
    _check_destination(export_dir, overwrite)
    module = _export_module(model, image_shape, include_projection, include_logits)
    return save_atomically(module, export_dir, {
        SERVING_SIGNATURE: getattr(module, SERVE_ENDPOINT).get_concrete_function()}, overwrite)


def save_atomically(module, export_dir, signatures, overwrite=False):
    """`tf.saved_model.save(module, ...)` to a `.tmp-` sibling, renamed to `export_dir`.

    The write pattern of `export_saved_model`, for any trackable `module` with its own
    `signatures` (dict name -> concrete function). Returns `export_dir`.
    """
    export_dir = _check_path("export_dir", export_dir)
    _check_bool("overwrite", overwrite)
    _check_destination(export_dir, overwrite)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir = f"{export_dir}{_TMP_MARKER}{token}"
    try:
        tf.saved_model.save(module, tmp_dir, signatures=signatures)
    except BaseException:
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
        raise
    _move_into_place(tmp_dir, export_dir, f"{export_dir}{_OLD_MARKER}{token}")
    return export_dir


def _check_destination(export_dir, overwrite):
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        raise ValueError("exports must be written from the cross-replica context, "
                         "not inside strategy.run.")
    if _non_empty_dir(export_dir) and not overwrite:
        raise ValueError(f"export_dir {export_dir!r} exists and is not empty; pass "
                         "overwrite=True to replace it.")
    if tf.io.gfile.exists(export_dir) and not tf.io.gfile.isdir(export_dir):
        raise ValueError(f"export_dir {export_dir!r} exists and is not a directory.")


def export_for_step(model, base_dir, step, image_shape, keep_max=5, include_projection=True,
                    include_logits=True, overwrite=True):
    """Exports to `base_dir/<step>` (SimCLR's `saved_model/<step>`), keeps the newest `keep_max`.

    Numeric subdirectories beyond the newest `keep_max` are deleted; other entries are left
    alone. An existing `<step>` export is replaced unless `overwrite=False`. Returns the path.
    """
    base_dir = _check_path("base_dir", base_dir)
    step = _check_step(step)
    if isinstance(keep_max, bool) or not isinstance(keep_max, numbers.Integral) or keep_max < 1:
        raise ValueError(f"keep_max must be an integer >= 1, got {keep_max!r}.")
    path = export_saved_model(model, _join(base_dir, str(step)), image_shape,
                              include_projection=include_projection,
                              include_logits=include_logits, overwrite=overwrite)
    remove_old_exports(base_dir, keep_max)
    return path


def remove_old_exports(base_dir, keep_max):
    """Deletes the numeric subdirectories of `base_dir` beyond the newest `keep_max`."""
    for old_step in sorted(_numeric_subdirs(base_dir))[:-keep_max]:
        tf.io.gfile.rmtree(_join(base_dir, str(old_step)))


def latest_export(base_dir):
    """Path of the complete export with the largest numeric name under `base_dir`, or None."""
    base_dir = _check_path("base_dir", base_dir)
    for step in sorted(_numeric_subdirs(base_dir), reverse=True):
        path = _join(base_dir, str(step))
        if _is_complete(path):
            return path
    return None


def load_encoder(path):
    """Loads an export as a `LoadedEncoder`: `.features(images)` -> `[b, f]`, `(images)` -> dict.

    Unlike the object of `tf.saved_model.load`, its bound endpoints keep the variables alive.
    """
    path = _check_path("path", path)
    if not _is_complete(path):
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

    def features(images):
        return tf.cast(encoder(images, training=False), tf.float32)

    # Keras variables are not tf.Variables, so tf.Module's own `variables` properties would
    # find none: keep them as plain tracked lists (as keras.export.ExportArchive does).
    module = tf.__internal__.tracking.AutoTrackable()
    module.variables = [v for p in parts for v in p.variables]
    module.trainable_variables = [v for p in parts for v in p.trainable_variables]
    module.non_trainable_variables = [v for p in parts for v in p.non_trainable_variables]
    for name, fn in ((SERVE_ENDPOINT, serve), (TRAINING_ENDPOINT, serve_training),
                     (FEATURES_ENDPOINT, features)):
        function = tf.function(fn, input_signature=spec, autograph=False)
        function.get_concrete_function()  # Trace now: errors before anything is written.
        setattr(module, name, function)
    return module


def _move_into_place(tmp_dir, export_dir, old_dir):
    """Renames `tmp_dir` to `export_dir`; a previous export is moved aside, then deleted."""
    moved_aside = False
    try:
        if tf.io.gfile.exists(export_dir):
            if tf.io.gfile.listdir(export_dir):
                tf.io.gfile.rename(export_dir, old_dir)
                moved_aside = True
            else:
                tf.io.gfile.rmtree(export_dir)
        parent = os.path.dirname(export_dir)
        if parent:
            tf.io.gfile.makedirs(parent)
        tf.io.gfile.rename(tmp_dir, export_dir)
    except BaseException:
        if moved_aside and not tf.io.gfile.exists(export_dir):
            tf.io.gfile.rename(old_dir, export_dir)
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
        raise
    if moved_aside:
        tf.io.gfile.rmtree(old_dir)


def _numeric_subdirs(base_dir):
    """Integer names of the subdirectories of `base_dir` that are all digits."""
    if not tf.io.gfile.isdir(base_dir):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(base_dir))
    return [int(name) for name in names if name.isdigit()]


def _is_complete(path):
    # On object stores the rename copies files in name order: variables.index comes last.
    return (tf.io.gfile.exists(_join(path, "saved_model.pb"))
            and tf.io.gfile.exists(_join(path, "variables", "variables.index")))


def _non_empty_dir(path):
    return tf.io.gfile.isdir(path) and bool(tf.io.gfile.listdir(path))


def _join(*parts):
    return "/".join(p.rstrip("/") for p in parts)


def _check_path(argument, path):
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path.rstrip("/"):
        raise ValueError(f"{argument} must be a non-empty path string, got {path!r}.")
    return path.rstrip("/")


def _check_step(step):
    if hasattr(step, "numpy"):  # Integer tensors and variables (optimizer.iterations).
        step = step.numpy()
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}.")
    return int(step)


def _check_image_shape(image_shape):
    try:
        shape = tuple(image_shape)
    except TypeError:
        shape = None
    ok = shape is not None and len(shape) == 3 and all(
        (d is None and i < 2) or (isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                  and d >= 1)
        for i, d in enumerate(shape))
    if not ok:
        raise ValueError("image_shape must be (height, width, channels) with positive integers "
                         f"(height and width may be None), got {image_shape!r}.")
    return tuple(None if d is None else int(d) for d in shape)


def _check_bool(argument, value):
    if not isinstance(value, bool):
        raise ValueError(f"{argument} must be True or False, got {value!r}.")
