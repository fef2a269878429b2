"""Atomic, numbered checkpoints: a kill at any moment loses no complete one.

`AtomicCheckpointManager` writes `<model_dir>/ckpt-<step>` through a staging directory and
commits it by moving its index into place; `latest_checkpoint` finds the newest *complete*
checkpoint whatever the state file says. `check_checkpoint_fits` and `restore_checkpoint`
turn a checkpoint that does not fit the model (a u-table of another size, images of other
channels, other model flags) into a ValueError naming the dataset and split.
"""

import os
import re
import uuid

import tensorflow as tf


CHECKPOINT_PREFIX = "ckpt"
_STAGING = ".staging-"
_CHECKPOINT_NAME = re.compile(r"^" + CHECKPOINT_PREFIX + r"-(\d+)\.index$")
_DATA_SHARD = re.compile(r"\.data-(\d+)-of-(\d+)$")


def is_complete_checkpoint(prefix):
    """True when checkpoint `prefix` has a readable index and every data shard it names."""
    if not tf.io.gfile.exists(prefix + ".index"):
        return False
    try:
        tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError):
        return False  # e.g. an index cut short by a kill (older writers wrote it in place)
    shards = [_DATA_SHARD.search(path) for path in tf.io.gfile.glob(prefix + ".data-*")]
    found = {(int(m.group(1)), int(m.group(2))) for m in shards if m}
    totals = {total for _, total in found}
    return len(totals) == 1 and {shard for shard, _ in found} == set(range(totals.pop()))


def complete_checkpoints(directory):
    """Prefixes of the complete `ckpt-<step>` checkpoints in `directory`, oldest first."""
    if not directory or not tf.io.gfile.isdir(directory):
        return []
    steps = sorted(int(m.group(1)) for m in map(_CHECKPOINT_NAME.match,
                                                 tf.io.gfile.listdir(directory)) if m)
    prefixes = [_join(directory, f"{CHECKPOINT_PREFIX}-{step}") for step in steps]
    return [prefix for prefix in prefixes if is_complete_checkpoint(prefix)]


def _join(*parts):
    return "/".join(p.rstrip("/") for p in parts)


class AtomicCheckpointManager:
    """Numbered checkpoints `<directory>/ckpt-<step>`; a kill at any moment loses no complete one.

    `save` writes the checkpoint into a hidden staging directory, moves its data shards into
    place, then its index (the commit: on POSIX and object stores the index appears whole or
    not at all), then rewrites the `checkpoint` state file (write + rename) that
    `tf.train.latest_checkpoint` reads, then deletes checkpoints beyond `max_to_keep` (index
    first). `latest_checkpoint` is the newest *complete* checkpoint found in the directory,
    whatever the state file says. With `clean=True` (the one writer of the directory) the
    debris of killed saves (staging directories, data shards without an index) is removed.
    Interface of `tf.train.CheckpointManager` as used here: `checkpoint`, `directory`,
    `latest_checkpoint`, `checkpoints`, `save(checkpoint_number)`.
    """

    def __init__(self, checkpoint, directory, max_to_keep=5, clean=True):
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an integer >= 1, got {max_to_keep!r}.")
        self.checkpoint = checkpoint
        self.directory = str(directory)
        self.max_to_keep = max_to_keep
        if clean:
            self._remove_debris()

    @property
    def checkpoints(self):
        """Complete checkpoints, oldest first."""
        return complete_checkpoints(self.directory)

    @property
    def latest_checkpoint(self):
        """The newest complete checkpoint, or None."""
        found = self.checkpoints
        return found[-1] if found else None

    def save(self, checkpoint_number):
        """Writes `ckpt-<checkpoint_number>` atomically; returns its prefix."""
        number = int(checkpoint_number)
        prefix = _join(self.directory, f"{CHECKPOINT_PREFIX}-{number}")
        staging = _join(self.directory, f"{_STAGING}{CHECKPOINT_PREFIX}-{number}-"
                                        f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tf.io.gfile.makedirs(staging)
        # `restore` creates `save_counter`; creating it now puts it in the checkpoint too, so
        # restores match every object (as checkpoints of tf.train.CheckpointManager do).
        getattr(self.checkpoint, "save_counter", None)
        staged = self.checkpoint.write(_join(staging, CHECKPOINT_PREFIX))
        # An older checkpoint of the same number is uncommitted before its shards are replaced.
        self._delete(prefix)
        for shard in tf.io.gfile.glob(staged + ".data-*"):
            tf.io.gfile.rename(shard, prefix + shard[len(staged):], overwrite=True)
        tf.io.gfile.rename(staged + ".index", prefix + ".index", overwrite=True)  # The commit.
        tf.io.gfile.rmtree(staging)
        kept = self.checkpoints
        for old in kept[:-self.max_to_keep]:
            self._delete(old)
        self._write_state(prefix, kept[-self.max_to_keep:])
        return prefix

    def _write_state(self, latest, kept):
        names = [os.path.basename(p) for p in kept]
        lines = [f'model_checkpoint_path: "{os.path.basename(latest)}"']
        lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
        state = _join(self.directory, "checkpoint")
        tmp = f"{state}.tmp-{uuid.uuid4().hex[:8]}"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        tf.io.gfile.rename(tmp, state, overwrite=True)

    def _repair_state(self):
        """Points the state file at the newest complete checkpoint (a kill may have come
        between a commit and the state update)."""
        kept = self.checkpoints
        if kept and tf.train.latest_checkpoint(self.directory) != kept[-1]:
            self._write_state(kept[-1], kept[-self.max_to_keep:])

    def _delete(self, prefix):
        for path in [prefix + ".index"] + tf.io.gfile.glob(prefix + ".data-*"):
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)

    def _remove_debris(self):
        if not tf.io.gfile.isdir(self.directory):
            return
        for name in tf.io.gfile.listdir(self.directory):
            name = name.rstrip("/")
            path = _join(self.directory, name)
            if name.startswith(_STAGING) or (name.startswith(CHECKPOINT_PREFIX + "-")
                                             and name.endswith("_temp")):
                tf.io.gfile.rmtree(path)  # A save killed while writing its shards.
            elif name.startswith("checkpoint.tmp"):
                tf.io.gfile.remove(path)
            elif name.startswith(CHECKPOINT_PREFIX + "-") and ".data-" in name:
                prefix = path[:path.index(".data-")]
                if not tf.io.gfile.exists(prefix + ".index") and tf.io.gfile.exists(path):
                    tf.io.gfile.remove(path)  # Shards of a save killed before its commit.
            elif _CHECKPOINT_NAME.match(name) and not is_complete_checkpoint(path[:-6]):
                self._delete(path[:-6])  # An unreadable index (written in place by others).
        self._repair_state()


