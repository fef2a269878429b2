"""Atomic SavedModel writes, keep-newest rotation and finding the newest complete export.

Writes are atomic where the file system allows it: a SavedModel is written to a sibling
`<export_dir>.tmp-<pid>-<token>` and renamed into place, so a killed export leaves only a
`.tmp-` directory, which `latest_export` ignores. Object stores (gs://) have no atomic
directory rename; there `latest_export` also checks that the variables index (the last file
moved) is present. All file operations use `tf.io.gfile`. With several workers, export from
the chief only. The argument checks of every export function live here too.
"""

import numbers
import os
import uuid

import tensorflow as tf

from tf_sogclr import checks


_TMP_MARKER = ".tmp-"
_OLD_MARKER = ".old-"


def save_atomically(module, export_dir, signatures, overwrite=False):
    """`tf.saved_model.save(module, ...)` to a `.tmp-` sibling, renamed to `export_dir`.

    The write pattern of `export_saved_model`, for any trackable `module` with its own
    `signatures` (dict name -> concrete function). Returns `export_dir`.
    """
    export_dir = check_path("export_dir", export_dir)
    checks.boolean("overwrite", overwrite)
    check_destination(export_dir, overwrite)
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


def check_destination(export_dir, overwrite):
    """Raises unless an export may be written to `export_dir` now (cross-replica context;
    an empty or absent directory, or `overwrite`)."""
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        raise ValueError("exports must be written from the cross-replica context, "
                         "not inside strategy.run.")
    if _non_empty_dir(export_dir) and not overwrite:
        raise ValueError(f"export_dir {export_dir!r} exists and is not empty; pass "
                         "overwrite=True to replace it.")
    if tf.io.gfile.exists(export_dir) and not tf.io.gfile.isdir(export_dir):
        raise ValueError(f"export_dir {export_dir!r} exists and is not a directory.")


def remove_old_exports(base_dir, keep_max):
    """Deletes the numeric subdirectories of `base_dir` beyond the newest `keep_max`."""
    for old_step in sorted(_numeric_subdirs(base_dir))[:-keep_max]:
        tf.io.gfile.rmtree(join_path(base_dir, str(old_step)))


def latest_export(base_dir):
    """Path of the complete export with the largest numeric name under `base_dir`, or None."""
    base_dir = check_path("base_dir", base_dir)
    for step in sorted(_numeric_subdirs(base_dir), reverse=True):
        path = join_path(base_dir, str(step))
        if is_complete_export(path):
            return path
    return None


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


def is_complete_export(path):
    """True when `path` holds a whole SavedModel (its graph and its variables' index)."""
    # On object stores the rename copies files in name order: variables.index comes last.
    return (tf.io.gfile.exists(join_path(path, "saved_model.pb"))
            and tf.io.gfile.exists(join_path(path, "variables", "variables.index")))


def _non_empty_dir(path):
    return tf.io.gfile.isdir(path) and bool(tf.io.gfile.listdir(path))


def join_path(*parts):
    return "/".join(p.rstrip("/") for p in parts)


def check_path(argument, path):
    """`path` (str or PathLike) as a non-empty string without trailing "/"; else ValueError."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path.rstrip("/"):
        raise ValueError(f"{argument} must be a non-empty path string, got {path!r}.")
    return path.rstrip("/")


def check_step(step):
    """`step` (an int, or an integer tensor / variable) as an int >= 0; else ValueError."""
    if hasattr(step, "numpy"):  # Integer tensors and variables (optimizer.iterations).
        step = step.numpy()
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}.")
    return int(step)


def check_image_shape(image_shape):
    """`image_shape` as a (height, width, channels) tuple of ints (height, width may be None)."""
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
