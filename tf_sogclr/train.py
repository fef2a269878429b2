"""Training lifecycles: pretraining with checkpoints and summaries, and evaluation.

`train_loop_function` runs `model.train_step` several times per call through
`strategy.run` inside one `tf.function` (SimCLR's `train_multiple_steps`): one host round
trip per `steps_per_execution` steps, on every strategy. What XLA can compile:

* one device (no strategy, OneDevice): the per-step function with `jit_compile=True`;
* TPUStrategy: always, TPUs compile every replica function;
* MirroredStrategy / MultiWorkerMirroredStrategy on CPU or GPU: not with `jit_compile`;
  a compiled replica function may not hold the collectives (synchronisation boundary) nor
  touch a variable on another replica's device, so those run as plain graphs.

`run_schedule` is the pretraining loop of both modalities (`pretrain`, and
`bimodal.pretrain_bimodal` for dual encoders): resume, epochs, executions, summaries,
checkpoints and the reliability rules below.

Reliability (the README's "Failures and what happens" lists every case):

* checkpoints are written by `AtomicCheckpointManager`: a kill at any moment leaves either the
  previous checkpoints or the new one complete, never one that a later run takes for complete;
  a run resumes from the newest complete checkpoint in model_dir;
* SIGTERM (preemption) makes `run_schedule` save at the next execution boundary (at most
  `steps_per_execution` steps later) and return with `preempted=True`; with several workers,
  they agree on the step first;
* a step with a non-finite loss term, projection or gradient is never applied
  (`step_guard`); `nonfinite_policy` "stop" raises `FloatingPointError` naming the step,
  the terms and the last good checkpoint, "skip" logs a warning and goes on;
* bad data (empty split, missing labels, a u-table or image channels that do not match a
  checkpoint, undecodable images, indices outside the table) raises `ValueError` naming the
  dataset and split, before the first step or at the batch that holds the bad example.
"""

import dataclasses
import logging
import os
import re
import signal
import threading
import uuid

import keras
import tensorflow as tf

from tf_sogclr import augment, data, distribute, knn, losses, optim, resnet
from tf_sogclr import model as model_lib

logger = logging.getLogger(__name__)


def _is_tpu_strategy(strategy):
    return isinstance(strategy, tf.distribute.TPUStrategy)


def check_jit_compile(strategy, jit_compile):
    """Raises if `jit_compile` cannot be honoured under `strategy` (see module docstring)."""
    if jit_compile and strategy.num_replicas_in_sync > 1 and not _is_tpu_strategy(strategy):
        raise ValueError(
            f"--jit_compile=True is not available with {type(strategy).__name__} over "
            f"{strategy.num_replicas_in_sync} replicas (XLA cannot compile a replica step that "
            "holds cross-replica collectives on CPU/GPU); use jit_compile=False, one device, "
            "or a TPU.")


