"""Supervised fine-tuning of a pretrained encoder with plain Keras `fit` (SimCLR's finetune mode).

The source is a pretraining checkpoint (`tf.train.Checkpoint(model=..., optimizer=...)` written
by `training.lifecycle.pretrain`) or a SavedModel whose `serving_default` signature maps float32 `images`
`[b, H, W, C]` to a dict holding "features" (`tf_sogclr.export`). The classifier is

    images [b, H, W, C] in [0, 1] -> encoder -> features [b, f]
        -> projection hidden layers 1..ft_proj_selector (checkpoint sources only)
        -> Dense(num_classes, name="head_supervised") -> logits [b, num_classes]

A checkpoint's encoder is rebuilt with `fine_tune_after_block` (frozen stem / block groups use
batch-norm moving statistics and stop gradients) and its weights are copied in by layer name;
a SavedModel becomes a `keras.layers.TFSMLayer` (trainable, or frozen with
fine_tune_after_block=4). Everything is written under `finetune_dir`:

    finetune_config.json   what this directory fine-tunes (checked when resuming)
    backup/                keras.callbacks.BackupAndRestore state: a re-run resumes after the
                           last finished epoch (and trains no more once train_epochs are done)
    model.weights.h5       the classifier's weights after each epoch (ModelCheckpoint)
    logs/                  TensorBoard scalars (train) and the final evaluation
"""

import dataclasses
import gc
import json
import os
import typing
import uuid

import keras
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from tf_sogclr import checks, config, data, distribute, export
from tf_sogclr.models import resnet, sogclr_model
from tf_sogclr.training import loop, modalities, optim, preemption

