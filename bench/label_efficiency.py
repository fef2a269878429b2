"""What pretraining buys: fine-tuning on 1%, 10% and 100% of the labels (SimCLR's table).

    python bench/label_efficiency.py --results_dir results/label_efficiency           # study
    python bench/label_efficiency.py --results_dir /tmp/label_efficiency --quick      # < 5 min

Pretrains the offline default job twice, SogCLR and SimCLR (`config.PretrainConfig`'s
defaults, which are run.py's: ResNet-18 x1/8 on all 60,000 Fashion-MNIST training images, 2
epochs, seed 0), exports each encoder and scores its frozen features (k-NN, linear probe) beside
raw pixels. Then, for each fraction of the labels, it fine-tunes the same classifier three
ways through `training.finetune.finetune` (what `run.py --train_mode=finetune` runs, with the
fine-tuning recipe's defaults: momentum, lr 0.1 x B/256, no decay, no warm-up, flips):
from the SogCLR export, from the SimCLR export and from a random encoder (`--checkpoint=none`),
and fits the raw-pixel linear classifier (`evaluation.frozen_features`: softmax regression on
standardised pixels) on the same labels: the floor. All are scored on the whole test split.

Labelled subsets are stable and disjoint: seed s at fraction f% is examples
[s*n, (s+1)*n) of the label split, n = f% of its first --label_examples examples (TFDS
index slicing; the pretraining saw the images, never the labels). Fractions below 100 get
every --seeds (a new subset and a new initialisation each), 100% the first. Every cell
fine-tunes for about --finetune_steps steps: batch 256, or the largest of 128, 64, 32, 16 that
gives at least 8 steps an epoch, and as many epochs as the steps need (300 steps: 600
labels, batch 64, 33 epochs; 6,000: batch 256, 13; 60,000: batch 256, 1). The spread is over
labelled subsets and fine-tuning seeds; each method is pretrained once.

Writes `runs.jsonl` (one record per pretraining and per cell, after each), `results.md` (mean ±
std per cell) and `label_efficiency.png` into --results_dir; run again with the same
command, it skips what is recorded (an interrupted fine-tune resumes from its backup).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.study_records import (add_dataclass_flags, append_record,  # noqa: E402
                                 dataclass_from_args, format_mean_std, git_commit,
                                 read_records, settings_id, summarise, write_atomically)

PRETRAINED = ("sogclr", "simclr")
SOURCES = PRETRAINED + ("scratch", "raw_pixels")
LABELS = {"sogclr": "SogCLR, fine-tuned", "simclr": "SimCLR, fine-tuned",
          "scratch": "from scratch (no pretraining)", "raw_pixels": "raw-pixel linear (floor)"}
JSONL, TABLE, PLOT = "runs.jsonl", "results.md", "label_efficiency.png"
BATCH_SIZES = (256, 128, 64, 32, 16)
MIN_STEPS_PER_EPOCH = 8


@dataclasses.dataclass(frozen=True)
class Study:
    """The settings every cell of one study shares (CLI flags of the same names)."""

    dataset: str = "fashion_mnist_debian"
    data_dir: str | None = None
    pretrain_split: str = "train"
    pretrain_epochs: int = 2
    pretrain_batch_size: int = 256
    probe_split: str | None = None  # None: run.py's (the first 10,000 of the train split)
    label_split: str = "train"
    label_examples: int | None = None  # None: the whole label split
    test_split: str = "test"
    finetune_steps: int = 300

    def config_id(self):
        """Hash of the settings that change a result (data_dir does not)."""
        return settings_id({k: v for k, v in dataclasses.asdict(self).items()
                            if k != "data_dir"})


@dataclasses.dataclass(frozen=True)
class Cell:
    """One fine-tuning (or floor) run: a source, a fraction of the labels, a seed."""

    source: str
    fraction: float  # percent of the labelled examples
    seed: int

    @property
    def name(self):
        return f"{self.source}_{self.fraction:g}pct_s{self.seed}"


def subset_size(num_label_examples, fraction):
    """Examples in one labelled subset: `fraction` percent, at least one."""
    return max(1, int(round(num_label_examples * fraction / 100)))


def subset_split(study, num_label_examples, fraction, seed):
    """The TFDS split of seed `seed`'s labelled subset at `fraction` percent."""
    n = subset_size(num_label_examples, fraction)
    return f"{study.label_split}[{seed * n}:{(seed + 1) * n}]"