def train_loop_function(model, strategy, jit_compile=False, diagnostics=False):
    """A `tf.function(iterator, num_steps) -> logs` running `num_steps` train steps.

    `iterator` yields (distributed) batches for `model.train_step`; `num_steps` is an int32
    scalar tensor, so a shorter last execution reuses the same trace. Logs are read in
    cross-replica context, i.e. aggregated over replicas. With `diagnostics=True` (models with
    `train_step_with_diagnostics`) it returns `(logs, report)`: "first_bad_step" (int32,
    offset in this execution of the first skipped step, -1 if none), "skipped" (count),
    "nonfinite_terms" (`[T]` 0/1 per `model.NONFINITE_TERMS`, over the execution) and
    "index_out_of_range" (0/1).
    """
    check_jit_compile(strategy, jit_compile)
    step = model.train_step_with_diagnostics if diagnostics else model.train_step
    if jit_compile and not _is_tpu_strategy(strategy):
        step = tf.function(step, jit_compile=True)

    if not diagnostics:
        @tf.function
        def train_loop(iterator, num_steps):
            for _ in tf.range(num_steps):
                strategy.run(step, args=(next(iterator),))
            return model.training_logs()

        return train_loop

    def first_replica(value):
        return strategy.experimental_local_results(value)[0]  # Identical on every replica.

    @tf.function
    def train_loop_with_report(iterator, num_steps):
        first_bad = tf.constant(-1, tf.int32)
        skipped = tf.constant(0.0)
        terms = tf.zeros([len(model.NONFINITE_TERMS)])
        index_bad = tf.constant(0.0)
        for i in tf.range(num_steps):
            _, report = strategy.run(step, args=(next(iterator),))
            report = tf.nest.map_structure(first_replica, report)
            bad = report["skipped"] > 0.0
            first_bad = tf.where(tf.logical_and(first_bad < 0, bad), i, first_bad)
            skipped += report["skipped"]
            terms = tf.maximum(terms, report["nonfinite_terms"])
            index_bad = tf.maximum(index_bad, report["index_out_of_range"])
        return model.training_logs(), {"first_bad_step": first_bad, "skipped": skipped,
                                       "nonfinite_terms": terms, "index_out_of_range": index_bad}

    return train_loop_with_report


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step arithmetic of a run: batches drop the remainder, so an epoch is whole steps."""

    steps_per_epoch: int
    total_steps: int
    checkpoint_every: int  # steps; 0 = only at the end

    def next_stop(self, step, steps_per_execution):
        """The step at which the execution starting at `step` must end."""
        stops = [self.total_steps, (step // self.steps_per_epoch + 1) * self.steps_per_epoch,
                 step + steps_per_execution]
        if self.checkpoint_every:
            stops.append((step // self.checkpoint_every + 1) * self.checkpoint_every)
        return min(stops)

    def checkpoint_due(self, step):
        every = self.checkpoint_every
        return step == self.total_steps or (every and step % every == 0)


def make_schedule(cfg, info):
    """Steps per epoch, total steps and checkpoint interval of `cfg` on dataset `info`."""
    run = cfg.run
    steps_per_epoch = optim.steps_per_epoch(info.num_split_examples, run.train_batch_size)
    total = run.train_steps or run.train_epochs * steps_per_epoch
    every = run.checkpoint_steps or run.checkpoint_epochs * steps_per_epoch
    return Schedule(steps_per_epoch, total, every)


def check_against_data(cfg, info, strategy):
    """Checks that need the dataset's metadata and the strategy (cheap; before any build)."""
    run = cfg.run
    replicas = strategy.num_replicas_in_sync
    data.check_not_empty(info)
    if run.train_batch_size % replicas:
        raise ValueError(
            f"--train_batch_size={run.train_batch_size} must be divisible by the "
            f"{replicas} replicas in sync.")
    if run.train_batch_size > info.num_split_examples:
        raise ValueError(
            f"--train_batch_size={run.train_batch_size} is larger than split "
            f"{info.split!r} of {info.name} ({info.num_split_examples} examples).")
    if run.train_batch_size < 2 * replicas:
        raise ValueError(f"--train_batch_size must be >= {2 * replicas} (2 per replica): "
                         "a contrastive batch needs negatives.")
    if cfg.run.lineareval_while_pretraining:
        data.check_labels(info, "--lineareval_while_pretraining")
    check_jit_compile(strategy, run.jit_compile)


