"""Bimodal study: image-text SogCLR against the CLIP loss at small batch, on two offline sets.

    python bench/bimodal_study.py --results_dir results/bimodal --plan           # plan only
    python bench/bimodal_study.py --results_dir results/bimodal --plan --probe   # measured here
    python bench/bimodal_study.py --results_dir results/bimodal                  # full study
    python bench/bimodal_study.py --results_dir /tmp/smoke --quick               # < 5 min smoke

The paper's second claim (Yuan et al., ICML 2022; FastCLIP, Wei et al. 2024): SogCLR's
optimisation serves two-way (image-text) contrastive losses too, where a small batch hurts
CLIP's InfoNCE most. Here both losses train run.py's dual encoder (`--modality=bimodal`:
ResNet-18 image tower, Transformer text tower, projection heads) at batch sizes 32 ... 256
with everything else equal, on the two offline image-text sets:

* `templates`: Fashion-MNIST with captions from templates of its class names
  (`data.captions`); in a batch of 64 about six pairs share a class, so most "negatives"
  are false. Scored by zero-shot top-1 on the 10,000 test images (`zero_shot_top1`);
* `mosaics`: 2x2 mosaics of Fashion-MNIST items captioned by item and position
  (`data.fashion_mnist_mosaics`, 10^4 possible captions, test captions distinct). Scored by
  recall@1 both ways over the test mosaics, averaged (`recall@1`), and zero-shot on single
  items (`item_zero_shot_top1`).

The recipe, the same for both losses except SogCLR's own gamma (FastCLIP's choices): AdamW
with decoupled weight decay and none on biases, norms and the temperature; lr warmed up for
`warmup_epochs` then cosine-decayed, scaled by sqrt(B); a learnable global temperature
(`--learnable_temperature`, initial `temperature`, log space clamped to [0.01, 1], its own
peak learning rate `temperature_learning_rate` (0: the model's), SogCLR's by
`temperature_objective`); the "infonce" gradient scale, so both
losses take the same step at one learning rate; SogCLR's gamma, 0.9 and constant by default
(with `--gamma_schedule cosine`, FastCLIP's cosine from 1 down to `gamma` over
`gamma_decay_epochs`, 0: half the epochs).

What a run does: `tf_sogclr.training.lifecycle.pretrain` with a `config.BimodalConfig`, then
the bimodal modality's evaluation (`training.modalities.Bimodal.evaluate`, as run.py's).
Runs execute two at a time, each in a fresh one-thread worker process (`--workers`,
study_records.run_pending; `--workers 1`: one after the other in this process), in this
order: every batch size at the first seed (both losses, both sets), then the extra seeds at
`--multi_seed_batches`, so a partial study is usable. Resumable as the small-batch study
is: a run whose (set, method, batch size, seed, config_id) is in `runs.jsonl` is skipped.

Outputs under --results_dir: `runs.jsonl` (one record per run: `set`, `method`,
`batch_size`, `seed`, `score` (the set's primary metric), `scores` (every metric of the
evaluation), `final_temperature`, `wall_s`, `train_s`, `eval_s`, `examples_per_s`, `steps`,
`config`, `config_id`, `commit`, `load_avg`), `results.md` (mean ± std over seeds per set,
loss and batch size; SogCLR − CLIP per batch size against the larger seed spread) and
`bimodal.png` (primary metric against batch size, one panel per set).

The plan (`--plan`) estimates each run from examples/s, a fixed cost per run and an
evaluation cost per set: built in (BUILTIN_RATES, from the study's own runs on the date
noted there) or measured here with `--probe` (two short pretraining runs per set and batch
size, whose difference gives the rate and whose remainder the fixed cost, and one
evaluation per set; about 5 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
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

METHODS = ("sogclr", "clip")
LOSS_OF_METHOD = {"sogclr": "sogclr", "clip": "simclr"}  # run.py's --loss (InfoNCE: simclr)
SETS = ("templates", "mosaics")
DATASET_OF_SET = {"templates": "fashion_mnist_debian", "mosaics": "fashion_mnist_mosaics"}
PRIMARY_METRIC = {"templates": "zero_shot_top1", "mosaics": "recall@1"}
SECONDARY_METRICS = {"templates": ("image_to_text_recall@1", "text_to_image_recall@1"),
                     "mosaics": ("image_to_text_recall@1", "text_to_image_recall@1",
                                 "item_zero_shot_top1")}
BATCH_SIZES = (32, 64, 128, 256)
MULTI_SEED_BATCHES = (32, 64, 256)  # the batch sizes 32 and 64, and the largest
JSONL, TABLE, PLOT = "runs.jsonl", "results.md", "bimodal.png"
BUDGET_S, MARGIN = 5400.0, 0.15

# Costs for --plan without --probe: {set: {"examples_per_s": {batch: rate}, "overhead_s",
# "eval_s"}}, as one run in a one-thread worker process alone would give them; the plan takes
# study_records.SIDE_BY_SIDE of them for each of two runs side by side. From the study's own
# 40 runs of 2026-12-06 at 10 epochs, two at a time (AMD EPYC, 2 cores): per set and batch
# size the median of examples / (train_s - overhead_s), over SIDE_BY_SIDE; the fixed costs
# from `--plan --probe --workers 2` that day (11 s, 13 s), the evaluations' medians. Side by
# side, runs were slower than the probe's one run alone predicted (460-720 examples/s against
# its 467-880 x SIDE_BY_SIDE): one run of each pair took ~160 s and the other ~220 s. The 40
# runs' times add up to 129.2 min, ~65 min on two workers; the plan at these rates says so.
BUILTIN_RATES = {
    "templates": {"examples_per_s": {32: 550.0, 64: 507.0, 128: 740.0, 256: 710.0},
                  "overhead_s": 11.0, "eval_s": 6.0},
    "mosaics": {"examples_per_s": {32: 552.0, 64: 588.0, 128: 606.0, 256: 714.0},
                "overhead_s": 13.0, "eval_s": 8.0},
}


@dataclasses.dataclass(frozen=True)
class Study:
    """Every setting shared by the runs of one study (the knobs are CLI flags)."""

    data_dir: str | None = None
    train_subset: int = 10_000  # the first N training pairs of each set
    test_subset: int = 0  # 0: the whole test split (10,000 images; 2,000 mosaics)
    templates_image_size: int = 28
    mosaics_image_size: int = 28  # the 56x56 mosaics resized: 14x14 per item
    mosaics_crop_area_min: float = 0.6  # keeps part of every item in view
    width_multiplier: float = 0.125
    epochs: int = 10  # at 5 both losses were far from trained (README)
    temperature: float = 0.03  # initial value of the learnable temperature
    learnable_temperature: int = 1
    temperature_learning_rate: float = 0.0  # log tau's own peak; 0: the model's
    temperature_objective: str = "isogclr"  # SogCLR's tau: isogclr or fastclip_v3
    temperature_rho: float = 2.0  # SogCLR's tau settles where the weights' KL equals it
    gradient_scale: str = "infonce"
    # SogCLR's gamma: the paper's 0.9, constant. FastCLIP's cosine from 1 to 0.2 over half
    # the epochs (--gamma 0.2 --gamma_schedule cosine) lost to the CLIP loss here (README).
    gamma: float = 0.9
    gamma_schedule: str = "constant"
    gamma_decay_epochs: int = 0  # with --gamma_schedule cosine; 0: half the epochs (FastCLIP)
    optimizer: str = "adamw"
    learning_rate: float = 0.000125  # x sqrt(B): 0.001 at batch 64
    learning_rate_scaling: str = "sqrt"
    weight_decay: float = 0.1
    warmup_epochs: float = 1.0
    steps_per_execution: int = 10
    eval_batch_size: int = 500

    @property
    def train_split(self):
        return f"train[:{self.train_subset}]"

    @property
    def test_split(self):
        return f"test[:{self.test_subset}]" if self.test_subset else "test"

    @property
    def decay_epochs(self):
        return self.gamma_decay_epochs or max(1, self.epochs // 2)

    def relevant(self, set_name, method):
        """The settings that can change a run's result (hashed into config_id)."""
        keys = ["train_subset", "test_subset", f"{set_name}_image_size", "width_multiplier",
                "epochs", "temperature", "learnable_temperature", "temperature_learning_rate",
                "gradient_scale", "optimizer", "learning_rate", "learning_rate_scaling",
                "weight_decay", "warmup_epochs"]
        if set_name == "mosaics":
            keys.append("mosaics_crop_area_min")
        out = {k: getattr(self, k) for k in keys}
        if method == "sogclr":
            out.update(gamma=self.gamma, gamma_schedule=self.gamma_schedule,
                       temperature_objective=self.temperature_objective,
                       temperature_rho=self.temperature_rho)
            if self.gamma_schedule == "cosine":
                out["gamma_decay_epochs"] = self.decay_epochs
        return out

    def config_id(self, set_name, method):
        return settings_id(self.relevant(set_name, method))