def finetune_schedule(num_labels, steps):
    """(batch size, epochs) of a cell with `num_labels` examples and a `steps` budget."""
    batch = next((b for b in BATCH_SIZES if num_labels // b >= MIN_STEPS_PER_EPOCH),
                 min(BATCH_SIZES[-1], num_labels))
    return batch, max(1, round(steps / (num_labels // batch)))


def cells(fractions, seeds):
    """Every cell: fractions below 100 at every seed, 100% at the first."""
    return [Cell(source, fraction, seed) for fraction in fractions
            for seed in (seeds if fraction < 100 else seeds[:1]) for source in SOURCES]


# --------------------------------------------------------------------------- running


def _cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pretrain_config(study, method, results_dir):
    from tf_sogclr import config
    return config.PretrainConfig(
        data=config.DataConfig(dataset=study.dataset, data_dir=study.data_dir,
                               train_split=study.pretrain_split, eval_split=study.test_split,
                               probe_split=study.probe_split),
        loss=config.LossConfig(loss=method),
        run=config.RunConfig(model_dir=os.path.join(results_dir, "pretrain", method),
                             train_epochs=study.pretrain_epochs,
                             train_batch_size=study.pretrain_batch_size, seed=0)).validate()


def pretrain(study, method, results_dir):
    """Pretrains (or resumes) `method`, exports the encoder, scores its frozen features."""
    from tf_sogclr.data import describe
    from tf_sogclr.training import lifecycle

    cfg = pretrain_config(study, method, results_dir)
    start, cpu = time.perf_counter(), _cpu_s()
    result = lifecycle.pretrain(cfg, verbose=0)
    info = describe(cfg.data.dataset, cfg.data.train_split, cfg.data.data_dir)
    shape = (cfg.data.image_size, cfg.data.image_size, info.channels)
    export = lifecycle.export_for_step(result.model, cfg, os.path.join(cfg.run.model_dir,
                                                                      "saved_model"),
                                       result.step, shape, keep_max=1)
    train_wall, train_cpu = time.perf_counter() - start, _cpu_s() - cpu
    scores = lifecycle.evaluate(cfg)
    return {"kind": "pretrain", "source": method, "export": export, "step": result.step,
            "pretrain_wall_s": train_wall, "pretrain_cpu_s": train_cpu,
            "cpu_s_per_example": train_cpu / (result.step * cfg.run.train_batch_size),
            **{k: scores[k] for k in ("knn_top1", "linear_probe_top1", "raw_pixels_knn_top1",
                                      "raw_pixels_linear_probe_top1")}}


def run_cell(study, cell, num_label_examples, exports, results_dir):
    """Fine-tunes (or fits the floor of) one cell; returns its record."""
    import keras

    from tf_sogclr import config
    from tf_sogclr.training import finetune

    split = subset_split(study, num_label_examples, cell.fraction, cell.seed)
    num_labels = subset_size(num_label_examples, cell.fraction)
    batch, epochs = finetune_schedule(num_labels, study.finetune_steps)
    keras.backend.clear_session()
    start, cpu = time.perf_counter(), _cpu_s()
    record = {"kind": "cell", "source": cell.source, "fraction": cell.fraction,
              "seed": cell.seed, "split": split, "num_labels": num_labels}
    cfg = pretrain_config(study, "sogclr", results_dir)  # the data and model of every cell
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, train_split=split),
        run=dataclasses.replace(cfg.run, seed=cell.seed))
    if cell.source == "raw_pixels":
        scores = finetune.raw_pixel_floor(cfg)
        record.update(test_top1=scores["raw_pixels_linear_probe_top1"],
                      train_top1=scores["raw_pixels_linear_probe_train_top1"],
                      knn_top1=scores["raw_pixels_knn_top1"])
    else:
        fcfg = config.FinetuneConfig(
            checkpoint=exports[cell.source] if cell.source in PRETRAINED else "none",
            train_epochs=epochs, train_batch_size=batch,
            finetune_dir=os.path.join(results_dir, "finetune", cell.name))
        result = finetune.finetune(cfg, fcfg, verbose=0)
        record.update(test_top1=result.eval_top1, train_top1=result.history["top1"][-1]
                      if result.history.get("top1") else None, batch_size=batch, epochs=epochs)
    record.update(wall_s=time.perf_counter() - start, cpu_s=_cpu_s() - cpu)
    return record


# --------------------------------------------------------------------------- results


def grouped(records, config_id):
    """{(source, fraction): [cell records]} and {method: pretraining record} of one study."""
    cells_, pretrained = {}, {}
    for r in records:
        if r.get("config_id") != config_id:
            continue
        if r["kind"] == "pretrain":
            pretrained[r["source"]] = r
        else:
            cells_.setdefault((r["source"], r["fraction"]), []).append(r)
    return cells_, pretrained


def write_table(path, records, study, command, commit):
    results, pretrained = grouped(records, study.config_id())
    fractions = sorted({f for _, f in results})
    lines = ["# Label efficiency: fine-tuning on a fraction of the labels", "",
             f"Command: `{command}`  ", f"Commit: {commit}  ",
             f"Written: {datetime.datetime.now().isoformat(timespec='seconds')}", "",
             f"Test top-1 in % on {study.test_split}, mean ± std over labelled subsets and "
             "seeds (n runs).", ""]
    labels = {f: rs[0]["num_labels"] for (_, f), rs in results.items()}
    header = [f"{f:g}% ({labels[f]:,} labels)" for f in fractions]
    lines += ["| source | " + " | ".join(header) + " |",
              "| --- |" + " ---: |" * len(header)]
    for source in SOURCES:
        row = []
        for f in fractions:
            mean, std, n = summarise([r["test_top1"] for r in results.get((source, f), [])])
            row.append(f"{format_mean_std(mean, std)} (n={n})" if n else "—")
        lines.append(f"| {LABELS[source]} | " + " | ".join(row) + " |")
    for method in PRETRAINED:
        row = []
        for f in fractions:
            ours = summarise([r["test_top1"] for r in results.get((method, f), [])])[0]
            base = summarise([r["test_top1"] for r in results.get(("scratch", f), [])])[0]
            row.append("—" if None in (ours, base) else f"{100 * (ours - base):+.1f}")
        lines.append(f"| {LABELS[method].split(',')[0]} − scratch (points) | "
                     + " | ".join(row) + " |")
    lines += ["", "Pretraining (frozen features, probe set and k-NN bank of run.py's "
              "evaluation; raw pixels scored the same way):", "",
              "| method | steps | wall | CPU s / example | k-NN | linear probe | "
              "raw pixels k-NN / probe |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method, r in sorted(pretrained.items()):
        lines.append(f"| {method} | {r['step']} | {r['pretrain_wall_s'] / 60:.1f} min | "
                     f"{r['cpu_s_per_example']:.4f} | {100 * r['knn_top1']:.1f} | "
                     f"{100 * r['linear_probe_top1']:.1f} | "
                     f"{100 * r['raw_pixels_knn_top1']:.1f} / "
                     f"{100 * r['raw_pixels_linear_probe_top1']:.1f} |")
    total = sum(r.get("wall_s", r.get("pretrain_wall_s", 0.0)) for r in records
                if r.get("config_id") == study.config_id())
    lines += ["", f"Total run time {total / 60:.1f} min."]
    write_atomically(path, "\n".join(lines) + "\n")


def write_plot(path, records, study):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, _ = grouped(records, study.config_id())
    styles = {"sogclr": ("tab:red", "s", "-"), "simclr": ("tab:blue", "o", "-"),
              "scratch": ("k", "^", ":"), "raw_pixels": ("tab:green", "D", "-.")}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    for source, (color, marker, style) in styles.items():
        points = sorted((f, summarise([r["test_top1"] for r in rs]))
                        for (s, f), rs in results.items() if s == source)
        if points:
            ax.errorbar([f for f, _ in points], [100 * m for _, (m, _, _) in points],
                        yerr=[100 * (sd or 0.0) for _, (_, sd, _) in points], color=color,
                        marker=marker, linestyle=style, capsize=4, label=LABELS[source])
    fractions = sorted({f for _, f in results})
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}%" for f in fractions])
    ax.set_xlabel("labelled training examples (fraction of the label split)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Fashion-MNIST, fine-tuning ResNet-18 x1/8 for ~{study.finetune_steps} "
                 "steps (mean ± std)", fontsize=9)
    ax.grid(alpha=0.3)
    if results:
        ax.legend(fontsize=8)
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


# --------------------------------------------------------------------------- command line


QUICK = {"pretrain_split": "train[:1024]", "pretrain_epochs": 1, "pretrain_batch_size": 128,
         "probe_split": "train[:2000]", "label_examples": 2000, "test_split": "test[:2000]",
         "finetune_steps": 20}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results_dir", required=True)
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run (< 5 minutes): {QUICK}, one seed")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 10.0, 100.0],
                   help="percent of the labelled examples (default: 1 10 100)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="labelled subsets and fine-tuning seeds below 100%% (default 0 1 2; "
                        "--quick: 0)")
    add_dataclass_flags(p, Study, QUICK)
    return p.parse_args(argv)


def study_from_args(args):
    return dataclass_from_args(Study, args, QUICK)


def check_plan(study, fractions, seeds, num_label_examples):
    """Exits naming the flag on anything that cannot run, before any training
    (`num_label_examples` None: only what needs no dataset)."""
    if "[" in study.label_split:
        sys.exit(f"--label_split: a split name without slicing (--label_examples takes its "
                 f"first N examples), got {study.label_split!r}")
    if not fractions or any(not 0 < f <= 100 for f in fractions):
        sys.exit(f"--fractions: percentages in (0, 100], got {fractions}")
    if not seeds or min(seeds) < 0:
        sys.exit(f"--seeds: integers >= 0, got {seeds}")
    for f in fractions if num_label_examples is not None else ():
        n = subset_size(num_label_examples, f)
        last = (max(seeds) + 1) * n if f < 100 else n
        if last > num_label_examples:
            sys.exit(f"--seeds / --fractions: seed {max(seeds)}'s {f:g}% subset ends at "
                     f"example {last}, past the {num_label_examples} labelled examples "
                     "(disjoint subsets need (max seed + 1) x fraction <= 100%)")


def main(argv=None):
    args = parse_args(argv)
    study = study_from_args(args)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    from tf_sogclr.data import describe, offline
    offline.prepare(study.dataset, study.data_dir)
    check_plan(study, args.fractions, seeds, None)
    num_label_examples = describe(study.dataset, study.label_split,
                                  study.data_dir).num_split_examples
    if study.label_examples is not None:
        if not 0 < study.label_examples <= num_label_examples:
            sys.exit(f"--label_examples: in [1, {num_label_examples}] (the examples of "
                     f"{study.label_split}), got {study.label_examples}")
        num_label_examples = study.label_examples
    check_plan(study, args.fractions, seeds, num_label_examples)
    for method in PRETRAINED:  # bad settings fail here, before any training
        pretrain_config(study, method, args.results_dir)

    os.makedirs(args.results_dir, exist_ok=True)
    jsonl = os.path.join(args.results_dir, JSONL)
    records = read_records(jsonl)
    command = "python bench/label_efficiency.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    commit = git_commit(REPO)
    stamp = {"config_id": study.config_id(), "commit": commit}

    def finish(record):
        record.update(stamp, date=datetime.date.today().isoformat())
        append_record(jsonl, record)
        records.append(record)
        write_table(os.path.join(args.results_dir, TABLE), records, study, command, commit)
        write_plot(os.path.join(args.results_dir, PLOT), records, study)

    start = time.perf_counter()
    results, pretrained = grouped(records, study.config_id())
    for method in PRETRAINED:
        if method not in pretrained or not os.path.isdir(pretrained[method]["export"]):
            finish(pretrain(study, method, args.results_dir))
            r = records[-1]
            print(f"pretrained {method}: k-NN {100 * r['knn_top1']:.1f}, linear probe "
                  f"{100 * r['linear_probe_top1']:.1f} ({r['pretrain_wall_s']:.0f} s)",
                  flush=True)
    exports = {m: r["export"] for m, r in grouped(records, study.config_id())[1].items()}
    done = {Cell(r["source"], r["fraction"], r["seed"])
            for rs in grouped(records, study.config_id())[0].values() for r in rs}
    todo = [c for c in cells(args.fractions, seeds) if c not in done]
    print(f"{len(todo)} cells to go", flush=True)
    for i, cell in enumerate(todo, 1):
        finish(run_cell(study, cell, num_label_examples, exports, args.results_dir))
        r = records[-1]
        print(f"[{i}/{len(todo)}] {cell.name}: test top-1 {100 * r['test_top1']:.1f} "
              f"({r['wall_s']:.0f} s, {(time.perf_counter() - start) / 60:.1f} min so far)",
              flush=True)
    print(f"Table: {os.path.join(args.results_dir, TABLE)}\n"
          f"Plot: {os.path.join(args.results_dir, PLOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
