"""SavedModel export of both towers of an image-text dual encoder, and loading it back.

The export holds two signatures, `encode_image` (float32 images in [0, 1]) and `encode_text`
(raw strings, through the tokenizer saved inside), both giving unit embeddings, and the
temperature. Each tower is also an object of TF Hub's Reusable SavedModel API
(`export.reusable`), `image_tower` and `text_tower`: `__call__(inputs, training=False)` -> the
unit embeddings, with the tower's variables, so
`hub.KerasLayer(hub.load(path).image_tower, trainable=True)` fine-tunes it in a tf-keras
model (the root is not callable: it holds two towers). Atomic writes and rotation:
`export.saved_model`.
"""

import tensorflow as tf

from tf_sogclr import checks
from tf_sogclr.export import reusable, saved_model


ENCODE_IMAGE, ENCODE_TEXT = "encode_image", "encode_text"
IMAGE_TOWER, TEXT_TOWER = "image_tower", "text_tower"


def _export_module(model, image_shape):
    if model.tokenizer is None:
        raise ValueError("model must have a tokenizer to export encode_text on raw strings.")
    if not model.built:
        raise ValueError("model must be built before export.")
    parts = [model.image_encoder, model.image_head, model.text_encoder, model.text_head]

    def image_tower(images, training=False):
        return model.encode_image(images, training=training)

    def text_tower(texts, training=False):
        return model.encode_tokens(model.tokenizer(texts), training=training)

    def encode_image(images):
        return {"embedding": image_tower(images)}

    def encode_text(texts):
        return {"embedding": text_tower(texts)}

    specs = {ENCODE_IMAGE: tf.TensorSpec([None, *image_shape], tf.float32, name="images"),
             ENCODE_TEXT: tf.TensorSpec([None], tf.string, name="texts")}
    module = reusable.holding_variables(parts)
    module.vectorizer = model.tokenizer.vectorizer  # Tracks the vocabulary's lookup table.
    module.temperature = tf.Variable(float(model.temperature()), trainable=False,
                                     name="temperature")
    setattr(module, IMAGE_TOWER, reusable.reusable_object(
        [model.image_encoder, model.image_head], image_tower, specs[ENCODE_IMAGE]))
    setattr(module, TEXT_TOWER, reusable.reusable_object(
        [model.text_encoder, model.text_head], text_tower, specs[ENCODE_TEXT]))
    for name, fn in ((ENCODE_IMAGE, encode_image), (ENCODE_TEXT, encode_text)):
        function = tf.function(fn, input_signature=[specs[name]], autograph=False)
        function.get_concrete_function()  # Trace now: errors before anything is written.
        setattr(module, name, function)
    return module


def export_dual_encoder(model, export_dir, image_shape, overwrite=False):
    """Writes both encoders of a `DualEncoderModel` as a SavedModel; returns the path.

    Signatures `encode_image(images [None, H, W, C] float32 in [0, 1])` and
    `encode_text(texts [None] tf.string)`, each -> {"embedding": unit vectors `[b, d]`}
    (inference mode); also callable as `loaded.encode_image(...)`. `temperature` is saved,
    and the towers as Reusable SavedModel objects `image_tower(images, training)` and
    `text_tower(texts, training)` -> unit vectors `[b, d]`.
    """
    export_dir = saved_model.check_path("export_dir", export_dir)
    image_shape = saved_model.check_image_shape(image_shape)
    checks.boolean("overwrite", overwrite)
    saved_model.check_destination(export_dir, overwrite)
    module = _export_module(model, image_shape)
    signatures = {name: getattr(module, name).get_concrete_function()
                  for name in (ENCODE_IMAGE, ENCODE_TEXT)}
    return saved_model.save_atomically(module, export_dir, signatures, overwrite)


def export_dual_encoder_for_step(model, base_dir, step, image_shape, keep_max=5):
    """Exports to `base_dir/<step>` (replacing it), keeps the newest `keep_max` exports."""
    base_dir = saved_model.check_path("base_dir", base_dir)
    step = saved_model.check_step(step)
    if isinstance(keep_max, bool) or not isinstance(keep_max, int) or keep_max < 1:
        raise ValueError(f"keep_max must be an integer >= 1, got {keep_max!r}.")
    path = export_dual_encoder(model, f"{base_dir}/{step}", image_shape, overwrite=True)
    saved_model.remove_old_exports(base_dir, keep_max)
    return path


class LoadedDualEncoder:
    """A dual-encoder export loaded back: `encode_image(images)`, `encode_text(strings)` ->
    unit embeddings `[b, d]`; keeps the loaded object (and so its variables) alive."""

    def __init__(self, path):
        path = saved_model.check_path("path", path)
        if not saved_model.is_complete_export(path):
            raise ValueError(f"path {path!r} is not a complete SavedModel saved_model.")
        self.saved_model = tf.saved_model.load(path)
        missing = [n for n in (ENCODE_IMAGE, ENCODE_TEXT) if not hasattr(self.saved_model, n)]
        if missing:
            raise ValueError(f"path {path!r} has no {missing}; was it written by "
                             "tf_sogclr.export.export_dual_encoder?")
        self.path = path

    def encode_image(self, images):
        return self.saved_model.encode_image(tf.convert_to_tensor(images, tf.float32))["embedding"]

    def encode_text(self, texts):
        return self.saved_model.encode_text(tf.convert_to_tensor(texts, tf.string))["embedding"]

    @property
    def temperature(self):
        return float(self.saved_model.temperature.numpy())
