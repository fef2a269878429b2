"""The pretraining loop of every modality: multi-step executions, schedule, resume, summaries,
checkpoints, the non-finite policy and preemption.

`train_loop_function` runs `model.train_step` several times per call through `strategy.run`
inside one `tf.function` (SimCLR's `train_multiple_steps`): one host round trip per
`steps_per_execution` steps, on every strategy. What XLA can compile:

* one device (no strategy, OneDevice): the per-step function with `jit_compile=True`;
* TPUStrategy: always, TPUs compile every replica function;
* MirroredStrategy / MultiWorkerMirroredStrategy on CPU or GPU: not with `jit_compile`;
  a compiled replica function may not hold the collectives (synchronisation boundary) nor
  touch a variable on another replica's device, so those run as plain graphs.

`run_schedule` drives a `models.ContrastiveModel` (its interface: `train_step_with_diagnostics`,
`training_logs`, `NONFINITE_TERMS`, `loss_layer`) through a run. Reliability (the README's
"Failures and what happens" lists every case):

* checkpoints are written by `checkpoints.AtomicCheckpointManager`; a run resumes from the
  newest complete checkpoint in model_dir;
* SIGTERM (preemption) makes `run_schedule` save at the next execution boundary (at most
  `steps_per_execution` steps later) and return with `preempted=True`; with several workers,
  they agree on the step first;
* a worker that dies or freezes mid-run stops the others within TensorFlow's heartbeat
  timeout with `preemption.WorkerLostError` naming it, the step and the newest checkpoint;
* a step with a non-finite loss term, projection or gradient is never applied
  (`step_guard`); `nonfinite_policy` "stop" raises `FloatingPointError` naming the step,
  the terms and the last good checkpoint, "skip" logs a warning and goes on;
* bad data (indices outside the table, undecodable images) raises `ValueError` naming the
  dataset and split, at the batch that holds the bad example.
"""

import dataclasses
import logging
import os
import zlib

import keras
import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.training import checkpoints, optim, preemption

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
    distribution: dict = dataclasses.field(default_factory=dict)  # distribute.describe_run


def data_error(error, info, first_step, last_step, num_examples):
    """A ValueError naming the dataset and split for an error raised while running steps."""
    detail = checkpoints.first_line(error)
    if "must be in [0, num_examples=" in detail:
        what = (f"an example index lies outside the u-table ({num_examples} rows): the data "
                "holds more examples than the table was built for")
    else:
        what = "reading, decoding or training on a batch failed"
    return ValueError(f"dataset {info.name!r} split {info.split!r}, steps {first_step}-"
                      f"{last_step}: {what}: {detail}")


def model_dir_fingerprint(model_dir):
    """Two 16-bit halves of the CRC-32 of `model_dir` (a URL as given, a local path made
    absolute): equal on workers given the same directory, exact in float64 squared."""
    name = model_dir.rstrip("/") if "://" in model_dir else os.path.abspath(model_dir)
    crc = zlib.crc32(name.encode("utf-8"))
    return crc >> 16, crc & 0xFFFF


def resume(model, manager, cfg, info, agree=None, verbose=1):
    """Restores the newest complete checkpoint of `cfg.run.model_dir` (the chief's, on every
    worker) into `manager.checkpoint`; returns `(step, path or None)`. With several workers
    (`agree`, from `mean_over_replicas`), raises ValueError, on every worker and before any
    step, unless all were given the same --model_dir and restored the same step from it
    (model_dir must be shared storage)."""
    restored = checkpoints.latest_checkpoint(cfg.run.model_dir)
    if restored:
        checkpoints.restore_checkpoint(manager.checkpoint, restored, model, info)
    step = int(model.optimizer.iterations.numpy())
    if agree is not None:
        high, low = model_dir_fingerprint(cfg.run.model_dir)
        # Equal values on every worker <=> the mean of the squares is the squared mean.
        (mean_step, mean_square, mean_high, high_square, mean_low, low_square) = agree(
            [step, step * step, high, high * high, low, low * low])
        if high_square != mean_high * mean_high or low_square != mean_low * mean_low:
            raise ValueError(
                f"The workers were given different --model_dir (this one "
                f"{cfg.run.model_dir!r}): give every worker the same --model_dir, on "
                f"storage all of them share.")
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
    tables = loss_layer.table_estimates()
    if not tables:
        return
    with writer.as_default(step=step):
        tf.summary.scalar("u_visited_fraction", loss_layer.visited_fraction())
        for name, values in tables.items():
            tf.summary.histogram(name, values)


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
    out_dir = preemption.worker_dir(cfg.run.model_dir, strategy)
    chief = distribute.is_chief(strategy)
    manager = checkpoints.checkpoint_manager(model, out_dir, cfg.run.keep_checkpoint_max if chief else 1)
    agree = preemption.mean_over_replicas(strategy)
    step, restored = resume(model, manager, cfg, info, agree, verbose)

    loop = train_loop_function(model, strategy, cfg.run.jit_compile, diagnostics=True)
    summary_dir = os.path.join(out_dir, "train")
    writer = tf.summary.create_file_writer(summary_dir)
    distribution = distribute.describe_run(strategy, cfg.run.train_batch_size,
                                           cfg.run.jit_compile, cfg.run.mixed_precision)
    run_line = distribute.format_run(distribution)
    logger.info(run_line)
    if distribute.exposure_warning(distribution):
        logger.warning(distribute.exposure_warning(distribution))
    with writer.as_default(step=step):
        tf.summary.text("run", run_line)
    logs, progbar, saved_step = {}, None, step if restored else None
    log_names = [m.name for m in model.metrics] + ["learning_rate", "gamma", "temperature"]
    num_epochs = -(-schedule.total_steps // schedule.steps_per_epoch)
    num_examples = model.loss_layer.num_examples

    def result(preempted=False):
        return PretrainResult(step=step, epoch=step / schedule.steps_per_epoch, logs=logs,
                              checkpoint=checkpoints.latest_checkpoint(cfg.run.model_dir),
                              summary_dir=summary_dir, model=model, preempted=preempted,
                              distribution=distribution)

    # SIGTERM is watched before the input pipeline starts prefetching; a lost peer becomes a
    # WorkerLostError naming it, the step and the newest checkpoint.
    with preemption.SigtermWatch() as sigterm, preemption.peers_watched(
            strategy, cfg.run.model_dir, lambda: step):
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
                raise data_error(error, info, step + 1, stop, num_examples) from error
            logs = {k: float(v) for k, v in logs.items()}
            try:
                check_report(report, model.NONFINITE_TERMS, cfg, info, step, stop,
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


def check_report(report, term_names, cfg, info, step, stop, num_examples):
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
            f"{checkpoints.latest_checkpoint(cfg.run.model_dir) or 'none (none written yet)'}; rerun to "
            "resume from it, or use --nonfinite_policy=skip to go on past such steps.")
    logger.warning("%s (--nonfinite_policy=skip).", message)
