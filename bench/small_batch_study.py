"""Small-batch study: SogCLR against SimCLR on Fashion-MNIST, by linear probe and k-NN top-1.

    python bench/small_batch_study.py --results_dir results/small_batch --plan   # plan only
    python bench/small_batch_study.py --results_dir results/small_batch          # full study
    python bench/small_batch_study.py --results_dir /tmp/smoke --quick           # < 5 min smoke

The paper's claim (Yuan et al., ICML 2022): SimCLR needs a large batch, SogCLR does not.
Here both losses pretrain the same encoder at batch sizes 16 ... 512 with everything else
equal (encoder, epochs, augmentations, optimiser, learning-rate rule, seeds), then each
frozen encoder is scored on the test split by a linear probe and by k-NN. Three references:
raw pixels (no encoder: the floor a representation must clear), and on the same encoder,
random weights and supervised training (same subset, epochs, crop+flip).

What a run does (two runs at a time side by side, each in a fresh one-thread worker process:
`--workers`, study_records.run_pending):

* `simclr` / `sogclr`: `tf_sogclr.training.lifecycle.pretrain` (NT-Xent or SogCLR's global
  loss, AdamW, lr = 0.0005 * sqrt(B) (SimCLR's small-batch rule) warmed up for 1 epoch then
  cosine-decayed, decoupled weight decay 0.1; temperature 0.1, gamma 0.9 constant);
* `supervised`: the same encoder + a Dense head, plain Keras `fit` with cross-entropy on
  `data.finetune_dataset` (SimCLR's crop + flip), SGD momentum 0.9 (nesterov), lr 0.1 at
  batch 128 cosine-decayed to 0, decoupled weight decay 5e-4; `head_top1` is its own
  classifier's test top-1, `linear_top1` / `knn_top1` are measured as for every other run;
* `raw_pixels`: no encoder, the flattened image (`frozen_features.raw_pixels`), scored by
  the same evaluation; deterministic, so one run;
* `random`: the encoder as initialised (seeded), no training. As in SimCLR, the last batch
  norm of every residual block starts with gamma = 0, so at initialisation each block is its
  shortcut: this reference is weak (a stem plus strided projections), by construction.

Evaluation, identical for every run and the same code as run.py's evaluation
(`tf_sogclr.evaluation.frozen_features.evaluate`): `knn.extract_features` of the
un-augmented training subset and of the test split (frozen encoder, L2-normalised pooled
features), then

* linear probe: features standardised with the training subset's mean and std, a Keras
  `Dense(10)` trained full-batch with Adam, PROBE_STEPS steps, lr PROBE_LR cosine-decayed to
  0, L2 PROBE_L2 on the kernel, zero initialisation (so the result is deterministic given the
  features). The problem is convex and small (N x 32); 500 full-batch steps reach the same
  test top-1 as 2000 (checked on trained features: within 0.1 point), so the recipe converges;
  `linear_train_top1` is recorded too;
* k-NN: `knn.knn_top1`, k = 200, cosine similarity, votes exp(sim / 0.1) (InstDisc / MoCo /
  SogCLR protocol), memory bank = the training subset.

Budget and the choices it forced (the full study must take <= 90 min on 2 CPU cores, with
a 15% margin):

* encoder: ResNet-18, width 1/4 (channels 16-32-64-128, 128-d features), small-image stem,
  projection head 2 layers -> 128; image size 16 (Fashion-MNIST's 28x28 resized; SimCLR's
  crop + flip + colour jitter applied at 16x16). That is the default job's encoder
  (`config.DEFAULT_JOB`): narrower ones cannot beat raw pixels, whose 256 standardised
  pixels a linear probe fits to 88.6% on its own training set against 80-81% for the 64-d
  features of width 1/8 (bench/README.md, "The default job that beats raw pixels");
* pretraining and probe set: the first 10,000 training images (`train[:10000]`; the u-table
  still has 60,000 rows, indices are stable), also the probe's training set and the k-NN
  memory bank (`--pretrain_subset` pretrains on more); test: all 10,000 test images;
* recipe: the default job's AdamW (decoupled weight decay 0.1), lr 0.0005 * sqrt(B) (0.002
  at batch 16, 0.008 at 256, 0.011 at 512), 1 warm-up epoch, cosine decay; temperature
  0.1; SogCLR's gamma 0.9; random crops of at least 20% of the image (SimCLR's 8% leaves
  3x3-pixel crops of a 16x16 image), colour jitter 1.0;
* epochs: 22 for every run (batch 512 makes 19 steps an epoch, 418 in all; batch 16 makes
  625, 13,750 in all): 220,000 pretraining examples a run, the most the budget allows;
* runs: 2 methods x 6 batch sizes at seed 0, + seeds 1, 2 at batch 16, 64 and 512 (12
  more), + supervised x 3 seeds, + random x 3 seeds, + raw pixels = 31 runs, two at a time.

Single runs behind the recipe (SogCLR, batch 64, seed 0, 12 epochs, linear / k-NN against
raw pixels' 82.0 / 79.0; each row changes the one before): lr 0.00025 * sqrt(B), crops
>= 8%: 80.8 / 76.8; crops >= 20%: 81.8 / 77.6; lr 0.0005 * sqrt(B): 82.6 / 77.7; then
temperature 0.2: 83.0 / 77.3; or crops >= 35% with jitter 0.5: 83.1 / 76.1; or all 60,000
images for 2 epochs (the same 120,000 examples): 82.4 / 77.7. The linear probe reaches the
floor at this budget; k-NN needs more pretraining: at 10 epochs the whole study stayed under
raw pixels' k-NN (75.5-78.6), while 40 epochs at batch 64 (400,000 examples, seed 0) reach
84.9 / 80.8 with SimCLR and 85.1 / 81.2 with SogCLR; 40 epochs would take ~125 min.

Costs (pipeline included, no XLA, steps_per_execution 25), measured with `--plan --probe`
(one one-thread run alone, load 0.6-0.8): examples/s by batch size 16 / 32 / 64 / 128 /
256 / 512: 602 / 691 / 766 / 710 / 833 / 793; two runs side by side keep 0.97 of that each.
One two-thread process is hardly faster (batch 16: 614, batch 256: 1,328), so two workers
train 1.2-1.8x more examples per second than the study did in one process. Fixed cost per
training run (build, trace, first steps): 9 s measured, 15 s assumed; evaluation of one
encoder (20,000 images through it, probe, k-NN): ~5 s per 10k images. With these costs
`--plan` estimates ~75 min for the 31 runs on two workers (17% margin; 23 epochs would leave
14%). Before the real run, `--plan --probe` (about a minute) measures the rates on the
machine at hand and says how many epochs fit there.

Outputs under --results_dir:

* `runs.jsonl`: one JSON object per finished run: `method`, `batch_size`, `seed`, `epochs`,
  `linear_top1`, `knn_top1`, `wall_s` (whole run: train + evaluation), `examples_per_s`
  (training examples / training seconds, build and trace included), and `train_s`, `eval_s`,
  `steps`, `linear_train_top1`, `head_top1` (supervised), `final_logs`, `load_avg`,
  `config` and `config_id` (hash of the settings that matter for that method), `commit`;
* `results.md`: mean +- std over seeds per (method, batch size) and the references, each
  against raw pixels, the SogCLR - SimCLR difference per batch size, and the paper's claim:
  SogCLR at each batch size against SimCLR at the largest;
* `small_batch.png`: linear-probe and k-NN top-1 against batch size (log2 axis), one line per
  method with std error bars, the references as horizontal lines;
* `runs/<run>/train`: each pretraining run's TensorBoard scalars (checkpoints are deleted).

Resumable: a run whose (method, batch size, seed, config_id) is already in `runs.jsonl` is
skipped, so an interrupted study continues where it stopped; a run interrupted midway
starts again from scratch. Records of other configurations (e.g. a `--gamma` ablation written
to the same directory) stay in the file and are left out of the table and plot, which always
show the current configuration. Ablations are best given their own --results_dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import math
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.study_records import (add_dataclass_flags, add_workers_flag,  # noqa: E402
                                 batch_size_axis, dataclass_from_args, drop_checkpoints,
                                 format_mean_std, git_commit, hold_to_one_worker,
                                 print_run_estimates, read_records, run_pending, settings_id,
                                 SIDE_BY_SIDE, side_by_side, summarise,
                                 write_atomically)

CONTRASTIVE = ("simclr", "sogclr")
REFERENCES = ("raw_pixels", "random", "supervised")
UNTRAINED = ("raw_pixels", "random")  # references without training (batch size 0)
METHODS = CONTRASTIVE + REFERENCES
JSONL, TABLE, PLOT = "runs.jsonl", "results.md", "small_batch.png"
BATCH_SIZES = (16, 32, 64, 128, 256, 512)
MULTI_SEED_BATCHES = (16, 64, 512)  # the smallest, the middle and the largest: 3 seeds each

# Linear probe and k-NN recipe: tf_sogclr.evaluation.frozen_features (module docstring).
# The same values as linear_probe's defaults (a test checks); here for config_id without
# importing TensorFlow.
PROBE_STEPS, PROBE_LR, PROBE_L2 = 500, 0.05, 1e-4
KNN_K, KNN_TEMPERATURE = 200, 0.1
# Supervised reference recipe.
SUPERVISED_BATCH, SUPERVISED_LR, SUPERVISED_WEIGHT_DECAY = 128, 0.1, 5e-4

# Costs: examples/s of one run in a one-thread worker process alone on the 2-core machine
# (`--plan --probe --workers 2`, load average 0.6-0.8, fused batch norm); the plan takes
# study_records.SIDE_BY_SIDE of it for each of two runs side by side.
WORKER_EXAMPLES_PER_S = {16: 602.0, 32: 691.0, 64: 766.0, 128: 710.0, 256: 833.0, 512: 793.0}
SUPERVISED_SPEEDUP = 2.0  # assumed: one view per example instead of two
RUN_OVERHEAD_S = 15.0  # build, trace (single-threaded) and first steps of one training run
EVAL_S_PER_10K = 5.0  # feature extraction + probe + k-NN, per 10,000 train+test images
RANDOM_OVERHEAD_S = 5.0
MARGIN = 0.15
BUDGET_S = 5400.0


@dataclasses.dataclass(frozen=True)
class Study:
    """Every setting shared by the runs of one study (the knobs are CLI flags)."""

    dataset: str = "fashion_mnist_debian"
    data_dir: str | None = None
    train_subset: int = 10_000  # the probe's training set and the k-NN memory bank
    pretrain_subset: int = 0  # images pretraining (and supervised) sees; 0: train_subset
    test_subset: int = 0  # 0: the whole test split
    image_size: int = 16
    resnet_depth: int = 18
    width_multiplier: float = 0.25
    proj_out_dim: int = 128
    epochs: int = 22
    temperature: float = 0.1
    gamma: float = 0.9
    gamma_schedule: str = "constant"
    gamma_decay_epochs: int | None = None
    optimizer: str = "adamw"
    learning_rate: float = 0.0005  # x sqrt(B): 0.002 at batch 16, 0.008 at 256
    learning_rate_scaling: str = "sqrt"
    weight_decay: float = 0.1  # decoupled (AdamW)
    warmup_epochs: float = 1.0
    color_jitter_strength: float = 1.0
    crop_area_min: float = 0.2
    individual_temperatures: int = 0  # 1: SogCLR learns one tau per example (iSogCLR)
    steps_per_execution: int = 25
    eval_batch_size: int = 500

    @property
    def train_split(self):
        return f"train[:{self.train_subset}]"

    @property
    def pretrain_images(self):
        return self.pretrain_subset or self.train_subset

    @property
    def pretrain_split(self):
        return f"train[:{self.pretrain_images}]"

    @property
    def test_split(self):
        return f"test[:{self.test_subset}]" if self.test_subset else "test"

    def relevant(self, method):
        """The settings that can change `method`'s result (hashed into config_id)."""
        keys = ["dataset", "train_subset", "test_subset", "image_size"]
        if method != "raw_pixels":
            keys += ["resnet_depth", "width_multiplier"]
        if method not in UNTRAINED:
            keys += ["epochs", "crop_area_min"]
            if self.pretrain_subset:  # absent when 0: earlier records keep their id
                keys += ["pretrain_subset"]
        if method in CONTRASTIVE:
            keys += ["proj_out_dim", "temperature", "optimizer", "learning_rate",
                     "learning_rate_scaling", "weight_decay", "warmup_epochs",
                     "color_jitter_strength"]
        if method == "sogclr":
            keys += ["gamma", "gamma_schedule", "gamma_decay_epochs"]
            if self.individual_temperatures:  # absent when off: earlier records keep their id
                keys += ["individual_temperatures"]
        out = {k: getattr(self, k) for k in keys}
        out["probe"] = {"steps": PROBE_STEPS, "lr": PROBE_LR, "l2": PROBE_L2,
                        "knn_k": KNN_K, "knn_temperature": KNN_TEMPERATURE}
        if method == "supervised":
            out["supervised"] = {"batch": SUPERVISED_BATCH, "lr": SUPERVISED_LR,
                                 "weight_decay": SUPERVISED_WEIGHT_DECAY}
        return out

    def config_id(self, method):
        return settings_id(self.relevant(method))


