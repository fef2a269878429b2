"""Training lifecycles: pretraining with checkpoints and summaries, and evaluation.

`train_loop_function` runs `model.train_step` several times per call through
`strategy.run` inside one `tf.function` (SimCLR's `train_multiple_steps`): one host round
trip per `steps_per_execution` steps, on every strategy. What XLA can compile:

* one device (no strategy, OneDevice): the per-step function with `jit_compile=True`;
* TPUStrategy: always, TPUs compile every replica function;
* MirroredStrategy / MultiWorkerMirroredStrategy on CPU or GPU: not with `jit_compile`;
  a compiled replica function may not hold the collectives (synchronisation boundary) nor
  touch a variable on another replica's device, so those run as plain graphs.
"""

import dataclasses
import os

import keras
import tensorflow as tf

from tf_sogclr import augment, data, distribute, knn, losses, optim, resnet
from tf_sogclr import model as model_lib


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


def train_loop_function(model, strategy, jit_compile=False):
    """A `tf.function(iterator, num_steps) -> logs` running `num_steps` train steps.

    `iterator` yields (distributed) batches for `model.train_step`; `num_steps` is an int32
    scalar tensor, so a shorter last execution reuses the same trace. Logs are read in
    cross-replica context, i.e. aggregated over replicas.
    """
    check_jit_compile(strategy, jit_compile)
    step = model.train_step
    if jit_compile and not _is_tpu_strategy(strategy):
        step = tf.function(step, jit_compile=True)

    @tf.function
    def train_loop(iterator, num_steps):
        for _ in tf.range(num_steps):
            strategy.run(step, args=(next(iterator),))
        return model.training_logs()

    return train_loop


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step arithmetic of a run: `drop_remainder` batches, so an epoch is a whole number of steps."""

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
    if cfg.run.lineareval_while_pretraining and info.num_classes is None:
        raise ValueError(f"--lineareval_while_pretraining needs labels; {info.name} has none.")
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


def checkpoint_manager(model, directory, max_to_keep):
    """A CheckpointManager over model (weights, u-tables, gamma) and optimiser (slots, step)."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


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


def pretrain(cfg, strategy=None, verbose=1):
    """Pretrains (or resumes from the newest checkpoint in `cfg.run.model_dir`).

    Builds everything under the strategy scope, sets gamma per epoch, writes TensorBoard
    scalars to `model_dir/train` and checkpoints (model, optimiser, u-tables, step) every
    checkpoint_epochs / checkpoint_steps and at the end. Returns a `PretrainResult`.
    """
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    info = data.describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    check_against_data(cfg, info, strategy)
    schedule = make_schedule(cfg, info)
    if cfg.run.seed is not None:
        keras.utils.set_random_seed(cfg.run.seed)
    keras.mixed_precision.set_global_policy(
        "float32" if cfg.run.mixed_precision == "none" else cfg.run.mixed_precision)

    with strategy.scope():
        model = build_model(cfg, info, strategy.num_replicas_in_sync)
    out_dir = _worker_dir(cfg.run.model_dir, strategy)
    manager = checkpoint_manager(model, out_dir, cfg.run.keep_checkpoint_max)
    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    step = int(model.optimizer.iterations.numpy())

    augmenter = augment.SimCLRAugment(
        cfg.data.image_size, channels=info.channels, crop_area_min=cfg.data.crop_area_min,
        color_jitter_strength=cfg.data.color_jitter_strength, use_blur=cfg.data.use_blur)
    dataset = data.distributed_pretrain_dataset(
        strategy, cfg.data.dataset, cfg.data.train_split, cfg.run.train_batch_size, augmenter,
        data_dir=cfg.data.data_dir, shuffle_buffer=cfg.data.shuffle_buffer,
        cache=cfg.data.cache_dataset, seed=cfg.run.seed, channels=info.channels)
    iterator = iter(dataset)
    loop = train_loop_function(model, strategy, cfg.run.jit_compile)
    summary_dir = os.path.join(out_dir, "train")
    writer = tf.summary.create_file_writer(summary_dir)
    logs, progbar = {}, None
    log_names = [m.name for m in model.metrics] + ["learning_rate", "gamma"]
    num_epochs = -(-schedule.total_steps // schedule.steps_per_epoch)
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
        logs = {k: float(v) for k, v in loop(iterator, tf.constant(stop - step, tf.int32)).items()}
        step = stop
        if logs.get("bad_steps", 0) > 0:
            raise FloatingPointError(
                f"Non-finite loss or projections, or an index outside the u-table, at or before "
                f"step {step} (logs: {logs}). The last good checkpoint is "
                f"{manager.latest_checkpoint}.")
        progbar.update(step - epoch * schedule.steps_per_epoch, values=list(logs.items()))
        with writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
        if schedule.checkpoint_due(step):
            manager.save(checkpoint_number=step)
            if isinstance(model.loss_layer, losses.GlobalContrastiveLoss):
                with writer.as_default(step=step):
                    tf.summary.scalar("u_visited_fraction", model.loss_layer.visited_fraction())
                    tf.summary.histogram("u_table", model.loss_layer.estimates())
    writer.flush()
    return PretrainResult(step=step, epoch=step / schedule.steps_per_epoch, logs=logs,
                          checkpoint=manager.latest_checkpoint, summary_dir=summary_dir,
                          model=model)


def latest_checkpoint(path):
    """The checkpoint prefix `path` names: itself, or the newest one in directory `path`."""
    if path and tf.io.gfile.exists(path + ".index"):
        return path
    return tf.train.latest_checkpoint(path) if path and tf.io.gfile.isdir(path) else None


def restore_model(cfg, checkpoint=None, strategy=None):
    """The pretrained model of checkpoint `checkpoint` (default: newest in model_dir) and its step."""
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    path = latest_checkpoint(checkpoint or cfg.run.model_dir)
    if path is None:
        raise ValueError(f"Needs --checkpoint or a checkpoint in --model_dir={cfg.run.model_dir}; "
                         "found none.")
    info = data.describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    with strategy.scope():
        model = build_model(cfg, info, strategy.num_replicas_in_sync)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(path).expect_partial()
    return model, int(model.optimizer.iterations.numpy())


def evaluate(cfg, checkpoint=None, eval_knn=True, knn_k=200, knn_temperature=0.1,
             eval_steps=0, strategy=None):
    """Scores a pretraining checkpoint on `cfg.data.eval_split`; returns a dict of floats.

    `linear_top1` / `linear_top5` (the linear head, when pretraining trained one) and, with
    `eval_knn`, `knn_top1` of encoder features against `cfg.data.train_split`. `checkpoint`
    defaults to the newest in `cfg.run.model_dir`. Writes scalars to `model_dir/eval`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    model, step = restore_model(cfg, checkpoint, strategy)
    train_info = data.describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    eval_info = data.describe(cfg.data.dataset, cfg.data.eval_split, cfg.data.data_dir)

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
    if distribute.is_chief(strategy):
        with tf.summary.create_file_writer(os.path.join(cfg.run.model_dir, "eval")).as_default(step=step):
            for name, value in results.items():
                if name != "step":
                    tf.summary.scalar(name, value)
    return {k: float(v) if k != "step" else v for k, v in results.items()}