def build_model(cfg, info, num_replicas):
    """The SogCLR model for dataset `info`, compiled with its optimiser (call in strategy scope)."""
    m, lc, oc = cfg.model, cfg.loss, cfg.optimizer
    encoder = resnet.build_resnet(
        m.resnet_depth, width_multiplier=m.width_multiplier,
        small_image_stem=m.small_image_stem, global_bn=m.global_bn and num_replicas > 1,
        batch_norm_decay=m.batch_norm_decay,
        input_shape=(cfg.data.image_size, cfg.data.image_size, info.channels), name="encoder")
    head = model_lib.ProjectionHead(
        m.proj_head_mode, proj_out_dim=m.proj_out_dim, num_proj_layers=m.num_proj_layers,
        batch_norm_decay=m.batch_norm_decay, global_bn=m.global_bn and num_replicas > 1,
        name="projection_head")
    if lc.loss == "sogclr":
        loss_layer = losses.GlobalContrastiveLoss(
            info.num_examples, temperature=lc.temperature, gamma=lc.gamma,
            gamma_schedule=lc.gamma_schedule, gamma_decay_epochs=lc.gamma_decay_epochs,
            normalize=lc.hidden_norm, name="sogclr_loss")
    else:
        loss_layer = losses.NTXentLoss(lc.temperature, normalize=lc.hidden_norm,
                                       name="nt_xent_loss")
    model = model_lib.SogCLRModel(
        encoder, head, loss_layer,
        num_classes=info.num_classes if cfg.run.lineareval_while_pretraining else None,
        weight_decay=oc.weight_decay, name="sogclr_model")
    schedule = make_schedule(cfg, info)
    learning_rate = optim.WarmupCosineDecay(
        optim.scaled_learning_rate(oc.learning_rate, cfg.run.train_batch_size,
                                   oc.learning_rate_scaling),
        warmup_steps=int(round(oc.warmup_epochs * schedule.steps_per_epoch)),
        total_steps=max(schedule.total_steps,
                        int(round(oc.warmup_epochs * schedule.steps_per_epoch)) + 1))
    model.compile(optimizer=optim.build_optimizer(
        oc.optimizer, learning_rate, momentum=oc.momentum, weight_decay=oc.weight_decay))
    model.build((None, cfg.data.image_size, cfg.data.image_size, info.channels))
    model.optimizer.build(model.trainable_variables)
    return model


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
    if table is not None and getattr(layer, "num_examples", None) not in (None, table[0]):
        raise ValueError(
            f"Checkpoint {path} holds a u-table of {table[0]} rows, but {where} has "
            f"{layer.num_examples} examples (indices up to {layer.num_examples - 1}): it was "
            "trained on other data. Use another --model_dir, or the dataset it was trained on.")
    if not hasattr(model, "encoder"):  # Dual encoders: a mismatch fails in `_restore`.
        return
    stem = model.encoder.trainable_variables[0]  # The first convolution: [k, k, C, width].
    saved = _shape_of(shapes, "_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    if saved is not None and len(saved) == 4 and len(stem.shape) == 4 and saved[2] != stem.shape[2]:
        kinds = {1: "1-channel (grayscale)", 3: "3-channel (RGB)"}
        raise ValueError(
            f"Checkpoint {path} was trained on {kinds.get(saved[2], f'{saved[2]}-channel')} "
            f"images, but {where} has {kinds.get(info.channels, info.channels)} images. Use "
            "another --model_dir, or the dataset it was trained on.")


def _restore(checkpoint, path, model, info, partial=False):
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
            f"{_first_line(error)}") from error


def _first_line(error):
    """The informative line of an error: for TF graph errors, the op's own message."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    skip = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")
    useful = [line for line in lines if not line.startswith(skip)] or lines or [""]
    line = useful[0]
    if "assertion failed:" in line:  # Drop tf.data's iterator path before the message.
        line = line[line.index("assertion failed:"):]
    return line[:600]


def _worker_dir(model_dir, strategy):
    """model_dir on the chief; a scratch directory on other workers (removed afterwards)."""
    if distribute.is_chief(strategy):
        return model_dir
    return os.path.join(model_dir, ".workers", f"worker_{strategy.cluster_resolver.task_id}")


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run ended with."""

    step: int
    epoch: float
    logs: dict
    checkpoint: str | None
    summary_dir: str
    model: keras.Model
    preempted: bool = False  # stopped by SIGTERM after saving `checkpoint`; rerun to resume