@dataclasses.dataclass(frozen=True)
class Run:
    method: str
    batch_size: int  # 0 for random weights
    seed: int

    @property
    def name(self):
        return f"{self.method}_b{self.batch_size}_s{self.seed}"


def run_list(batch_sizes, seeds, multi_seed_batches, methods, supervised_batch=SUPERVISED_BATCH):
    """Runs in the order they execute: cheap references, then every batch size at the first
    seed (both methods side by side), then the extra seeds, so a partial study is usable."""
    first, extra = seeds[0], seeds[1:]
    runs = [Run("raw_pixels", 0, first)] if "raw_pixels" in methods else []  # deterministic
    runs += [Run("random", 0, s) for s in seeds] if "random" in methods else []
    contrastive = [m for m in CONTRASTIVE if m in methods]
    runs += [Run(m, b, first) for b in batch_sizes for m in contrastive]
    if "supervised" in methods:
        runs.append(Run("supervised", supervised_batch, first))
    for s in extra:
        runs += [Run(m, b, s) for b in batch_sizes if b in multi_seed_batches for m in contrastive]
    if "supervised" in methods:
        runs += [Run("supervised", supervised_batch, s) for s in extra]
    return runs


# --------------------------------------------------------------------------- estimates


def estimate_s(run, study, rates, epochs=None):
    """Seconds `run` should take given `rates` (see builtin_rates)."""
    epochs = study.epochs if epochs is None else epochs
    images = study.train_subset + (study.test_subset or 10_000)
    evaluation = rates["eval_s_per_10k"] * images / 1e4
    if run.method in UNTRAINED:
        return RANDOM_OVERHEAD_S + evaluation
    examples = epochs * (study.pretrain_images // run.batch_size) * run.batch_size
    by_batch = rates["examples_per_s"]
    nearest = min(by_batch, key=lambda b: abs(math.log2(b) - math.log2(run.batch_size)))
    rate = by_batch[nearest] * (SUPERVISED_SPEEDUP if run.method == "supervised" else 1.0)
    return rates["overhead_s"] + examples / rate + evaluation


def builtin_rates():
    return {"examples_per_s": dict(WORKER_EXAMPLES_PER_S),
            "overhead_s": RUN_OVERHEAD_S, "eval_s_per_10k": EVAL_S_PER_10K}


def print_plan(study, runs, rates, done, source, workers):
    print("Configuration:")
    for key, value in dataclasses.asdict(study).items():
        print(f"  {key} = {value}")
    print(f"  linear probe: full-batch Adam, {PROBE_STEPS} steps, lr {PROBE_LR} cosine, "
          f"L2 {PROBE_L2}; k-NN k={KNN_K}, T={KNN_TEMPERATURE}; supervised: batch "
          f"{SUPERVISED_BATCH}, SGD lr {SUPERVISED_LR} cosine, weight decay "
          f"{SUPERVISED_WEIGHT_DECAY}")
    print(f"Costs assumed ({source}):")
    print("  pretraining examples/s by batch: " + ", ".join(
        f"{b}: {r:.0f}" for b, r in sorted(rates["examples_per_s"].items())) +
        f" (supervised x{SUPERVISED_SPEEDUP:g}); fixed cost per training run "
        f"{rates['overhead_s']:.0f} s; evaluation {rates['eval_s_per_10k']:.1f} s per 10k images")
    return print_run_estimates(
        runs, done, lambda run, epochs=None: estimate_s(run, study, rates, epochs), BUDGET_S,
        MARGIN, workers)


# --------------------------------------------------------------------------- runs


def _quiet_tensorflow():
    import absl.logging
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    absl.logging.set_verbosity(absl.logging.ERROR)


def pretrain_config(study, run, model_dir):
    from tf_sogclr import config
    return config.PretrainConfig(
        data=config.DataConfig(
            dataset=study.dataset, data_dir=study.data_dir, train_split=study.pretrain_split,
            eval_split=study.test_split, image_size=study.image_size,
            color_jitter_strength=study.color_jitter_strength,
            crop_area_min=study.crop_area_min,
            shuffle_buffer=min(10_000, study.pretrain_images)),
        model=config.ModelConfig(resnet_depth=study.resnet_depth,
                                 width_multiplier=study.width_multiplier,
                                 proj_out_dim=study.proj_out_dim),
        loss=config.LossConfig(loss=run.method, temperature=study.temperature,
                               gamma=study.gamma, gamma_schedule=study.gamma_schedule,
                               gamma_decay_epochs=study.gamma_decay_epochs,
                               individual_temperatures=bool(study.individual_temperatures)
                               and run.method == "sogclr"),
        optimizer=config.OptimizerConfig(
            optimizer=study.optimizer, learning_rate=study.learning_rate,
            learning_rate_scaling=study.learning_rate_scaling,
            weight_decay=study.weight_decay, warmup_epochs=study.warmup_epochs),
        run=config.RunConfig(
            model_dir=model_dir, train_batch_size=run.batch_size, train_epochs=study.epochs,
            eval_batch_size=study.eval_batch_size, lineareval_while_pretraining=False,
            checkpoint_epochs=0, keep_checkpoint_max=1,
            steps_per_execution=study.steps_per_execution, seed=run.seed),
    ).validate()


def build_encoder(study, channels):
    from tf_sogclr.models import resnet
    return resnet.build_resnet(
        study.resnet_depth, width_multiplier=study.width_multiplier, small_image_stem=True,
        input_shape=(study.image_size, study.image_size, channels), name="encoder")


def eval_batches(study, split, channels):
    from tf_sogclr import data
    return data.eval_dataset(study.dataset, split, study.eval_batch_size, study.image_size,
                             data_dir=study.data_dir, cache=False, channels=channels)


def evaluate_encoder(study, encoder, info):
    """linear_top1, linear_train_top1, knn_top1 of the frozen `encoder`: the library's
    evaluator of frozen features, as run.py's evaluation uses it."""
    from tf_sogclr.evaluation import frozen_features
    scores = frozen_features.evaluate(
        encoder, eval_batches(study, study.train_split, info.channels),
        eval_batches(study, study.test_split, info.channels), info.num_classes,
        knn_k=KNN_K, knn_temperature=KNN_TEMPERATURE)
    return {"linear_top1": scores["linear_probe_top1"],
            "linear_train_top1": scores["linear_probe_train_top1"],
            "knn_top1": scores["knn_top1"]}


def train_supervised(study, run, info):
    """Same encoder + Dense head, cross-entropy, plain Keras fit on crop+flip batches."""
    import warnings

    import keras
    from tf_sogclr import data

    warnings.filterwarnings("ignore", message=r".*`shuffle=True` was passed.*")
    dataset = data.finetune_dataset(
        study.dataset, study.pretrain_split, run.batch_size, study.image_size,
        data_dir=study.data_dir, crop_area_min=study.crop_area_min,
        shuffle_buffer=min(10_000, study.pretrain_images), num_epochs=1, cache=True,
        seed=run.seed, channels=info.channels)
    encoder = build_encoder(study, info.channels)
    images = keras.Input((study.image_size, study.image_size, info.channels))
    logits = keras.layers.Dense(info.num_classes, name="head_supervised")(encoder(images))
    model = keras.Model(images, logits)
    steps = study.epochs * (study.pretrain_images // run.batch_size)
    model.compile(
        optimizer=keras.optimizers.SGD(
            keras.optimizers.schedules.CosineDecay(SUPERVISED_LR, steps), momentum=0.9,
            nesterov=True, weight_decay=SUPERVISED_WEIGHT_DECAY),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    model.fit(dataset, epochs=study.epochs, verbose=0)
    test = eval_batches(study, study.test_split, info.channels).map(
        lambda b: (b["image"], b["label"]))
    head_top1 = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    return encoder, steps, {"head_top1": float(head_top1)}


def execute(study, run, results_dir):
    """Runs one (method, batch, seed) from scratch; returns its record."""
    _quiet_tensorflow()  # a worker process starts afresh
    import keras
    from tf_sogclr import data
    from tf_sogclr.training import lifecycle

    keras.backend.clear_session()
    keras.utils.set_random_seed(run.seed)
    info = data.describe(study.dataset, study.train_split, study.data_dir)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    extra, steps, logs = {}, 0, {}
    if run.method == "raw_pixels":
        from tf_sogclr.evaluation import frozen_features
        encoder = frozen_features.raw_pixels
    elif run.method == "random":
        encoder = build_encoder(study, info.channels)
    elif run.method == "supervised":
        encoder, steps, extra = train_supervised(study, run, info)
    else:
        model_dir = os.path.join(results_dir, "runs", run.name)
        shutil.rmtree(model_dir, ignore_errors=True)  # an interrupted run starts afresh
        result = lifecycle.pretrain(pretrain_config(study, run, model_dir), verbose=0)
        encoder, steps, logs = result.model.encoder, result.step, result.logs
        drop_checkpoints(model_dir)
    train_s = time.perf_counter() - start
    scores = evaluate_encoder(study, encoder, info)
    wall_s = time.perf_counter() - start
    examples = steps * run.batch_size
    return {
        "method": run.method, "batch_size": run.batch_size, "seed": run.seed,
        "epochs": 0 if run.method in UNTRAINED else study.epochs,
        "linear_top1": scores["linear_top1"], "knn_top1": scores["knn_top1"],
        "wall_s": round(wall_s, 2),
        "examples_per_s": round(examples / train_s, 1) if examples else None,
        "train_s": round(train_s, 2), "eval_s": round(wall_s - train_s, 2), "steps": steps,
        "linear_train_top1": scores["linear_train_top1"], **extra,
        "final_logs": {k: round(float(v), 5) for k, v in logs.items()},
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "config_id": study.config_id(run.method), "config": study.relevant(run.method),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(REPO),
    }


# --------------------------------------------------------------------------- results


def done_runs(records, study):
    return {Run(r["method"], r["batch_size"], r["seed"]) for r in records
            if r.get("config_id") == study.config_id(r["method"])}


def groups(records, study):
    """{(method, batch_size): [records]} of the current configuration."""
    out = {}
    for r in records:
        if r.get("config_id") == study.config_id(r["method"]):
            out.setdefault((r["method"], r["batch_size"]), []).append(r)
    return out


def write_table(path, records, study, command):
    grouped = groups(records, study)
    ignored = sum(1 for r in records if r.get("config_id") != study.config_id(r["method"]))
    commits = sorted({r.get("commit", "unrecorded") for rs in grouped.values() for r in rs})
    lines = [
        "# Small-batch study: SogCLR vs SimCLR on Fashion-MNIST", "",
        f"Command: `{command}`  ",
        f"Written: {datetime.datetime.now().isoformat(timespec='seconds')}, runs from commit "
        f"{', '.join(commits) or '—'}", "",
        f"ResNet-{study.resnet_depth} x{study.width_multiplier:g} (small stem), "
        f"{study.image_size}x{study.image_size} images, pretrained on {study.pretrain_split} "
        f"for {study.epochs} epochs, probe set and k-NN memory bank {study.train_split}, "
        f"{study.optimizer.upper()} lr {study.learning_rate:g} x "
        f"{'sqrt(B)' if study.learning_rate_scaling == 'sqrt' else 'B/256'}, "
        f"warm-up {study.warmup_epochs:g} epoch(s), temperature {study.temperature:g}, "
        f"SogCLR gamma {study.gamma:g} ({study.gamma_schedule})"
        f"{', individual temperatures (iSogCLR)' if study.individual_temperatures else ''}. "
        "Test split: "
        f"{study.test_split}. Top-1 in %, mean ± std over seeds (sample std; none for one "
        "seed).", "",
        "| method | batch | seeds | linear top-1 | k-NN top-1 | vs raw pixels (linear / k-NN) "
        "| examples/s | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    floor = {key: summarise([r[key] for r in grouped.get(("raw_pixels", 0), [])])[0]
             for key in ("linear_top1", "knn_top1")}
    for (method, batch), rs in sorted(grouped.items(),
                                      key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
        lin = summarise([r["linear_top1"] for r in rs])
        knn_ = summarise([r["knn_top1"] for r in rs])
        eps = summarise([r["examples_per_s"] for r in rs])[0]
        wall = summarise([r["wall_s"] for r in rs])[0]
        batch_text = "—" if method in UNTRAINED else str(batch)
        above = ("—" if method == "raw_pixels" or floor["linear_top1"] is None else
                 f"{100 * (lin[0] - floor['linear_top1']):+.1f} / "
                 f"{100 * (knn_[0] - floor['knn_top1']):+.1f}")
        if method in REFERENCES:
            method = f"{method} (reference)"
        lines.append(f"| {method} | {batch_text} | {lin[2]} | {format_mean_std(*lin[:2])} | "
                     f"{format_mean_std(*knn_[:2])} | {above} | "
                     f"{'—' if eps is None else f'{eps:.0f}'} | {wall:.0f} |")
    batches = sorted({b for (m, b) in grouped if m in CONTRASTIVE})
    if batches:
        lines += ["", "SogCLR − SimCLR (difference of the means, points; the std columns "
                  "above give the noise):", "",
                  "| batch | linear: SimCLR | linear: SogCLR | Δ linear | k-NN: SimCLR | "
                  "k-NN: SogCLR | Δ k-NN |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for b in batches:
            row = [str(b)]
            for key in ("linear_top1", "knn_top1"):
                sim = summarise([r[key] for r in grouped.get(("simclr", b), [])])
                sog = summarise([r[key] for r in grouped.get(("sogclr", b), [])])
                delta = (None if sim[0] is None or sog[0] is None
                         else f"{100 * (sog[0] - sim[0]):+.1f}")
                row += [format_mean_std(*sim[:2]), format_mean_std(*sog[:2]), delta or "—"]
            lines.append("| " + " | ".join(row) + " |")
        lines += paper_claim(grouped, batches)
    total = sum(r["wall_s"] for rs in grouped.values() for r in rs)
    lines += ["", f"Runs: {sum(map(len, grouped.values()))}, total run time "
              f"{total / 60:.1f} min." + (f" ({ignored} records of other configurations in "
                                          f"{JSONL} are not shown.)" if ignored else "")]
    write_atomically(path, "\n".join(lines) + "\n")


def paper_claim(grouped, batches):
    """The paper's claim in its own form: SogCLR at each batch size against SimCLR at the
    largest one (Markdown lines)."""
    largest = max((b for b in batches if ("simclr", b) in grouped), default=None)
    if largest is None or not any(("sogclr", b) in grouped for b in batches):
        return []
    lines = ["", f"The paper's claim: does SogCLR at a small batch match SimCLR at the largest "
             f"({largest})? SogCLR at batch B − SimCLR at {largest} (points; + means SogCLR "
             "ahead):", "",
             f"| SogCLR batch | linear: SogCLR | linear: SimCLR {largest} | Δ linear | "
             f"k-NN: SogCLR | k-NN: SimCLR {largest} | Δ k-NN |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in batches:
        if ("sogclr", b) not in grouped:
            continue
        row = [str(b)]
        for key in ("linear_top1", "knn_top1"):
            sog = summarise([r[key] for r in grouped[("sogclr", b)]])
            sim = summarise([r[key] for r in grouped[("simclr", largest)]])
            row += [format_mean_std(*sog[:2]), format_mean_std(*sim[:2]),
                    f"{100 * (sog[0] - sim[0]):+.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_plot(path, records, study):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = groups(records, study)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    styles = {"simclr": ("tab:blue", "o", "SimCLR (NT-Xent)"),
              "sogclr": ("tab:red", "s", "SogCLR")}
    refs = {"raw_pixels": ("tab:green", "-.", "raw pixels (no encoder)"),
            "random": ("0.5", "--", "random weights"),
            "supervised": ("k", ":", "supervised")}
    for ax, key, title in zip(axes, ("linear_top1", "knn_top1"),
                              ("linear probe top-1", "k-NN top-1 (k=200)")):
        batches, shown = set(), []  # the y values the axis must hold
        for method, (color, marker, label) in styles.items():
            points = sorted((b, summarise([r[key] for r in rs]))
                            for (m, b), rs in grouped.items() if m == method)
            if not points:
                continue
            xs = [b for b, _ in points]
            batches.update(xs)
            ys = [100 * s[0] for _, s in points]
            errors = [100 * (s[1] or 0.0) for _, s in points]
            shown += [y - e for y, e in zip(ys, errors)] + [y + e for y, e in zip(ys, errors)]
            ax.errorbar(xs, ys, yerr=errors, color=color, marker=marker, capsize=4,
                        label=label)
        lines = {}
        for method in refs:
            rs = [r for (m, _), v in grouped.items() if m == method for r in v]
            lines[method] = summarise([r[key] for r in rs])
        # The axis spans the methods, raw pixels and the supervised reference, so that the
        # gaps to the floor stay visible (random weights far below are named in the legend),
        # with room above them for the legend.
        shown += [100 * lines[m][0] for m in ("raw_pixels", "supervised") if lines[m][0]]
        low, high = (min(shown) - 1.0, max(shown) + 1.0) if shown else (0.0, 100.0)
        high += 0.6 * (high - low)
        for method, (color, style, label) in refs.items():
            mean, std, n = lines[method]
            if mean is not None:
                spread = f" ± {100 * std:.1f}" if std is not None else ""
                below = " (below the axis)" if 100 * mean < low else ""
                ax.axhline(100 * mean, color=color, linestyle=style,
                           label=f"{label}: {100 * mean:.1f}{spread} (n={n}){below}")
        ax.set_ylim(low, high)
        batch_size_axis(ax, batches, "test top-1 (%)", title)
    fig.suptitle(f"Fashion-MNIST, ResNet-{study.resnet_depth} x{study.width_multiplier:g}, "
                 f"{study.image_size}px, {study.epochs} epochs on {study.pretrain_images} "
                 f"images, probe set {study.train_subset} (mean ± std over seeds)", fontsize=10)
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


# --------------------------------------------------------------------------- probe


def probe(study, batch_sizes, steps=32):
    """Measures this machine's rates at `study`'s configuration (a few steps per batch)."""
    import keras
    import tensorflow as tf
    from tf_sogclr import data
    from tf_sogclr.data import augment
    from tf_sogclr.evaluation import knn, linear_probe
    from tf_sogclr.training import loop as training_loop
    from tf_sogclr.training import modalities

    info = data.describe(study.dataset, study.train_split, study.data_dir)
    rates = {"examples_per_s": {}}
    overheads = []
    for batch in batch_sizes:
        keras.backend.clear_session()
        cfg = pretrain_config(study, Run("sogclr", batch, 0), "/nonexistent")
        start = time.perf_counter()
        model = modalities.build_sogclr_model(cfg, info, 1)
        augmenter = augment.SimCLRAugment(
            study.image_size, channels=info.channels, crop_area_min=study.crop_area_min,
            color_jitter_strength=study.color_jitter_strength)
        iterator = iter(data.pretrain_dataset(
            study.dataset, study.pretrain_split, batch, augmenter, data_dir=study.data_dir,
            cache=True, seed=0, channels=info.channels))
        loop = training_loop.train_loop_function(model, tf.distribute.get_strategy())
        loop(iterator, tf.constant(2, tf.int32))
        overheads.append(time.perf_counter() - start)
        n = max(4, (steps * 64) // batch)
        start, cpu = time.perf_counter(), time.process_time()
        float(loop(iterator, tf.constant(n, tf.int32))["contrastive_loss"])
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rates["examples_per_s"][batch] = n * batch / wall
        rates.setdefault("examples_per_cpu_s", {})[batch] = n * batch / cpu
        print(f"  probe: batch {batch}: {n * batch / wall:.0f} examples/s wall, "
              f"{n * batch / cpu:.0f} per CPU second (load {os.getloadavg()[0]:.1f})",
              flush=True)
    rates["overhead_s"] = max(overheads)
    keras.backend.clear_session()
    encoder = build_encoder(study, info.channels)
    images = eval_batches(study, study.test_split, info.channels).take(8)
    knn.extract_features(encoder, images.take(1))
    start = time.perf_counter()
    features, _ = knn.extract_features(encoder, images)
    extract_s = (time.perf_counter() - start) / int(features.shape[0])
    x = tf.random.normal((10_000, int(features.shape[1])))
    y = tf.random.uniform((10_000,), 0, info.num_classes, tf.int64)
    start = time.perf_counter()
    linear_probe.linear_probe(x, y, x, y, info.num_classes)
    knn.knn_top1(x, y, x, y, num_classes=info.num_classes, k=KNN_K)
    rates["eval_s_per_10k"] = 1e4 * extract_s + (time.perf_counter() - start) / 2
    return rates


# --------------------------------------------------------------------------- main


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results_dir", required=True)
    p.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's)")
    p.add_argument("--quick", action="store_true",
                   help="smoke: tiny subset, 1 epoch, batches 32,64, seed 0 (< 5 min)")
    p.add_argument("--plan", action="store_true", help="print the plan and estimate; run nothing")
    p.add_argument("--probe", action="store_true",
                   help="with --plan: measure throughput here instead of the built-in numbers")
    p.add_argument("--batch_sizes", type=_ints, default=None,
                   help=f"default {','.join(map(str, BATCH_SIZES))}")
    p.add_argument("--seeds", type=_ints, default=None,
                   help="seeds of --multi_seed_batches and references (default 0,1,2); other "
                        "batch sizes use the first")
    p.add_argument("--multi_seed_batches", type=_ints, default=None,
                   help=f"default {','.join(map(str, MULTI_SEED_BATCHES))}")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)}")
    add_workers_flag(p)
    add_dataclass_flags(p, Study, QUICK, skip=("data_dir",))
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")
    return args


QUICK = {"train_subset": 1024, "test_subset": 2000, "epochs": 1}


def study_from_args(args):
    return dataclass_from_args(Study, args, QUICK, data_dir=args.data_dir)


def main(argv=None):
    args = parse_args(argv)
    study = study_from_args(args)
    batch_sizes = args.batch_sizes or ([32, 64] if args.quick else list(BATCH_SIZES))
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    multi = args.multi_seed_batches or ([] if args.quick else list(MULTI_SEED_BATCHES))
    if study.train_subset < 1 or study.pretrain_subset < 0:
        sys.exit(f"--train_subset: an integer >= 1 and --pretrain_subset an integer >= 0 (0: "
                 f"the --train_subset images), got {study.train_subset} and "
                 f"{study.pretrain_subset}")
    if max(batch_sizes) > study.pretrain_images:
        sys.exit(f"--batch_sizes: {max(batch_sizes)} exceeds the {study.pretrain_images} "
                 "pretraining images (--pretrain_subset, or --train_subset when it is 0)")
    runs = run_list(batch_sizes, seeds, multi, args.methods,
                    supervised_batch=min(SUPERVISED_BATCH, study.pretrain_images))
    jsonl = os.path.join(args.results_dir, JSONL)
    records = read_records(jsonl)
    done = done_runs(records, study)

    if args.plan:
        if args.probe:  # at the threads of one worker, alone on the machine
            hold_to_one_worker(args.workers)
            _quiet_tensorflow()
            from tf_sogclr.data import offline
            offline.prepare(study.dataset, study.data_dir)
            rates = probe(study, batch_sizes)
            source = (f"measured here just now, wall clock, load average "
                      f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        else:
            rates = builtin_rates()
            source = "built-in: one one-thread run alone on a quiet 2-core machine"
        if args.workers > 1:
            rates["examples_per_s"] = side_by_side(rates["examples_per_s"], args.workers)
            source += f", x {SIDE_BY_SIDE} each for runs side by side"
        print_plan(study, runs, rates, done, source, args.workers)
        return 0

    _quiet_tensorflow()
    from tf_sogclr.data import offline
    offline.prepare(study.dataset, study.data_dir)
    for method in CONTRASTIVE:  # bad flag values fail here, before any run
        pretrain_config(study, Run(method, min(batch_sizes), 0), args.results_dir)
    os.makedirs(args.results_dir, exist_ok=True)
    command = "python bench/small_batch_study.py " + " ".join(
        sys.argv[1:] if argv is None else argv)

    def write_outputs(records):
        write_table(os.path.join(args.results_dir, TABLE), records, study, command)
        write_plot(os.path.join(args.results_dir, PLOT), records, study)

    run_pending(runs, done, functools.partial(execute, study, results_dir=args.results_dir),
                records, jsonl, write_outputs,
                lambda r: f"linear {100 * r['linear_top1']:.1f}  k-NN {100 * r['knn_top1']:.1f}",
                workers=args.workers)
    print(f"Table: {os.path.join(args.results_dir, TABLE)}\n"
          f"Plot: {os.path.join(args.results_dir, PLOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
