"""Supervised fine-tuning of a pretrained encoder with plain Keras `fit` (SimCLR's finetune mode).

The source is a pretraining checkpoint (`tf.train.Checkpoint(model=..., optimizer=...)` written
by `training.lifecycle.pretrain`) or a SavedModel whose `serving_default` signature maps
float32 `images` `[b, H, W, C]` to a dict holding "features" (`tf_sogclr.export`); see
`training.finetune_source`. The classifier is built by `training.finetune_model`. Settings
are a `config.FinetuneConfig`. Everything is written under `finetune_dir`:

    finetune_config.json   what this directory fine-tunes (checked when resuming)
    backup/                keras.callbacks.BackupAndRestore state: a re-run resumes after the
                           last finished epoch (and trains no more once train_epochs are done)
    model.weights.h5       the classifier's weights after each epoch (ModelCheckpoint)
    logs/                  TensorBoard scalars (train) and the final evaluation
"""


import dataclasses
import json
import os
import uuid

import keras
import tensorflow as tf

from tf_sogclr import checks, data
from tf_sogclr.evaluation import frozen_features
from tf_sogclr.training import loop, optim, preemption
from tf_sogclr.training.finetune_model import (build_finetune_model, fine_tune_after_block,
                                               ft_proj_selector)
from tf_sogclr.training.finetune_source import Source, check_saved_model, resolve_source

CONFIG_FILE = "finetune_config.json"
WEIGHTS_FILE = "model.weights.h5"
BACKUP_DIR = "backup"
LOG_DIR = "logs"


def finetune_dir(pretrain_cfg, finetune_cfg):
    """--finetune_dir, or `<model_dir>/finetune` when unset."""
    return finetune_cfg.finetune_dir or os.path.join(pretrain_cfg.run.model_dir, "finetune")


