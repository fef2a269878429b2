"""SavedModel exports: an image encoder with its heads, or both towers of a dual encoder.

    encoder         export_saved_model, export_for_step, load_encoder (unimodal)
    dual_encoder    export_dual_encoder(_for_step), LoadedDualEncoder (image-text)
    reusable        TF Hub's Reusable SavedModel API (both exports follow it)
    saved_model     atomic writes, keep-newest rotation, latest_export
"""

from tf_sogclr.export.dual_encoder import (ENCODE_IMAGE, ENCODE_TEXT, IMAGE_TOWER, TEXT_TOWER,
                                           LoadedDualEncoder, export_dual_encoder,
                                           export_dual_encoder_for_step)
from tf_sogclr.export.encoder import (FEATURES_ENDPOINT, INPUT_NAME, SERVE_ENDPOINT,
                                      SERVING_SIGNATURE, TRAINING_ENDPOINT, LoadedEncoder,
                                      export_for_step, export_saved_model, load_encoder)
from tf_sogclr.export.saved_model import (is_complete_export, latest_export,
                                          remove_old_exports, save_atomically)

__all__ = [
    "ENCODE_IMAGE", "ENCODE_TEXT", "IMAGE_TOWER", "TEXT_TOWER", "LoadedDualEncoder",
    "export_dual_encoder", "export_dual_encoder_for_step", "FEATURES_ENDPOINT", "INPUT_NAME",
    "SERVE_ENDPOINT", "SERVING_SIGNATURE", "TRAINING_ENDPOINT", "LoadedEncoder",
    "export_for_step", "export_saved_model", "load_encoder", "is_complete_export",
    "latest_export", "remove_old_exports", "save_atomically",
]
