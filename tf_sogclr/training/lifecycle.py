"""One lifecycle for every modality: pretrain, restore, evaluate and export a run.

Each function takes a validated config (`config.PretrainConfig` or `config.BimodalConfig`);
its `modality` picks the `training.modalities` entry that describes the data, builds the
model, feeds it and scores it. Everything else is shared: checks before anything is built,
seeds and the mixed-precision policy, the strategy scope, `loop.run_schedule` (resume,
checkpoints, summaries, preemption, the non-finite policy), restoring with clear errors, and
evaluation scalars in `model_dir/eval`.
"""

import os

import keras
import tensorflow as tf

from tf_sogclr import distribute
from tf_sogclr.training import checkpoints, loop, modalities


def check_against_data(cfg, info, strategy):
    """Checks that need the training split's metadata and the strategy (cheap; before any
    build): batch size against split and replicas, labels where needed, XLA."""
    modalities.get(cfg.modality).check_against_data(cfg, info, strategy)


def set_run_globals(cfg):
    """Seeds Python, NumPy and TF (when `cfg.run.seed` is set) and the mixed-precision policy."""
    if cfg.run.seed is not None:
        keras.utils.set_random_seed(cfg.run.seed)
    keras.mixed_precision.set_global_policy(
        "float32" if cfg.run.mixed_precision == "none" else cfg.run.mixed_precision)


def pretrain(cfg, strategy=None, verbose=1, dataset_fn=None):
    """Pretrains (or resumes from the newest checkpoint in `cfg.run.model_dir`).

    Builds everything under the strategy scope and runs `loop.run_schedule`. Returns a
    `loop.PretrainResult`; on SIGTERM it saves at the next execution boundary and returns
    early with `preempted=True`. `dataset_fn(input_context) -> tf.data.Dataset` of per-replica
    batches (unimodal `{"view1", "view2", "index", "label"}`, bimodal `{"image", "tokens",
    "index"}`) replaces the TFDS pipeline; the split of `cfg.data` still sizes the u-tables
    and the epoch.
    """
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    modality = modalities.get(cfg.modality)
    info = modality.describe(cfg, cfg.data.train_split)
    modality.check_against_data(cfg, info, strategy)
    set_run_globals(cfg)
    # A resumed bimodal run keeps its vocabulary (the chief's checkpoint, on every worker).
    model = modality.build_model(cfg, info, strategy,
                                 checkpoints.latest_checkpoint(cfg.run.model_dir))
    dataset = strategy.distribute_datasets_from_function(
        dataset_fn or modality.dataset_fn(cfg, info, model))
    return loop.run_schedule(model, dataset, cfg, info, strategy, verbose)


def restore_model(cfg, checkpoint=None, strategy=None):
    """The pretrained model of `checkpoint` (default: newest in model_dir) and its step."""
    cfg.validate()
    strategy = strategy or tf.distribute.get_strategy()
    path = checkpoints.latest_checkpoint(checkpoint or cfg.run.model_dir)
    if path is None:
        raise ValueError(f"Needs --checkpoint or a checkpoint in --model_dir={cfg.run.model_dir}; "
                         "found none.")
    modality = modalities.get(cfg.modality)
    info = modality.describe(cfg, cfg.data.train_split)
    model = modality.build_model(cfg, info, strategy, path)
    checkpoints.restore_checkpoint(tf.train.Checkpoint(model=model, optimizer=model.optimizer),
                                   path, model, info, partial=True)
    return model, int(model.optimizer.iterations.numpy())


def evaluate(cfg, checkpoint=None, eval_knn=True, knn_k=200, knn_temperature=0.1,
             eval_steps=0, strategy=None):
    """Scores a pretraining checkpoint on `cfg.data.eval_split`; returns a dict.

    Unimodal: `linear_top1` / `linear_top5` (the linear head, when pretraining trained one)
    and, with `eval_knn`, the frozen encoder's `knn_top1` and `linear_probe_top1` against
    `--probe_split` (`Unimodal.probe_split`), beside raw pixels' (`raw_pixels_knn_top1`, ...).
    Bimodal: `zero_shot_top1` (labelled datasets), `image_to_text_recall@1/5/10`,
    `text_to_image_recall@1/5/10` and `num_images`. `checkpoint` defaults to the newest in
    `cfg.run.model_dir`; "step" is its step. Writes the scores as TensorBoard scalars to
    `model_dir/eval`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    modality = modalities.get(cfg.modality)
    modality.check_eval_data(cfg, eval_knn)
    model, step = restore_model(cfg, checkpoint, strategy)
    results = modality.evaluate(cfg, model, eval_steps=eval_steps, eval_knn=eval_knn,
                                knn_k=knn_k, knn_temperature=knn_temperature)
    write_eval_scalars(cfg.run.model_dir, step,
                       {k: v for k, v in results.items() if k != "num_images"}, strategy)
    return {"step": step, **results}


def export_for_step(model, cfg, base_dir, step, image_shape, keep_max=5):
    """Exports `model` (of `cfg`'s modality) to `base_dir/<step>`, keeping the newest
    `keep_max` exports; returns the path."""
    return modalities.get(cfg.modality).export_for_step(model, base_dir, step, image_shape,
                                                        keep_max)


def write_eval_scalars(model_dir, step, scalars, strategy):
    """On the chief: each of `scalars` {name: float} as a TensorBoard scalar at `step`, in
    `model_dir/eval`."""
    if not distribute.is_chief(strategy):
        return
    with tf.summary.create_file_writer(os.path.join(model_dir, "eval")).as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