class SigtermWatch:
    """While active, SIGTERM only sets `requested` (main thread only; else inactive).

    The previous handler comes back on exit. Python runs the handler between bytecodes of
    the main thread, i.e. once the running execution returns: the latency of a stop is one
    execution (`steps_per_execution` steps) plus a checkpoint.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _mean_over_replicas(strategy):
    """With several workers: a function averaging a float64 vector over all replicas (a
    collective every worker must call); None for single-process strategies."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None

    @tf.function
    def mean(vector):
        per_replica = strategy.run(tf.identity, args=(vector,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    return lambda values: mean(tf.constant(values, tf.float64)).numpy()


def _data_error(error, info, first_step, last_step, num_examples):
    """A ValueError naming the dataset and split for an error raised while running steps."""
    detail = _first_line(error)
    if "must be in [0, num_examples=" in detail:
        what = (f"an example index lies outside the u-table ({num_examples} rows): the data "
                "holds more examples than the table was built for")
    else:
        what = "reading, decoding or training on a batch failed"
    return ValueError(f"dataset {info.name!r} split {info.split!r}, steps {first_step}-"
                      f"{last_step}: {what}: {detail}")


def pretrain(cfg, strategy=None, verbose=1, dataset_fn=None):
    """Pretrains (or resumes from the newest checkpoint in `cfg.run.model_dir`).

    Builds everything under the strategy scope and runs `run_schedule`. Returns a
    `PretrainResult`; on SIGTERM it saves at the next execution boundary and returns early
    with `preempted=True`. `dataset_fn(input_context) -> tf.data.Dataset` of per-replica
    batches `{"view1", "view2", "index", "label"}` replaces the TFDS pipeline (the split of
    `cfg.data` still sizes the u-table and the epoch).
    """
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    info = data.describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    check_against_data(cfg, info, strategy)
    set_run_globals(cfg)
    with strategy.scope():
        model = build_model(cfg, info, strategy.num_replicas_in_sync)
    if dataset_fn is None:
        augmenter = augment.SimCLRAugment(
            cfg.data.image_size, channels=info.channels, crop_area_min=cfg.data.crop_area_min,
            color_jitter_strength=cfg.data.color_jitter_strength, use_blur=cfg.data.use_blur)
        dataset = data.distributed_pretrain_dataset(
            strategy, cfg.data.dataset, cfg.data.train_split, cfg.run.train_batch_size,
            augmenter, data_dir=cfg.data.data_dir, shuffle_buffer=cfg.data.shuffle_buffer,
            cache=cfg.data.cache_dataset, seed=cfg.run.seed, channels=info.channels)
    else:
        dataset = strategy.distribute_datasets_from_function(dataset_fn)
    return run_schedule(model, dataset, cfg, info, strategy, verbose)


def set_run_globals(cfg):
    """Seeds Python, NumPy and TF (when `cfg.run.seed` is set) and the mixed-precision policy."""
    if cfg.run.seed is not None:
        keras.utils.set_random_seed(cfg.run.seed)
    keras.mixed_precision.set_global_policy(
        "float32" if cfg.run.mixed_precision == "none" else cfg.run.mixed_precision)


def resume(model, manager, cfg, info, agree=None, verbose=1):
    """Restores the newest complete checkpoint of `cfg.run.model_dir` (the chief's, on every
    worker) into `manager.checkpoint`; returns `(step, path or None)`. With several workers
    (`agree`, from `_mean_over_replicas`), raises unless all restored the same step
    (model_dir must be shared storage)."""
    restored = latest_checkpoint(cfg.run.model_dir)
    if restored:
        _restore(manager.checkpoint, restored, model, info)
    step = int(model.optimizer.iterations.numpy())
    if agree is not None:
        mean_step, mean_square = agree([step, step * step])
        if mean_square != mean_step * mean_step:
            raise ValueError(
                f"The workers restored different steps (this one {step}, mean {mean_step}): "
                f"--model_dir={cfg.run.model_dir} must be storage all workers share.")
    if restored:
        logger.info("Resuming from %s (step %d).", restored, step)
        if verbose:
            print(f"Resuming from {restored} (step {step}).")
    return step, restored


def _summarize_tables(loss_layer, writer, step):
    """Visited fraction and histogram(s) of the u-table(s) of a global contrastive loss."""
    if not hasattr(loss_layer, "visited_fraction"):
        return
    estimates = loss_layer.estimates()
    if not isinstance(estimates, dict):
        estimates = {"": estimates}
    with writer.as_default(step=step):
        tf.summary.scalar("u_visited_fraction", loss_layer.visited_fraction())
        for name, values in estimates.items():
            tf.summary.histogram("_".join(filter(None, ("u_table", name))), values)


def run_schedule(model, dataset, cfg, info, strategy, verbose=1):
    """The pretraining loop of every modality: resume, run the schedule, checkpoint, stop.

    `model` (built and compiled in `strategy`'s scope) has `train_step_with_diagnostics`,
    `training_logs`, `NONFINITE_TERMS` and a `loss_layer` with `set_epoch`; `dataset` is a
    distributed dataset of its batches, `info` the training split's `data.DatasetInfo`.
    Resumes (`resume`), sets gamma per epoch, runs `cfg.run.steps_per_execution` steps per
    call, writes TensorBoard scalars to `model_dir/train` and checkpoints (model, optimiser,
    u-tables, step) every checkpoint_epochs / checkpoint_steps and at the end. Non-finite
    steps stop or are skipped per `cfg.run.nonfinite_policy`; data errors name the dataset
    and split; on SIGTERM it saves at the next execution boundary and returns with
    `preempted=True`. Returns a `PretrainResult`.
    """
    schedule = make_schedule(cfg, info)
    out_dir = _worker_dir(cfg.run.model_dir, strategy)
    chief = distribute.is_chief(strategy)
    manager = checkpoint_manager(model, out_dir, cfg.run.keep_checkpoint_max if chief else 1)
    agree = _mean_over_replicas(strategy)
    step, restored = resume(model, manager, cfg, info, agree, verbose)

    loop = train_loop_function(model, strategy, cfg.run.jit_compile, diagnostics=True)
    summary_dir = os.path.join(out_dir, "train")
    writer = tf.summary.create_file_writer(summary_dir)
    logs, progbar, saved_step = {}, None, step if restored else None
    log_names = [m.name for m in model.metrics] + ["learning_rate", "gamma", "temperature"]
    num_epochs = -(-schedule.total_steps // schedule.steps_per_epoch)
    num_examples = getattr(model.loss_layer, "num_examples", None)

    def result(preempted=False):
        return PretrainResult(step=step, epoch=step / schedule.steps_per_epoch, logs=logs,
                              checkpoint=latest_checkpoint(cfg.run.model_dir),
                              summary_dir=summary_dir, model=model, preempted=preempted)

    with SigtermWatch() as sigterm:  # Before the input pipeline starts prefetching.
        iterator = iter(dataset)
        while step < schedule.total_steps:
            epoch, in_epoch = divmod(step, schedule.steps_per_epoch)
            if progbar is None or in_epoch == 0:
                model.loss_layer.set_epoch(epoch)
                for metric in model.metrics:
                    metric.reset_state()
                if verbose:
                    print(f"Epoch {epoch + 1}/{num_epochs}")
                epoch_steps = min(schedule.steps_per_epoch,
                                  schedule.total_steps - epoch * schedule.steps_per_epoch)
                progbar = keras.utils.Progbar(epoch_steps, verbose=verbose,
                                              stateful_metrics=log_names)
            stop = schedule.next_stop(step, cfg.run.steps_per_execution)
            try:
                logs, report = loop(iterator, tf.constant(stop - step, tf.int32))
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
                    tf.errors.NotFoundError) as error:
                writer.flush()
                raise _data_error(error, info, step + 1, stop, num_examples) from error
            logs = {k: float(v) for k, v in logs.items()}
            try:
                _check_report(report, model.NONFINITE_TERMS, cfg, info, step, stop,
                              num_examples)
            except (FloatingPointError, ValueError):
                writer.flush()
                raise
            step = stop
            progbar.update(step - epoch * schedule.steps_per_epoch, values=list(logs.items()))
            with writer.as_default(step=step):
                for name, value in logs.items():
                    tf.summary.scalar(name, value)
            if schedule.checkpoint_due(step):
                manager.save(checkpoint_number=step)
                saved_step = step
                _summarize_tables(model.loss_layer, writer, step)
            stop_now = sigterm.requested
            if agree is not None:  # Every worker stops at the same step, or none does.
                stop_now = agree([float(stop_now)])[0] > 0
            if stop_now and step < schedule.total_steps:
                if saved_step != step:
                    manager.save(checkpoint_number=step)
                writer.flush()
                logger.warning("SIGTERM: saved %s at step %d; run the same command again to "
                               "resume.", manager.latest_checkpoint, step)
                if verbose:
                    print(f"\nPreempted (SIGTERM): saved the checkpoint of step {step}; run "
                          "the same command again to resume.")
                return result(preempted=True)
    writer.flush()
    return result()


def _check_report(report, term_names, cfg, info, step, stop, num_examples):
    """Raises or warns, per `cfg.run.nonfinite_policy`, about the steps an execution skipped."""
    skipped = int(round(float(report["skipped"])))
    if not skipped:
        return
    first = step + int(report["first_bad_step"]) + 1
    if float(report["index_out_of_range"]) > 0:
        raise ValueError(
            f"dataset {info.name!r} split {info.split!r}, step {first}: an example index lies "
            f"outside the u-table ({num_examples} rows): the data holds more examples than the "
            "table was built for. The update was not applied.")
    terms = [name for name, bad in zip(term_names, report["nonfinite_terms"].numpy()) if bad > 0]
    message = (f"Non-finite {', '.join(terms)} at step {first} ({skipped} of steps "
               f"{step + 1}-{stop} skipped: their updates were not applied, the u-table was "
               "not written with non-finite values)")
    if cfg.run.nonfinite_policy == "stop":
        raise FloatingPointError(
            f"{message}. Stopping (--nonfinite_policy=stop); no checkpoint was written after "
            f"the bad step. The last good checkpoint is "
            f"{latest_checkpoint(cfg.run.model_dir) or 'none (none written yet)'}; rerun to "
            "resume from it, or use --nonfinite_policy=skip to go on past such steps.")
    logger.warning("%s (--nonfinite_policy=skip).", message)


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


def restore_model(cfg, checkpoint=None, strategy=None):
    """The pretrained model of `checkpoint` (default: newest in model_dir) and its step."""
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    path = latest_checkpoint(checkpoint or cfg.run.model_dir)
    if path is None:
        raise ValueError(f"Needs --checkpoint or a checkpoint in --model_dir={cfg.run.model_dir}; "
                         "found none.")
    info = data.describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    with strategy.scope():
        model = build_model(cfg, info, strategy.num_replicas_in_sync)
    _restore(tf.train.Checkpoint(model=model, optimizer=model.optimizer), path, model, info,
             partial=True)
    return model, int(model.optimizer.iterations.numpy())


def evaluate(cfg, checkpoint=None, eval_knn=True, knn_k=200, knn_temperature=0.1,
             eval_steps=0, strategy=None):
    """Scores a pretraining checkpoint on `cfg.data.eval_split`; returns a dict of floats.

    `linear_top1` / `linear_top5` (the linear head, when pretraining trained one) and, with
    `eval_knn`, `knn_top1` of encoder features against `cfg.data.train_split`. `checkpoint`
    defaults to the newest in `cfg.run.model_dir`. Writes scalars to `model_dir/eval`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    train_info = data.describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    eval_info = data.describe(cfg.data.dataset, cfg.data.eval_split, cfg.data.data_dir)
    for info in (train_info, eval_info) if eval_knn else (eval_info,):
        data.check_not_empty(info)
        data.check_labels(info, "Evaluation (linear head, k-NN)")
    model, step = restore_model(cfg, checkpoint, strategy)

    def eval_batches(split):
        dataset = data.eval_dataset(
            cfg.data.dataset, split, cfg.run.eval_batch_size, cfg.data.image_size,
            data_dir=cfg.data.data_dir, cache=cfg.data.cache_dataset,
            channels=train_info.channels)
        return dataset.take(eval_steps) if eval_steps else dataset

    results = {"step": step}
    if model.linear_head is not None:
        scores = model.evaluate(eval_batches(cfg.data.eval_split), return_dict=True, verbose=0)
        results.update(linear_top1=scores["linear_top1"], linear_top5=scores["linear_top5"],
                       linear_loss=scores["linear_loss"])
    if eval_knn:
        train_features, train_labels = knn.extract_features(
            model.encoder, eval_batches(cfg.data.train_split))
        test_features, test_labels = knn.extract_features(
            model.encoder, eval_batches(cfg.data.eval_split))
        results["knn_top1"] = knn.knn_top1(
            train_features, train_labels, test_features, test_labels,
            num_classes=eval_info.num_classes, k=knn_k, temperature=knn_temperature)
    write_eval_scalars(cfg.run.model_dir, step,
                       {k: v for k, v in results.items() if k != "step"}, strategy)
    return {k: float(v) if k != "step" else v for k, v in results.items()}


def write_eval_scalars(model_dir, step, scalars, strategy):
    """On the chief: each of `scalars` {name: float} as a TensorBoard scalar at `step`, in
    `model_dir/eval`."""
    if not distribute.is_chief(strategy):
        return
    with tf.summary.create_file_writer(os.path.join(model_dir, "eval")).as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