SERVING_SIGNATURE = "serving_default"
FEATURES_KEY = "features"
HEAD_NAME = sogclr_model.LINEAR_HEAD_NAME  # "head_supervised": LARS leaves it out of adaptation.
ENCODER_NAME = "encoder"
CONFIG_FILE = "finetune_config.json"
WEIGHTS_FILE = "model.weights.h5"
BACKUP_DIR = "backup"
LOG_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (SimCLR's flag names); data and architecture come from a PretrainConfig.

    `fine_tune_after_block` / `ft_proj_selector` None take the model config's values. Defaults
    follow SimCLR's fine-tuning recipe: momentum, lr 0.1 (linear scaling), no decay, no warm-up.
    """

    checkpoint: str | None = None  # None: newest checkpoint in --model_dir
    zero_init_logits_layer: bool = True
    fine_tune_after_block: int | None = None
    ft_proj_selector: int | None = None
    train_epochs: int = 100
    train_batch_size: int = 256
    learning_rate: float = 0.1
    learning_rate_scaling: str = "linear"
    optimizer: str = "momentum"
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    finetune_dir: str | None = None  # None: <model_dir>/finetune

    def validate(self):
        for flag in ("checkpoint", "finetune_dir"):
            value = getattr(self, flag)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                checks.fail(checks.flag(flag), "a non-empty path or unset", value)
        checks.boolean("--zero_init_logits_layer", self.zero_init_logits_layer)
        if self.fine_tune_after_block is not None:
            value = self.fine_tune_after_block
            if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 4:
                checks.fail("--fine_tune_after_block", "an integer in [-1, 4]", value)
        if self.ft_proj_selector is not None:
            checks.positive_int("--ft_proj_selector", self.ft_proj_selector, allow_zero=True)
        checks.positive_int("--train_epochs", self.train_epochs)
        checks.positive_int("--train_batch_size", self.train_batch_size)
        self.optimizer_config.validate()
        return self

    @property
    def optimizer_config(self):
        """The optimiser settings as a `config.OptimizerConfig` (the one optimiser factory,
        `optim.build_scheduled_optimizer`, takes that)."""
        return config.OptimizerConfig(
            optimizer=self.optimizer, learning_rate=self.learning_rate,
            learning_rate_scaling=self.learning_rate_scaling, momentum=self.momentum,
            weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs)


class Source(typing.NamedTuple):
    """Where pretrained weights come from: kind "checkpoint" (a prefix) or "saved_model" (a dir)."""

    kind: str
    path: str


def fine_tune_after_block(pretrain_cfg, finetune_cfg):
    """The effective --fine_tune_after_block (the fine-tune config's, else the model config's)."""
    value = finetune_cfg.fine_tune_after_block
    return pretrain_cfg.model.fine_tune_after_block if value is None else value


def ft_proj_selector(pretrain_cfg, finetune_cfg):
    """The effective --ft_proj_selector (the fine-tune config's, else the model config's)."""
    value = finetune_cfg.ft_proj_selector
    return pretrain_cfg.model.ft_proj_selector if value is None else value


def finetune_dir(pretrain_cfg, finetune_cfg):
    """--finetune_dir, or `<model_dir>/finetune` when unset."""
    return finetune_cfg.finetune_dir or os.path.join(pretrain_cfg.run.model_dir, "finetune")


def num_projection_layers(model_cfg):
    """Hidden layers the projection head really has: 0 ("none"), 1 ("linear") or num_proj_layers."""
    return {"none": 0, "linear": 1}.get(model_cfg.proj_head_mode, model_cfg.num_proj_layers)


def _is_checkpoint_prefix(path):
    return tf.io.gfile.exists(path + ".index")


def resolve_source(pretrain_cfg, finetune_cfg):
    """The `Source` to fine-tune from (only looks at files); ValueError naming the flag if none.

    --checkpoint: a checkpoint prefix, a directory of checkpoints, a SavedModel, or a directory
    of numbered exports (`export.export_for_step`); unset: the newest checkpoint in --model_dir.
    """
    path = finetune_cfg.checkpoint
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
    settings.update(fine_tune_after_block=after_block, ft_proj_selector=selector)
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


# --------------------------------------------------------------------------- the model


class FinetuneModel(keras.Model):
    """A functional classifier images `[b, H, W, C]` -> logits `[b, classes]` whose training loss
    adds SimCLR's L2 weight decay for `optimizer` (LARS: only the head; else all but batch norm).
    """

    def __init__(self, *args, weight_decay=0.0, optimizer_name="momentum", **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_decay = float(weight_decay)
        self.optimizer_name = optimizer_name

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if not training or self.weight_decay == 0.0:
            return loss
        decay = optim.weight_decay_loss(self.optimizer_name, self.trainable_variables,
                                        self.weight_decay)
        # Keras sums replica losses: scale additional terms like its own regularisers.
        return loss + tf.cast(decay, loss.dtype) / tf.cast(
            distribute.num_replicas_in_sync(), loss.dtype)


class SavedModelEncoder(keras.layers.TFSMLayer):
    """`keras.layers.TFSMLayer` whose variables are named without ":0", so that optimisers can
    name their slots after them ("stem_conv_kernel_momentum"; ":" is not allowed there).
    """

    def _add_existing_weight(self, weight):
        variable = keras.Variable(initializer=weight, trainable=weight.trainable,
                                  dtype=weight.dtype, shape=weight.shape,
                                  name=weight.name.split(":")[0].replace("/", "_"))
        self._track_variable(variable)


def _copy_weights(source_layer, target_layer):
    """Assigns `source_layer`'s variables to `target_layer`'s, matched by variable name."""
    source = {v.name: v for v in source_layer.weights}
    target = {v.name: v for v in target_layer.weights}
    if sorted(source) != sorted(target) or any(
            tuple(source[k].shape) != tuple(target[k].shape) for k in target):
        raise ValueError(f"Cannot copy layer {source_layer.name!r}: variables "
                         f"{[(k, tuple(v.shape)) for k, v in source.items()]} vs "
                         f"{[(k, tuple(v.shape)) for k, v in target.items()]}.")
    for name, variable in target.items():
        variable.assign(source[name].numpy())


def load_pretrained(pretrain_cfg, checkpoint, info):
    """`modalities.build_sogclr_model(...)` with the encoder and projection head restored from `checkpoint`.

    Raises ValueError if the checkpoint does not hold that architecture's encoder and head.
    """
    model = modalities.build_sogclr_model(pretrain_cfg, info, num_replicas=1)
    # Only the encoder and head: the optimiser, u-table and linear head may differ or be absent.
    parts = tf.train.Checkpoint(encoder=model.encoder, projection_head=model.projection_head)
    problem, logger = None, tf.get_logger()
    level = logger.level
    try:
        try:
            tf.train.Checkpoint(model=parts).restore(checkpoint).expect_partial() \
                .assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            problem = str(error).splitlines()[0]
        if problem:  # A failed restore warns about every unused value once collected.
            logger.setLevel("ERROR")
            del model, parts
            gc.collect()
    finally:
        logger.setLevel(level)
    if problem:
        m = pretrain_cfg.model
        raise ValueError(
            f"--checkpoint={checkpoint} does not hold the encoder and projection head of "
            f"--resnet_depth={m.resnet_depth} --width_multiplier={m.width_multiplier} "
            f"--small_image_stem={m.small_image_stem} --proj_head_mode={m.proj_head_mode} "
            f"--num_proj_layers={m.num_proj_layers} --proj_out_dim={m.proj_out_dim} on "
            f"{info.channels}-channel images: {problem}")
    return model


def _projection_layers(features, pretrained, selector, model_cfg, global_bn):
    """Hidden layers 1..selector of the projection head (as ProjectionHead), weights copied."""
    x = features
    head = pretrained.projection_head
    for j in range(selector):
        last = j == head.num_proj_layers - 1
        dense_src, norm_src = getattr(head, f"dense_{j}"), getattr(head, f"batch_norm_{j}")
        dense = keras.layers.Dense(dense_src.units, use_bias=False, name=dense_src.name)
        norm = resnet.batch_norm_layer(norm_src.name, model_cfg.batch_norm_decay, global_bn,
                                       center=not last)
        x = norm(dense(x))
        _copy_weights(dense_src, dense)
        _copy_weights(norm_src, norm)
        if not last:
            x = keras.layers.ReLU(name=f"projection_relu_{j}")(x)
    return x


def build_finetune_model(pretrain_cfg, finetune_cfg, source, info, num_replicas=1,
                         training_endpoint=None):
    """The classifier images `[b, S, S, C]` -> logits `[b, num_classes]` (call in strategy scope).

    A "checkpoint" source is restored by `load_pretrained` and copied into an encoder rebuilt
    with --fine_tune_after_block; a "saved_model" source becomes a TFSMLayer. Not compiled.
    """
    m = pretrain_cfg.model
    size, channels = pretrain_cfg.data.image_size, info.channels
    after_block = fine_tune_after_block(pretrain_cfg, finetune_cfg)
    selector = ft_proj_selector(pretrain_cfg, finetune_cfg)
    global_bn = m.global_bn and num_replicas > 1
    images = keras.Input((size, size, channels), name="images")
    if source.kind == "checkpoint":
        pretrained = load_pretrained(pretrain_cfg, source.path, info)
        encoder = resnet.build_resnet(
            m.resnet_depth, width_multiplier=m.width_multiplier,
            small_image_stem=m.small_image_stem, global_bn=global_bn,
            batch_norm_decay=m.batch_norm_decay, fine_tune_after_block=after_block,
            input_shape=(size, size, channels), name=ENCODER_NAME)
        with_weights = [layer for layer in pretrained.encoder.layers if layer.weights]
        missing = {l.name for l in encoder.layers if l.weights} - {l.name for l in with_weights}
        if missing:
            raise ValueError(f"Encoder layers {sorted(missing)} have no pretrained weights.")
        for layer in with_weights:
            _copy_weights(layer, encoder.get_layer(layer.name))
        features = _projection_layers(encoder(images), pretrained, selector, m, global_bn)
        del pretrained
    elif source.kind == "saved_model":
        if selector != 0 or after_block not in (-1, 4):
            raise ValueError("A SavedModel source takes --ft_proj_selector=0 and "
                             f"--fine_tune_after_block -1 or 4, got {selector}, {after_block}.")
        frozen = after_block == 4
        encoder = SavedModelEncoder(
            source.path,
            call_endpoint=(export.SERVE_ENDPOINT if training_endpoint and not frozen
                           else SERVING_SIGNATURE),
            call_training_endpoint=None if frozen else training_endpoint,
            # Its signature takes float32 images and computes in the precision it was saved
            # with: a mixed policy must not cast its input to bfloat16 / float16.
            trainable=not frozen, dtype="float32", name=ENCODER_NAME)
        features = encoder(images)[FEATURES_KEY]
    else:
        raise ValueError(f"source.kind must be 'checkpoint' or 'saved_model', got {source.kind!r}.")
    logits = keras.layers.Dense(
        info.num_classes,
        kernel_initializer=("zeros" if finetune_cfg.zero_init_logits_layer
                            else keras.initializers.RandomNormal(stddev=0.01)),
        dtype="float32", name=HEAD_NAME)(features)
    return FinetuneModel(images, logits, weight_decay=finetune_cfg.weight_decay,
                         optimizer_name=finetune_cfg.optimizer, name="finetune_model")


def build_optimizer(finetune_cfg, info):
    """The fine-tuning optimiser with SimCLR's warm-up + cosine schedule over the whole run."""
    fc = finetune_cfg
    steps_per_epoch = optim.steps_per_epoch(info.num_split_examples, fc.train_batch_size)
    return optim.build_scheduled_optimizer(fc.optimizer_config, fc.train_batch_size,
                                           steps_per_epoch, fc.train_epochs * steps_per_epoch)


# --------------------------------------------------------------------------- the lifecycle


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


def finetune(pretrain_cfg, finetune_cfg, strategy=None, verbose=1, callbacks=()):
    """Fine-tunes a pretrained encoder on the train split with `model.fit`, then evaluates it.

    Checks everything first; callbacks: TensorBoard, BackupAndRestore (a re-run resumes),
    ModelCheckpoint, `callbacks`. Also uses `pretrain_cfg.run`'s eval_batch_size, seed,
    mixed_precision, steps_per_execution and jit_compile.
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

    train_data = data.finetune_dataset(
        dc.dataset, dc.train_split, fc.train_batch_size, dc.image_size, data_dir=dc.data_dir,
        crop_area_min=dc.crop_area_min, shuffle_buffer=dc.shuffle_buffer, num_epochs=1,
        cache=dc.cache_dataset, seed=run.seed, channels=plan.info.channels)
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


class ExportableClassifier(keras.Model):
    """A fine-tuned classifier seen as `encoder` (images -> features) + `linear_head`.

    What `export.export_saved_model` needs to write `features` and `logits` endpoints.
    """

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        head = classifier.get_layer(HEAD_NAME)
        self.encoder = keras.Model(classifier.inputs, head.input, name="encoder")
        self.linear_head = head
        self.projection_head = None
