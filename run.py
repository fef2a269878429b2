"""tf_sogclr command line: SogCLR / SimCLR pretraining, fine-tuning, evaluation and export.

    python run.py                       # the offline default: SogCLR on Fashion-MNIST, CPU
    python run.py --helpfull            # every flag, grouped by concern (flags/)
    python run.py --mode=eval --model_dir=runs/fashion_mnist_sogclr

Every flag value is checked before TensorFlow builds anything; a bad one ends the process
with exit status 2 and one line naming the flag and what it accepts, leaving model_dir as
it was. SIGTERM (preemption) during training saves a checkpoint at the next execution
boundary, prints the summary and exits with status 143 (PREEMPTED_EXIT_STATUS): run the same
command again to resume.
"""

import importlib
import json
import os
import sys
import tempfile
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags as absl_flags  # noqa: E402
from absl import logging  # noqa: E402

import flags as _defined_flags  # noqa: E402,F401  (defines the flags)

FLAGS = absl_flags.FLAGS
PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM; TF's restartable code for GCE preemptions


class UsageError(Exception):
    """A bad flag value or combination: reported in one line, exit status 2."""


def parse_flags(argv):
    """absl parsing, with every parse error reduced to one line."""
    try:
        argv = FLAGS(argv)
    except absl_flags.Error as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TFDS's INFO lines are noise here; -v 0 shows them.
    return argv


def import_quietly(module_name):
    """Imports `module_name` with what native code writes to stderr meanwhile kept off it.

    On CPUs where oneDNN is on by default (AVX-512 and AMX among them), TensorFlow's C++
    runtime writes `WARNING: All log messages before absl::InitializeLog() ...` and
    `... oneDNN custom operations are on ...` to file descriptor 2 while it loads, before
    absl logging exists and whatever TF_CPP_MIN_LOG_LEVEL says. Those lines would break the
    one-line error contract, so they are captured and passed to absl logging at INFO (shown
    with --verbosity=0). If the import fails, they are written to stderr as they came.
    """
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    imported = False
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            module = importlib.import_module(module_name)
            imported = True
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            if not imported:
                sys.stderr.write(text)
    for line in text.splitlines():
        if line.strip():
            logging.info("%s at import: %s", module_name, line)
    return module


def config_from_flags(config_class, defaults=None, **overrides):
    """`config_class` (a config dataclass) with each field from the flag of its name; fields
    without a flag keep their default, or with `defaults` (an instance) every field whose flag
    the user did not set takes its value there; `overrides` win."""
    import dataclasses

    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_class)
              if f.name in FLAGS and (defaults is None or FLAGS[f.name].present)}
    if defaults is not None:
        values = {**dataclasses.asdict(defaults), **values}
    return config_class(**{**values, **overrides})


def pretrain_config():
    """The validated config the flags describe: a PretrainConfig, or with --modality=bimodal
    a BimodalConfig (the text flags added; every flag left unset takes the image-text
    default, `config.BimodalConfig`, e.g. --temperature CLIP's)."""
    import dataclasses

    from tf_sogclr import config

    bimodal = FLAGS.modality == "bimodal"
    if bimodal and FLAGS.train_mode == "finetune":
        raise UsageError("--train_mode=finetune is not available with --modality=bimodal; "
                         "use --train_mode=pretrain.")
    defaults = config.BimodalConfig() if bimodal else config.PretrainConfig()
    parts = {name: config_from_flags(type(getattr(defaults, name)),
                                     defaults=getattr(defaults, name))
             for name in ("data", "model", "loss", "optimizer", "run")}
    if bimodal:
        parts["run"] = dataclasses.replace(parts["run"], lineareval_while_pretraining=False)
        cfg = config.BimodalConfig(**parts, text=config_from_flags(config.TextConfig))
    else:
        cfg = config.PretrainConfig(**parts)
    try:
        return cfg.validate()
    except ValueError as error:
        raise UsageError(str(error)) from None


def prepare_data(cfg, modality):
    """Builds an offline dataset (Debian's Fashion-MNIST, its mosaics) into TFDS once; checks
    both splits exist (and, before an evaluation, that the eval split has what it needs)."""
    from tf_sogclr.data import offline

    try:
        offline.prepare(cfg.data.dataset, cfg.data.data_dir)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    try:
        train_info = modality.describe(cfg, cfg.data.train_split)
        modality.describe(cfg, cfg.data.eval_split)
        if FLAGS.mode in ("eval", "train_then_eval"):  # Fail now, not after training.
            modality.check_eval_data(cfg, FLAGS.eval_knn)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return train_info


