"""Fine-tuning input: SimCLR's crop and flip against the same plus keras-cv's RandAugment.

    python bench/finetune_augment.py --checkpoint=runs/fashion_mnist_sogclr/saved_model \
        [--train_epochs=2] [--pipeline_batches=100] [--augments=crop_flip,...] [run.py flags]

For each augmentation, in a fresh subprocess: the fine-tuning input pipeline alone
(`data.finetune_dataset`, examples/s over `--pipeline_batches` batches after one warm-up
batch), then the README's fine-tuning run (`run.py --train_mode=finetune` flags, the
fine-tuning recipe's defaults) through `training.finetune.finetune`, timed (wall and
CPU-seconds per example). Prints one JSON object per augmentation:
{"augment", "crop_area_min", "pipeline_examples_per_s", "finetune_wall_s",
"cpu_s_per_example", "top1", ...}. run.py's --finetune_crop_area_min sets the crop's area
range (unset: run.py's default for the image size).

keras-cv is a benchmark-only dependency (requirements-bench.txt): its RandAugment runs
per image (`tf.map_fn`), and its colour-degeneration op needs RGB, so grayscale images are
tiled to three channels and averaged back.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

AUGMENTS = ("crop_flip", "crop_flip_randaugment")


def randaugment(seed):
    """keras-cv's RandAugment (its defaults, images in [0, 1]) as a batch function."""
    import keras_cv
    import tensorflow as tf

    layer = keras_cv.layers.RandAugment(value_range=(0, 1), seed=seed)

    def apply(images):
        channels = images.shape[-1]
        if channels == 1:  # RandomColorDegeneration needs RGB.
            return tf.reduce_mean(layer(tf.tile(images, [1, 1, 1, 3])), -1, keepdims=True)
        return layer(images)

    return apply


def pipeline_rate(cfg, fcfg, info, extra_augment, num_batches):
    """Examples/s of `finetune.train_dataset` (the input `finetune` trains on), repeated."""
    from tf_sogclr.training import finetune

    ds = finetune.train_dataset(cfg, fcfg, info.channels, num_epochs=None,
                                extra_augment=extra_augment)
    iterator = iter(ds)
    next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * fcfg.train_batch_size / (time.perf_counter() - start)


def measure_one(augment, run_flags, num_batches):
    """In this process: the pipeline rate and a fine-tuning run with `augment`."""
    import run
    from tf_sogclr.training import finetune, modalities

    run.parse_flags(["run.py", "--train_mode=finetune", *run_flags])
    cfg, fcfg = run.pretrain_config(), run.finetune_config()
    info = run.prepare_data(cfg, modalities.get(cfg.modality))
    extra = randaugment(cfg.run.seed or 0) if augment == "crop_flip_randaugment" else None
    rate = pipeline_rate(cfg, fcfg, info, extra, num_batches)
    usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = finetune.finetune(cfg, fcfg, verbose=0, extra_augment=extra)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    examples = result.epochs * (info.num_examples // fcfg.train_batch_size) * fcfg.train_batch_size
    return {"augment": augment, "crop_area_min": fcfg.crop_area_min_for(cfg.data.image_size),
            "pipeline_examples_per_s": round(rate, 1),
            "finetune_wall_s": round(wall, 1), "finetune_cpu_s": round(cpu, 1),
            "cpu_s_per_example": round(cpu / max(examples, 1), 6),
            "train_examples_per_s": round(examples / wall, 1), "epochs": result.epochs,
            "top1": round(result.eval_top1, 4), "top5": round(result.eval_top5, 4),
            "train_top1_last_epoch": round(result.history["top1"][-1], 4)}


def main(argv):
    if argv and argv[0] == "--_one":
        augment, num_batches, run_flags = argv[1], int(argv[2]), argv[3:]
        print(json.dumps(measure_one(augment, run_flags, num_batches)), flush=True)
        return
    num_batches, augments, run_flags = 100, AUGMENTS, []
    for arg in argv:
        if arg.startswith("--pipeline_batches="):
            num_batches = int(arg.split("=", 1)[1])
        elif arg.startswith("--augments="):
            augments = tuple(arg.split("=", 1)[1].split(","))
            unknown = sorted(set(augments) - set(AUGMENTS))
            if unknown:
                raise SystemExit(f"--augments: unknown {unknown}; choose from {AUGMENTS}")
        else:
            run_flags.append(arg)
    if not any(a.startswith("--train_epochs=") for a in run_flags):
        run_flags.append("--train_epochs=2")
    with tempfile.TemporaryDirectory() as scratch:
        for augment in augments:
            flags = [*run_flags, f"--model_dir={os.path.join(scratch, augment)}"]
            out = subprocess.run([sys.executable, __file__, "--_one", augment, str(num_batches),
                                  *flags], check=True, capture_output=True, text=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