@dataclasses.dataclass(frozen=True)
class Run:
    set_name: str
    method: str
    batch_size: int
    seed: int

    @property
    def name(self):
        return f"{self.set_name}_{self.method}_b{self.batch_size}_s{self.seed}"


def run_list(sets, batch_sizes, seeds, multi_seed_batches, methods=METHODS):
    """Runs in the order they execute: every (set, batch size) at the first seed with both
    losses side by side, then the extra seeds at `multi_seed_batches`."""
    first, extra = seeds[0], seeds[1:]
    runs = [Run(s, m, b, first) for s in sets for b in batch_sizes for m in methods]
    runs += [Run(s, m, b, seed) for seed in extra for s in sets for b in batch_sizes
             if b in multi_seed_batches for m in methods]
    return runs


def pretrain_config(study, run, model_dir, train_steps=0):
    """run.py's bimodal configuration for `run` (validated)."""
    from tf_sogclr import config
    mosaics = run.set_name == "mosaics"
    return config.BimodalConfig(
        data=config.DataConfig(
            dataset=DATASET_OF_SET[run.set_name], data_dir=study.data_dir,
            train_split=study.train_split, eval_split=study.test_split,
            image_size=getattr(study, f"{run.set_name}_image_size"),
            crop_area_min=study.mosaics_crop_area_min if mosaics else 0.08,
            random_flip=not mosaics, shuffle_buffer=min(10_000, study.train_subset)),
        model=config.ModelConfig(width_multiplier=study.width_multiplier),
        loss=config.LossConfig(
            loss=LOSS_OF_METHOD[run.method], temperature=study.temperature,
            gamma=study.gamma, gamma_schedule=study.gamma_schedule,
            gamma_decay_epochs=study.decay_epochs if study.gamma_schedule == "cosine" else None,
            gradient_scale=study.gradient_scale, temperature_rho=study.temperature_rho),
        optimizer=config.OptimizerConfig(
            optimizer=study.optimizer, learning_rate=study.learning_rate,
            learning_rate_scaling=study.learning_rate_scaling,
            weight_decay=study.weight_decay, warmup_epochs=study.warmup_epochs),
        run=config.RunConfig(
            model_dir=model_dir, train_batch_size=run.batch_size, train_epochs=study.epochs,
            train_steps=train_steps, eval_batch_size=study.eval_batch_size,
            lineareval_while_pretraining=False, checkpoint_epochs=0, keep_checkpoint_max=1,
            steps_per_execution=study.steps_per_execution, seed=run.seed),
        text=config.TextConfig(
            learnable_temperature=bool(study.learnable_temperature),
            learnable_temperature_learning_rate=study.temperature_learning_rate or None,
            temperature_objective=(study.temperature_objective if run.method == "sogclr"
                                   else "isogclr")),
    ).validate()