def check_run(cfg, train_info, strategy):
    """Every check that needs the data or the strategy, before anything is built."""
    from tf_sogclr.training import checkpoints, lifecycle

    if FLAGS.keep_hub_module_max < 1:
        raise UsageError(f"--keep_hub_module_max must be an integer >= 1, "
                         f"got {FLAGS.keep_hub_module_max}.")
    if FLAGS.eval_steps < 0:
        raise UsageError(f"--eval_steps must be an integer >= 0, got {FLAGS.eval_steps}.")
    try:
        lifecycle.check_against_data(cfg, train_info, strategy)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if (FLAGS.mode in ("eval", "export")
            and checkpoints.latest_checkpoint(FLAGS.checkpoint or cfg.run.model_dir) is None):
        raise UsageError(f"--mode={FLAGS.mode} needs --checkpoint or a checkpoint in "
                         f"--model_dir={cfg.run.model_dir}; found none.")
    if FLAGS.train_mode == "finetune":
        from tf_sogclr.training import finetune

        if FLAGS.mode == "export":
            raise UsageError("--mode=export exports pretraining checkpoints; a fine-tuning run "
                             "exports its classifier when it ends (--train_mode=finetune).")
        try:
            finetune.check_finetune(cfg, finetune_config(), strategy)
        except ValueError as error:
            raise UsageError(str(error)) from None


def finetune_config():
    """The FinetuneConfig the flags describe (SimCLR: the same flags, fine-tuning values).

    An optimiser flag the user did not set takes the fine-tuning recipe's default
    (`config.FinetuneConfig`: momentum, lr 0.1, no decay, no warm-up), not the pretraining one.
    """
    from tf_sogclr import config

    unset = {name: getattr(config.FinetuneConfig, name) for name in unset_optimizer_flags()}
    try:
        return config_from_flags(config.FinetuneConfig, **unset).validate()
    except ValueError as error:
        raise UsageError(str(error)) from None


def unset_optimizer_flags():
    """Names of the optimiser flags (`config.OptimizerConfig`'s fields) the user did not set."""
    import dataclasses

    from tf_sogclr import config

    return [f.name for f in dataclasses.fields(config.OptimizerConfig) if not FLAGS[f.name].present]


def run_finetune(cfg, train_info, strategy):
    """Fine-tunes with Keras fit (resuming if interrupted), evaluates beside the raw-pixel
    linear classifier fit on the same labels (`finetune.raw_pixel_floor`), exports the
    classifier."""
    import dataclasses

    from tf_sogclr import distribute
    from tf_sogclr.training import finetune, finetune_model

    finetune_cfg = finetune_config()
    recipe, defaulted = dataclasses.asdict(finetune_cfg.optimizer_config), unset_optimizer_flags()
    print("Fine-tuning recipe: " + ", ".join(f"--{k}={v}" for k, v in recipe.items())
          + (f" (fine-tuning defaults for the unset {', '.join('--' + n for n in defaulted)})"
             if defaulted else ""), flush=True)
    crop = finetune_cfg.crop_area_min_for(cfg.data.image_size)
    print(f"Fine-tuning input: random resized crop of area [{crop}, 1] and flip"
          + ("" if FLAGS["finetune_crop_area_min"].present else
             f" (--finetune_crop_area_min unset: the default for {cfg.data.image_size}-px "
             "images)"), flush=True)
    result = finetune.finetune(cfg, finetune_cfg, strategy=strategy)
    summary = {"finetune_dir": result.finetune_dir, "tensorboard": result.log_dir,
               "epochs": result.epochs, "finetune_recipe": recipe,
               "finetune_crop_area_min": crop,
               "eval": {"top1": float(result.eval_top1), "top5": float(result.eval_top5),
                        **finetune.raw_pixel_floor(cfg, knn_k=FLAGS.knn_k,
                                                   knn_temperature=FLAGS.knn_temperature)}}
    if distribute.is_chief(strategy):
        step = int(result.model.optimizer.iterations.numpy())
        summary["export"] = export_model(finetune_model.ExportableClassifier(result.model), cfg, step,
                                         train_info)
    return summary