def num_projection_layers(model_cfg):
    """Hidden layers the projection head really has: 0 ("none"), 1 ("linear") or num_proj_layers."""
    return {"none": 0, "linear": 1}.get(model_cfg.proj_head_mode, model_cfg.num_proj_layers)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the up-front checks resolved."""

    source: Source
    info: data.DatasetInfo
    eval_info: data.DatasetInfo
    fine_tune_after_block: int
    ft_proj_selector: int
    training_endpoint: str | None
    finetune_dir: str
    record: dict
    resuming: bool


def _record(pretrain_cfg, finetune_cfg, source, after_block, selector):
    """What a finetune_dir holds, for the resume check (train_epochs may grow)."""
    settings = dataclasses.asdict(finetune_cfg)
    for name in ("checkpoint", "finetune_dir", "train_epochs"):
        settings.pop(name)
    settings.update(fine_tune_after_block=after_block, ft_proj_selector=selector,
                    finetune_crop_area_min=finetune_cfg.crop_area_min_for(
                        pretrain_cfg.data.image_size))
    dataset = dataclasses.asdict(pretrain_cfg.data)
    for name in ("data_dir", "cache_dataset", "shuffle_buffer"):
        dataset.pop(name)
    architecture = dataclasses.asdict(pretrain_cfg.model)
    for name in ("fine_tune_after_block", "ft_proj_selector"):  # The effective ones are above.
        architecture.pop(name)
    return {"source": list(source), "finetune": settings, "data": dataset,
            "model": architecture}


def _flatten(record, prefix=""):
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_finetune_dir(directory, record):
    """Whether `directory` holds a fine-tune to resume; raises if it would be overwritten."""
    if tf.io.gfile.exists(directory) and not tf.io.gfile.isdir(directory):
        raise ValueError(f"--finetune_dir={directory} exists and is not a directory.")
    backup = os.path.join(directory, BACKUP_DIR)
    resuming = tf.io.gfile.isdir(backup) and bool(tf.io.gfile.listdir(backup))
    record_path = os.path.join(directory, CONFIG_FILE)
    if resuming:
        stored = None
        if tf.io.gfile.exists(record_path):
            with tf.io.gfile.GFile(record_path) as f:
                stored = json.load(f)
        old, new = _flatten(stored or {}), _flatten(json.loads(json.dumps(record)))
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if stored is None or changed:
            raise ValueError(
                f"--finetune_dir={directory} holds a fine-tune with other settings "
                f"({', '.join(changed[:6]) if stored else 'no ' + CONFIG_FILE}) to resume; "
                "use another --finetune_dir (only --train_epochs may change on resume).")
    elif tf.io.gfile.exists(os.path.join(directory, WEIGHTS_FILE)):
        raise ValueError(
            f"--finetune_dir={directory} already holds {WEIGHTS_FILE} of a fine-tune without "
            f"a {BACKUP_DIR}/ to resume from; use another --finetune_dir.")
    return resuming


def check_finetune(pretrain_cfg, finetune_cfg, strategy):
    """All checks before anything is built or written (configs, source, data, finetune_dir)."""
    pretrain_cfg.validate()
    finetune_cfg.validate()
    after_block = fine_tune_after_block(pretrain_cfg, finetune_cfg)
    selector = ft_proj_selector(pretrain_cfg, finetune_cfg)
    layers = num_projection_layers(pretrain_cfg.model)
    if selector > layers:
        checks.fail("--ft_proj_selector", f"in [0, {layers}] (the projection head's layers with "
                    f"--proj_head_mode={pretrain_cfg.model.proj_head_mode})", selector)
    source = resolve_source(pretrain_cfg, finetune_cfg)
    dc = pretrain_cfg.data
    info = data.describe(dc.dataset, dc.train_split, dc.data_dir)
    eval_info = data.describe(dc.dataset, dc.eval_split, dc.data_dir)
    training_endpoint = None
    if source.kind == "scratch":
        if selector != 0:
            checks.fail("--ft_proj_selector", "0 with --checkpoint=none (no pretrained "
                        "projection head)", selector)
        if after_block != -1:
            checks.fail("--fine_tune_after_block", "-1 (train all) with --checkpoint=none "
                        "(a random encoder)", after_block)
    if source.kind == "saved_model":
        if selector != 0:
            checks.fail("--ft_proj_selector", f"0 with a SavedModel source ({source.path}: "
                        "only its features are used)", selector)
        if after_block not in (-1, 4):
            checks.fail("--fine_tune_after_block", "-1 (train all) or 4 (freeze all) with a "
                        f"SavedModel source ({source.path})", after_block)
        training_endpoint = check_saved_model(
            source.path, (dc.image_size, dc.image_size, info.channels))
    replicas = strategy.num_replicas_in_sync
    batch = finetune_cfg.train_batch_size
    if batch % replicas:
        raise ValueError(f"--train_batch_size={batch} must be divisible by the {replicas} "
                         "replicas in sync.")
    if batch > info.num_split_examples:
        raise ValueError(f"--train_batch_size={batch} is larger than split {info.split!r} of "
                         f"{info.name} ({info.num_split_examples} examples).")
    loop.check_jit_compile(strategy, pretrain_cfg.run.jit_compile)
    directory = preemption.worker_dir(finetune_dir(pretrain_cfg, finetune_cfg), strategy)
    record = _record(pretrain_cfg, finetune_cfg, source, after_block, selector)
    resuming = _check_finetune_dir(directory, record)
    return _Plan(source, info, eval_info, after_block, selector, training_endpoint, directory,
                 record, resuming)


def build_optimizer(finetune_cfg, info):
    """The fine-tuning optimiser with SimCLR's warm-up + cosine schedule over the whole run."""
    fc = finetune_cfg
    steps_per_epoch = optim.steps_per_epoch(info.num_split_examples, fc.train_batch_size)
    return optim.build_scheduled_optimizer(fc.optimizer_config, fc.train_batch_size,
                                           steps_per_epoch, fc.train_epochs * steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run ended with (history: this call's epochs only, empty if none ran)."""

    source: Source
    epochs: int  # epochs finished in finetune_dir, this call's and earlier ones
    history: dict
    eval_logs: dict
    eval_top1: float
    eval_top5: float
    finetune_dir: str
    weights_path: str
    backup_dir: str
    log_dir: str
    model: keras.Model


def _write_json_atomically(path, value):
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _epochs_done(backup_dir):
    path = os.path.join(backup_dir, "training_metadata.json")
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path) as f:
        return int(json.load(f)["epoch"])


def train_dataset(pretrain_cfg, finetune_cfg, channels, num_epochs=1, extra_augment=None):
    """The fine-tuning input of `finetune`: `data.finetune_dataset` of the train split with
    the fine-tuning crop for the image size (`crop_area_min_for`), (image, label) batches."""
    dc = pretrain_cfg.data
    return data.finetune_dataset(
        dc.dataset, dc.train_split, finetune_cfg.train_batch_size, dc.image_size,
        data_dir=dc.data_dir, crop_area_min=finetune_cfg.crop_area_min_for(dc.image_size),
        shuffle_buffer=dc.shuffle_buffer, num_epochs=num_epochs, cache=dc.cache_dataset,
        seed=pretrain_cfg.run.seed, channels=channels, extra_augment=extra_augment)


def finetune(pretrain_cfg, finetune_cfg, strategy=None, verbose=1, callbacks=(),
             extra_augment=None):
    """Fine-tunes a pretrained encoder on the train split with `model.fit`, then evaluates it.

    Checks everything first; callbacks: TensorBoard, BackupAndRestore (a re-run resumes),
    ModelCheckpoint, `callbacks`. Also uses `pretrain_cfg.run`'s eval_batch_size, seed,
    mixed_precision, steps_per_execution and jit_compile. `extra_augment`: see
    `data.finetune_dataset`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    plan = check_finetune(pretrain_cfg, finetune_cfg, strategy)
    dc, run, fc = pretrain_cfg.data, pretrain_cfg.run, finetune_cfg

    if run.seed is not None:
        keras.utils.set_random_seed(run.seed)
    keras.mixed_precision.set_global_policy(
        "float32" if run.mixed_precision == "none" else run.mixed_precision)
    with strategy.scope():
        model = build_finetune_model(pretrain_cfg, fc, plan.source, plan.info,
                                     strategy.num_replicas_in_sync, plan.training_endpoint)
        top5 = min(5, plan.info.num_classes)
        model.compile(
            optimizer=build_optimizer(fc, plan.info),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                     keras.metrics.SparseTopKCategoricalAccuracy(k=top5, name="top5")],
            steps_per_execution=run.steps_per_execution, jit_compile=run.jit_compile)

    directory = plan.finetune_dir
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    backup_dir = os.path.join(directory, BACKUP_DIR)
    log_dir = os.path.join(directory, LOG_DIR)
    tf.io.gfile.makedirs(directory)
    _write_json_atomically(os.path.join(directory, CONFIG_FILE), plan.record)

    train_data = train_dataset(pretrain_cfg, finetune_cfg, plan.info.channels,
                               extra_augment=extra_augment)
    history = model.fit(
        train_data, epochs=fc.train_epochs, verbose=verbose, shuffle=False,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False),
            # Kept after training: a re-run restores the finished state instead of restarting.
            keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True,
                                             delete_checkpoint=False),
            keras.callbacks.ModelCheckpoint(weights_path, save_weights_only=True),
            *callbacks,
        ])
    eval_data = data.eval_dataset(
        dc.dataset, dc.eval_split, run.eval_batch_size, dc.image_size, data_dir=dc.data_dir,
        channels=plan.info.channels).map(lambda b: (b[data.IMAGE_KEY], b[data.LABEL_KEY]))
    eval_logs = {k: float(v) for k, v in
                 model.evaluate(eval_data, verbose=verbose, return_dict=True).items()}
    writer = tf.summary.create_file_writer(os.path.join(log_dir, "eval"))
    epochs = _epochs_done(backup_dir)
    with writer.as_default(step=epochs):
        for name, value in eval_logs.items():
            tf.summary.scalar(f"eval_{name}", value)
    writer.flush()
    return FinetuneResult(
        source=plan.source, epochs=epochs, history=dict(history.history), eval_logs=eval_logs,
        eval_top1=eval_logs["top1"], eval_top5=eval_logs["top5"], finetune_dir=directory,
        weights_path=weights_path, backup_dir=backup_dir, log_dir=log_dir, model=model)


def raw_pixel_floor(pretrain_cfg, knn_k=frozen_features.KNN_K,
                    knn_temperature=frozen_features.KNN_TEMPERATURE):
    """The floor a fine-tuned classifier must beat: raw pixels fit on the same labels.

    `frozen_features.evaluate` of `frozen_features.raw_pixels` with the un-augmented train
    split (`pretrain_cfg.data.train_split`, the fine-tuning labels) as the probe set, scored
    on the eval split: {"raw_pixels_linear_probe_top1" (softmax regression on standardised
    pixels), "raw_pixels_linear_probe_train_top1", "raw_pixels_knn_top1"}.
    """
    dc = pretrain_cfg.data

    def batches(split):
        return data.eval_dataset(dc.dataset, split, pretrain_cfg.run.eval_batch_size,
                                 dc.image_size, data_dir=dc.data_dir)

    num_classes = data.describe(dc.dataset, dc.eval_split, dc.data_dir).num_classes
    scores = frozen_features.evaluate(frozen_features.raw_pixels, batches(dc.train_split),
                                      batches(dc.eval_split), num_classes, knn_k=knn_k,
                                      knn_temperature=knn_temperature)
    return {f"raw_pixels_{name}": float(value) for name, value in scores.items()}