def checkpoint_manager(model, directory, max_to_keep, clean=True):
    """`AtomicCheckpointManager` of model (weights, u-tables, gamma) and optimiser (slots, step)."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return AtomicCheckpointManager(checkpoint, directory, max_to_keep=max_to_keep, clean=clean)


def latest_checkpoint(path):
    """The complete checkpoint `path` names: itself, or the newest complete one in directory
    `path` (whatever its state file says); None if there is none."""
    if not path:
        return None
    path = str(path)
    if tf.io.gfile.exists(path + ".index"):
        return path if is_complete_checkpoint(path) else None
    found = complete_checkpoints(path)
    return found[-1] if found else None


def _shape_of(shapes, suffix):
    for key, shape in shapes.items():
        if key.endswith(suffix):
            return list(shape)
    return None


def check_checkpoint_fits(path, model, info):
    """Raises ValueError naming `info`'s dataset and split if checkpoint `path` cannot restore
    into `model`: a u-table of another size, images of other channels (grayscale / RGB)."""
    shapes = dict(tf.train.list_variables(path))
    where = f"dataset {info.name!r} split {info.split!r}"
    table = _shape_of(shapes, "u_table/log_u/.ATTRIBUTES/VARIABLE_VALUE")
    layer = model.loss_layer
    if table is not None and layer.num_examples not in (None, table[0]):
        raise ValueError(
            f"Checkpoint {path} holds a u-table of {table[0]} rows, but {where} has "
            f"{layer.num_examples} examples (indices up to {layer.num_examples - 1}): it was "
            "trained on other data. Use another --model_dir, or the dataset it was trained on.")
    encoder = model.channel_checked_encoder()
    if encoder is None:  # Dual encoders: a mismatch fails in `restore_checkpoint`.
        return
    stem = encoder.trainable_variables[0]  # The first convolution: [k, k, C, width].
    saved = _shape_of(shapes, "_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    if saved is not None and len(saved) == 4 and len(stem.shape) == 4 and saved[2] != stem.shape[2]:
        kinds = {1: "1-channel (grayscale)", 3: "3-channel (RGB)"}
        raise ValueError(
            f"Checkpoint {path} was trained on {kinds.get(saved[2], f'{saved[2]}-channel')} "
            f"images, but {where} has {kinds.get(info.channels, info.channels)} images. Use "
            "another --model_dir, or the dataset it was trained on.")


def restore_checkpoint(checkpoint, path, model, info, partial=False):
    """Restores `path` into `checkpoint`, with clear errors when it does not fit the model."""
    check_checkpoint_fits(path, model, info)
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial()
        else:
            status.assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(
            f"Checkpoint {path} does not fit the model built for dataset {info.name!r} split "
            f"{info.split!r} and these model flags (was it written with other flags?): "
            f"{first_line(error)}") from error


def first_line(error):
    """The informative line of an error: for TF graph errors, the op's own message."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    skip = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")
    useful = [line for line in lines if not line.startswith(skip)] or lines or [""]
    line = useful[0]
    if "assertion failed:" in line:  # Drop tf.data's iterator path before the message.
        line = line[line.index("assertion failed:"):]
    return line[:600]