def export_model(model, cfg, step, train_info):
    """The SavedModel of `model` under --export_dir or model_dir/saved_model, as <step>/."""
    from tf_sogclr.training import lifecycle

    base = FLAGS.export_dir or os.path.join(cfg.run.model_dir, "saved_model")
    shape = (cfg.data.image_size, cfg.data.image_size, train_info.channels)
    return lifecycle.export_for_step(model, cfg, base, step, shape,
                                     keep_max=FLAGS.keep_hub_module_max)


def add_pretraining(summary, result):
    """Adds a `loop.PretrainResult` to the run summary. After a SIGTERM save it prints the
    summary and exits with 143: no export or evaluation of an unfinished run (the same
    command resumes it)."""
    summary.update(step=result.step, checkpoint=result.checkpoint,
                   tensorboard=os.path.dirname(result.summary_dir),
                   train={k: round(v, 4) for k, v in result.logs.items()})
    if result.preempted:
        summary["preempted"] = True
        print_summary(summary)
        sys.exit(PREEMPTED_EXIT_STATUS)


def print_summary(summary):
    print("Summary:")
    print(json.dumps(summary, indent=2, sort_keys=True))


def main(argv):
    """Runs what the parsed flags say; returns the run summary (a JSON-ready dict)."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag.")
    cfg = pretrain_config()
    from tf_sogclr import distribute
    from tf_sogclr.training import lifecycle, modalities

    modality = modalities.get(cfg.modality)
    train_info = prepare_data(cfg, modality)
    strategy = distribute.resolve_strategy(FLAGS.use_tpu, FLAGS.tpu_name, FLAGS.tpu_zone,
                                           FLAGS.gcp_project)
    check_run(cfg, train_info, strategy)
    distribution = distribute.describe_run(strategy, FLAGS.train_batch_size, cfg.run.jit_compile,
                                           cfg.run.mixed_precision)
    print(distribute.format_run(distribution), flush=True)

    summary = {"model_dir": cfg.run.model_dir, "modality": modality.name,
               "distribution": distribution}
    if FLAGS.train_mode == "finetune":
        summary.update(run_finetune(cfg, train_info, strategy))
        return summary
    if FLAGS.mode in ("train", "train_then_eval"):
        result = lifecycle.pretrain(cfg, strategy=strategy)
        add_pretraining(summary, result)
        if distribute.is_chief(strategy):
            summary["export"] = export_model(result.model, cfg, result.step, train_info)
    if FLAGS.mode == "export":
        model, step = lifecycle.restore_model(cfg, FLAGS.checkpoint, strategy)
        summary.update(step=step, export=export_model(model, cfg, step, train_info))
    if FLAGS.mode in ("eval", "train_then_eval"):
        summary["eval"] = lifecycle.evaluate(
            cfg, checkpoint=FLAGS.checkpoint, eval_knn=FLAGS.eval_knn, knn_k=FLAGS.knn_k,
            knn_temperature=FLAGS.knn_temperature, eval_steps=FLAGS.eval_steps,
            strategy=strategy)
    return summary


def exit_after_lost_worker(error):
    """Prints `error` (a `WorkerLostError`) with its traceback on stderr and ends the process
    at once with status 1.

    `os._exit`, not `sys.exit`: once a peer is lost, TensorFlow's teardown at interpreter exit
    can wait on it (collective executors, the coordination-service agent) without end, and
    whoever restarts the job waits for every worker to exit first. What it skips: TensorBoard
    events not yet flushed; checkpoints are complete or absent either way.
    """
    traceback.print_exception(error)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def run_main(argv):
    """`main` with usage errors reduced to one line on stderr and exit status 2, and a lost
    worker to its error and exit status 1 (`exit_after_lost_worker`)."""
    import_quietly("tensorflow")  # Before any tf_sogclr module imports it.
    from tf_sogclr.training.preemption import WorkerLostError

    try:
        print_summary(main(argv))
    except UsageError as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    except WorkerLostError as error:
        exit_after_lost_worker(error)


if __name__ == "__main__":
    app.run(run_main, flags_parser=parse_flags)
