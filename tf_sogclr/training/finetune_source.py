"""Where fine-tuning's pretrained encoder comes from: a checkpoint or a SavedModel, checked.

`resolve_source` turns --checkpoint (or the newest checkpoint in --model_dir) into a `Source`
by looking at files only; `check_saved_model` reads a SavedModel's signatures from
saved_model.pb (nothing is loaded) and refuses one that does not serve images of the run's
shape as "features" (`tf_sogclr.export` writes such SavedModels).
"""

import os
import typing

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from tf_sogclr import export

SERVING_SIGNATURE = "serving_default"
FEATURES_KEY = "features"


SCRATCH = "none"  # --checkpoint=none: the supervised baseline, no pretrained weights


class Source(typing.NamedTuple):
    """Where pretrained weights come from: kind "checkpoint" (a prefix), "saved_model" (a dir)
    or "scratch" (path "none": a randomly initialised encoder, the supervised baseline)."""

    kind: str
    path: str


def _is_checkpoint_prefix(path):
    return tf.io.gfile.exists(path + ".index")


def resolve_source(pretrain_cfg, finetune_cfg):
    """The `Source` to fine-tune from (only looks at files); ValueError naming the flag if none.

    --checkpoint: a checkpoint prefix, a directory of checkpoints, a SavedModel, a directory
    of numbered exports (`export.export_for_step`), or "none" (train from scratch); unset: the
    newest checkpoint in --model_dir.
    """
    path = finetune_cfg.checkpoint
    if path == SCRATCH:
        return Source("scratch", SCRATCH)
    if path is None:
        model_dir = pretrain_cfg.run.model_dir
        latest = tf.train.latest_checkpoint(model_dir) if tf.io.gfile.isdir(model_dir) else None
        if latest is None:
            raise ValueError(
                f"--train_mode=finetune needs --checkpoint or a pretraining checkpoint in "
                f"--model_dir={model_dir} (found none there).")
        return Source("checkpoint", latest)
    path = path.rstrip("/") or path
    if tf.io.gfile.isdir(path):
        if tf.saved_model.contains_saved_model(path):
            return Source("saved_model", path)
        latest = tf.train.latest_checkpoint(path)
        if latest is not None:
            return Source("checkpoint", latest)
        latest = export.latest_export(path)
        if latest is not None:
            return Source("saved_model", latest)
    elif _is_checkpoint_prefix(path):
        return Source("checkpoint", path)
    raise ValueError(
        f"--checkpoint={path} is neither a checkpoint (a prefix with an .index file, or a "
        "directory with a 'checkpoint' file) nor a SavedModel directory (saved_model.pb).")


def _read_saved_model_proto(path):
    proto = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if tf.io.gfile.exists(pb):
        with tf.io.gfile.GFile(pb, "rb") as f:
            proto.ParseFromString(f.read())
    else:
        with tf.io.gfile.GFile(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), proto)
    return proto


def check_saved_model(path, image_shape):
    """Checks (from saved_model.pb only) that `path` serves images of `image_shape` -> "features".

    Returns the name of a training-mode endpoint ("serve_training" of `tf_sogclr.export`) or None.
    """
    meta_graph = _read_saved_model_proto(path).meta_graphs[0]
    signatures = meta_graph.signature_def
    if SERVING_SIGNATURE not in signatures:
        raise ValueError(f"--checkpoint={path} is a SavedModel without a {SERVING_SIGNATURE!r} "
                         f"signature (it has {sorted(signatures)}).")
    signature = signatures[SERVING_SIGNATURE]
    if FEATURES_KEY not in signature.outputs:
        raise ValueError(f"--checkpoint={path}: signature {SERVING_SIGNATURE!r} returns "
                         f"{sorted(signature.outputs)}, not {FEATURES_KEY!r}.")
    if len(signature.inputs) != 1:
        raise ValueError(f"--checkpoint={path}: signature {SERVING_SIGNATURE!r} takes "
                         f"{sorted(signature.inputs)}; fine-tuning needs one images input.")
    tensor_shape = next(iter(signature.inputs.values())).tensor_shape
    dims = None if tensor_shape.unknown_rank else [d.size for d in tensor_shape.dim]
    if dims is not None and (len(dims) != 4 or any(
            d not in (-1, want) for d, want in zip(dims[1:], image_shape))):
        raise ValueError(
            f"--checkpoint={path} serves images of shape {dims}, but --image_size and the "
            f"dataset give [-1, {', '.join(map(str, image_shape))}].")
    children = {c.local_name for c in meta_graph.object_graph_def.nodes[0].children}
    if {export.SERVE_ENDPOINT, export.TRAINING_ENDPOINT} <= children:
        return export.TRAINING_ENDPOINT
    return None