def primary_score(set_name, scores):
    """The set's primary metric from an evaluation's `scores`."""
    if PRIMARY_METRIC[set_name] == "recall@1":
        return (scores["image_to_text_recall@1"] + scores["text_to_image_recall@1"]) / 2
    return scores[PRIMARY_METRIC[set_name]]


def execute(study, run, results_dir):
    """Pretrains and evaluates one run from scratch; returns its record."""
    import keras
    from tf_sogclr.training import lifecycle, modalities

    keras.backend.clear_session()
    keras.utils.set_random_seed(run.seed)
    model_dir = os.path.join(results_dir, "runs", run.name)
    shutil.rmtree(model_dir, ignore_errors=True)  # an interrupted run starts afresh
    cfg = pretrain_config(study, run, model_dir)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = lifecycle.pretrain(cfg, verbose=0)
    train_s = time.perf_counter() - start
    scores = modalities.get("bimodal").evaluate(cfg, result.model)
    wall_s = time.perf_counter() - start
    drop_checkpoints(model_dir)
    scores = {k: float(v) for k, v in scores.items()}
    return {
        "set": run.set_name, "method": run.method, "batch_size": run.batch_size,
        "seed": run.seed, "score": primary_score(run.set_name, scores), "scores": scores,
        "final_temperature": round(float(result.logs.get("temperature", float("nan"))), 5),
        "wall_s": round(wall_s, 2), "train_s": round(train_s, 2),
        "eval_s": round(wall_s - train_s, 2), "steps": result.step,
        "examples_per_s": round(result.step * run.batch_size / train_s, 1),
        "final_logs": {k: round(float(v), 5) for k, v in result.logs.items()},
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "config_id": study.config_id(run.set_name, run.method),
        "config": study.relevant(run.set_name, run.method), "commit": git_commit(REPO),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- plan


def estimate_s(run, study, rates, epochs=None):
    """Seconds `run` should take at `rates` ({set: {"examples_per_s", "overhead_s",
    "eval_s"}})."""
    epochs = study.epochs if epochs is None else epochs
    cost = rates[run.set_name]
    examples = epochs * (study.train_subset // run.batch_size) * run.batch_size
    by_batch = {int(b): r for b, r in cost["examples_per_s"].items()}
    nearest = min(by_batch, key=lambda b: abs(b - run.batch_size))
    return cost["overhead_s"] + examples / by_batch[nearest] + cost["eval_s"]


def probe(study, sets, batch_sizes, examples=(2048, 8192)):
    """This machine's rates at `study`'s configuration: per (set, batch size), two SogCLR
    pretraining runs of about `examples` examples (the difference gives examples/s, the
    remainder the fixed cost), and one evaluation per set."""
    import tempfile

    import keras
    from tf_sogclr.training import lifecycle, modalities

    rates = {}
    for set_name in sets:
        cost = rates[set_name] = {"examples_per_s": {}, "overhead_s": 0.0}
        for i, batch in enumerate(batch_sizes):
            steps = [max(1, n // batch) for n in examples]
            seconds = []
            # The first run of a set also pays one-off costs (the input cache, first traces):
            # an untimed warm-up keeps them out of the difference.
            for n in ((steps[0],) if i == 0 else ()) + tuple(steps):
                keras.backend.clear_session()
                with tempfile.TemporaryDirectory() as model_dir:
                    cfg = pretrain_config(study, Run(set_name, "sogclr", batch, 0), model_dir,
                                          train_steps=n)
                    start = time.perf_counter()
                    result = lifecycle.pretrain(cfg, verbose=0)
                    seconds.append(time.perf_counter() - start)
                    if n == steps[-1] and batch == batch_sizes[-1]:
                        start = time.perf_counter()
                        modalities.get("bimodal").evaluate(cfg, result.model)
                        cost["eval_s"] = time.perf_counter() - start
            seconds = seconds[-2:]
            if seconds[1] <= seconds[0]:
                raise RuntimeError(f"probe: {set_name} batch {batch}: {steps[1]} steps took no "
                                   f"longer than {steps[0]} ({seconds}); the machine is too "
                                   "noisy to measure, rerun --probe")
            rate = (steps[1] - steps[0]) * batch / (seconds[1] - seconds[0])
            cost["examples_per_s"][batch] = rate
            cost["overhead_s"] = max(cost["overhead_s"], seconds[0] - steps[0] * batch / rate)
            print(f"  probe: {set_name} batch {batch}: {rate:.0f} examples/s, fixed cost "
                  f"{seconds[0] - steps[0] * batch / rate:.0f} s (load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
        print(f"  probe: {set_name} evaluation {cost['eval_s']:.0f} s", flush=True)
    return rates


def print_plan(study, runs, rates, done, source, workers):
    print("Configuration:")
    for key, value in dataclasses.asdict(study).items():
        print(f"  {key} = {value}")
    print(f"Costs assumed ({source}):")
    for set_name, cost in rates.items():
        print(f"  {set_name}: examples/s by batch " + ", ".join(
            f"{b}: {r:.0f}" for b, r in sorted(cost["examples_per_s"].items())) +
            f"; fixed cost per run {cost['overhead_s']:.0f} s; evaluation "
            f"{cost['eval_s']:.0f} s")
    print_run_estimates(runs, done,
                        lambda run, epochs=None: estimate_s(run, study, rates, epochs),
                        BUDGET_S, MARGIN, workers)


# --------------------------------------------------------------------------- results


def groups(records, study):
    """{(set, method, batch_size): [records]} of the current configuration."""
    out = {}
    for r in records:
        if r.get("config_id") == study.config_id(r["set"], r["method"]):
            out.setdefault((r["set"], r["method"], r["batch_size"]), []).append(r)
    return out


def done_runs(records, study):
    return {Run(s, m, r["batch_size"], r["seed"])
            for (s, m, _), rs in groups(records, study).items() for r in rs}


def write_table(path, records, study, command):
    grouped = groups(records, study)
    commits = sorted({r.get("commit", "unrecorded") for rs in grouped.values() for r in rs})
    lines = [
        "# Bimodal study: SogCLR vs the CLIP loss on offline image-text sets", "",
        f"Command: `{command}`  ",
        f"Written: {datetime.datetime.now().isoformat(timespec='seconds')}, runs from commit "
        f"{', '.join(commits) or '—'}", "",
        f"ResNet-18 x{study.width_multiplier:g} + Transformer text tower, {study.train_split} "
        f"of each set for {study.epochs} epochs, {study.optimizer.upper()} lr "
        f"{study.learning_rate:g} x "
        f"{'sqrt(B)' if study.learning_rate_scaling == 'sqrt' else 'B/256'}, weight decay "
        f"{study.weight_decay:g}, warm-up {study.warmup_epochs:g} epoch(s), "
        f"{'learnable ' if study.learnable_temperature else ''}temperature from "
        f"{study.temperature:g}, gradient scale {study.gradient_scale}; SogCLR's gamma "
        + (f"cosine from 1 to {study.gamma:g} over {study.decay_epochs} epoch(s). "
           if study.gamma_schedule == "cosine" else f"{study.gamma:g} (constant). ") +
        "Scores in %, mean ± std over seeds (sample std; none for one seed)."]
    for set_name in SETS:
        cells = {k[1:]: v for k, v in grouped.items() if k[0] == set_name}
        if not cells:
            continue
        metrics = SECONDARY_METRICS[set_name]
        lines += ["", f"## {set_name} (primary: {PRIMARY_METRIC[set_name]})", "",
                  "| loss | batch | seeds | " + PRIMARY_METRIC[set_name] + " | " +
                  " | ".join(metrics) + " | final tau | examples/s | wall s |",
                  "| --- | ---: | ---: | ---: | " + "---: | " * len(metrics) +
                  "---: | ---: | ---: |"]
        for (method, batch), rs in sorted(cells.items(),
                                          key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
            score = summarise([r["score"] for r in rs])
            others = [format_mean_std(*summarise([r["scores"].get(m) for r in rs])[:2])
                      for m in metrics]
            tau = summarise([r["final_temperature"] for r in rs])[0]
            lines.append(
                f"| {method} | {batch} | {score[2]} | {format_mean_std(*score[:2])} | " +
                " | ".join(others) + f" | {tau:.3f} | "
                f"{summarise([r['examples_per_s'] for r in rs])[0]:.0f} | "
                f"{summarise([r['wall_s'] for r in rs])[0]:.0f} |")
        lines += ["", "SogCLR − CLIP (points) against the larger of the two seed spreads:", "",
                  "| batch | SogCLR | CLIP | Δ | larger std | beyond the spread |",
                  "| ---: | ---: | ---: | ---: | ---: | --- |"]
        for batch in sorted({b for (_, b) in cells}):
            sog = summarise([r["score"] for r in cells.get(("sogclr", batch), [])])
            clip = summarise([r["score"] for r in cells.get(("clip", batch), [])])
            if sog[0] is None or clip[0] is None:
                continue
            delta = sog[0] - clip[0]
            stds = [s for s in (sog[1], clip[1]) if s is not None]
            spread = max(stds) if stds else None
            verdict = ("— (one seed)" if spread is None else
                       "yes" if abs(delta) > spread else "no")
            lines.append(f"| {batch} | {format_mean_std(*sog[:2])} | "
                         f"{format_mean_std(*clip[:2])} | {100 * delta:+.1f} | "
                         f"{'—' if spread is None else f'{100 * spread:.1f}'} | {verdict} |")
    total = sum(r["wall_s"] for rs in grouped.values() for r in rs)
    lines += ["", f"Runs: {sum(map(len, grouped.values()))}, total run time "
              f"{total / 60:.1f} min."]
    write_atomically(path, "\n".join(lines) + "\n")


def write_plot(path, records, study):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = groups(records, study)
    fig, axes = plt.subplots(1, len(SETS), figsize=(11, 4.2), constrained_layout=True)
    styles = {"sogclr": ("tab:red", "s", "SogCLR"), "clip": ("tab:blue", "o", "CLIP loss")}
    for ax, set_name in zip(axes, SETS):
        batches = set()
        for method, (color, marker, label) in styles.items():
            points = sorted((b, summarise([r["score"] for r in rs]))
                            for (s, m, b), rs in grouped.items()
                            if s == set_name and m == method)
            if not points:
                continue
            xs = [b for b, _ in points]
            batches.update(xs)
            ax.errorbar(xs, [100 * p[0] for _, p in points],
                        yerr=[100 * (p[1] or 0.0) for _, p in points], color=color,
                        marker=marker, capsize=4, label=label)
        batch_size_axis(ax, batches, f"{PRIMARY_METRIC[set_name]} (%)",
                        set_name if batches else f"{set_name}: no runs")
    fig.suptitle(f"Image-text SogCLR vs CLIP loss, {study.epochs} epochs on "
                 f"{study.train_subset} pairs (mean ± std over seeds)", fontsize=10)
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


# --------------------------------------------------------------------------- main


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


QUICK = {"train_subset": 512, "test_subset": 500, "epochs": 1}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results_dir", required=True)
    p.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke: {QUICK}, batch 32, seed 0, both sets (< 5 min)")
    p.add_argument("--plan", action="store_true", help="print the plan and estimate; run nothing")
    p.add_argument("--probe", action="store_true",
                   help="with --plan: measure the costs here instead of the built-in ones")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated of {SETS}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated of {METHODS}")
    p.add_argument("--batch_sizes", type=_ints, default=None,
                   help=f"default {','.join(map(str, BATCH_SIZES))} (--quick: 32)")
    p.add_argument("--seeds", type=_ints, default=None, help="default 0,1,2 (--quick: 0)")
    p.add_argument("--multi_seed_batches", type=_ints, default=None,
                   help=f"default {','.join(map(str, MULTI_SEED_BATCHES))}")
    add_workers_flag(p)
    add_dataclass_flags(p, Study, QUICK, skip=("data_dir",))
    args = p.parse_args(argv)
    for name, choices in (("sets", SETS), ("methods", METHODS)):
        values = [v for v in getattr(args, name).split(",") if v]
        unknown = sorted(set(values) - set(choices))
        if unknown or not values:
            p.error(f"--{name}: unknown or none {unknown}; choose from {','.join(choices)}")
        setattr(args, name, values)
    return args


def main(argv=None):
    args = parse_args(argv)
    study = dataclass_from_args(Study, args, QUICK, data_dir=args.data_dir)
    batch_sizes = args.batch_sizes or ([32] if args.quick else list(BATCH_SIZES))
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    multi = args.multi_seed_batches or ([] if args.quick else list(MULTI_SEED_BATCHES))
    if study.train_subset < 1:
        sys.exit(f"--train_subset: an integer >= 1, got {study.train_subset}")
    if max(batch_sizes) > study.train_subset:
        sys.exit(f"--batch_sizes: {max(batch_sizes)} exceeds --train_subset="
                 f"{study.train_subset}")
    runs = run_list(args.sets, batch_sizes, seeds, multi, args.methods)
    try:  # bad settings fail here, before any run, naming the flag
        for run in {(r.set_name, r.method): r for r in runs}.values():
            pretrain_config(study, run, args.results_dir)
    except ValueError as error:
        sys.exit(str(error))
    jsonl = os.path.join(args.results_dir, JSONL)
    records = read_records(jsonl)
    done = done_runs(records, study)

    if args.plan:
        if args.probe:  # at the threads of one worker, alone on the machine
            hold_to_one_worker(args.workers)
            from tf_sogclr.data import offline
            for set_name in args.sets:
                offline.prepare(DATASET_OF_SET[set_name], study.data_dir)
            rates = probe(study, args.sets, batch_sizes)
            source = f"measured here just now, load average {os.getloadavg()[0]:.1f}"
        else:
            rates, source = BUILTIN_RATES, "built in, from the study's runs of 2026-12-06"
        if args.workers > 1:
            rates = {set_name: dict(cost, examples_per_s=side_by_side(
                cost["examples_per_s"], args.workers)) for set_name, cost in rates.items()}
            source += f", x {SIDE_BY_SIDE} each for runs side by side"
        print_plan(study, runs, rates, done, source, args.workers)
        return 0

    from tf_sogclr.data import offline
    for set_name in args.sets:
        offline.prepare(DATASET_OF_SET[set_name], study.data_dir)
    os.makedirs(args.results_dir, exist_ok=True)
    command = "python bench/bimodal_study.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def write_outputs(records):
        write_table(os.path.join(args.results_dir, TABLE), records, study, command)
        write_plot(os.path.join(args.results_dir, PLOT), records, study)

    run_pending(runs, done, functools.partial(execute, study, results_dir=args.results_dir),
                records, jsonl, write_outputs,
                lambda r: f"{PRIMARY_METRIC[r['set']]} {100 * r['score']:.1f}",
                workers=args.workers)
    print(f"Table: {os.path.join(args.results_dir, TABLE)}\n"
          f"Plot: {os.path.join(args.results_dir, PLOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
