"""What moves the default job's representation: run.py with one setting changed at a time.

    python bench/levers.py --results_dir results/levers --list            # the levers
    python bench/levers.py --results_dir results/levers                   # run them all
    python bench/levers.py --results_dir results/levers --only baseline,epochs4

Each lever is the offline default job of 2026-12-02 to 2026-12-06 (`PREVIOUS_DEFAULT`: run.py
with 28x28 images, width 1/8, LARS, 2 epochs) with the flags of that lever added, and
`default_job` is `python run.py` as it is now; each runs `--mode=train_then_eval` in a fresh
`--model_dir` under --results_dir, as a user runs it:
a subprocess under `/usr/bin/time -v`. One JSON line per finished lever goes to stdout and
to `levers.jsonl`: the flags, wall and CPU seconds of the whole job (set-up, training,
evaluation, export), CPU use in %, CPU seconds per training example, and run.py's evaluation (linear head, frozen-feature k-NN and linear probe, and the
same two scores of raw pixels, which are the floor: `frozen_features`). A lever already in
`levers.jsonl` with the same flags is skipped (delete its line to rerun it); its model_dir
keeps the checkpoint, so `run.py --mode=eval --model_dir=<results_dir>/runs/<lever>` scores
it again under other evaluation flags. Only one lever runs at a time: the timings need both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSONL = "levers.jsonl"
DEFAULT_BATCH = 256  # config.RunConfig.train_batch_size (this script imports no TensorFlow)

# The default job these levers were measured against (2026-12-02 to 2026-12-06): 28x28,
# ResNet-18 of width 1/8, jitter 0.5, LARS lr 0.3, weight decay 1e-6, 2 epochs. Every lever
# starts from it, so each keeps its meaning now that run.py's defaults have moved on (to the
# last lever's configuration: "default_job").
PREVIOUS_DEFAULT = ["--image_size=28", "--width_multiplier=0.125", "--color_jitter_strength=0.5",
                    "--optimizer=lars", "--learning_rate=0.3", "--weight_decay=1e-6",
                    "--train_epochs=2"]

# name -> flags added to PREVIOUS_DEFAULT; each changes one thing from "baseline".
CHANGES = {
    "baseline": [],
    "epochs4": ["--train_epochs=4"],
    "crop0.25": ["--crop_area_min=0.25"],
    "temperature0.2": ["--temperature=0.2"],
    "temperature0.5": ["--temperature=0.5"],
    "width0.25": ["--width_multiplier=0.25"],
    "image16_epochs6": ["--image_size=16", "--train_epochs=6"],
    "no_color_jitter": ["--color_jitter_strength=0"],
    "color_jitter1.0": ["--color_jitter_strength=1.0"],  # SimCLR's ImageNet strength
    "blur": ["--use_blur"],
    "lr0.6": ["--learning_rate=0.6"],
    "batch64": ["--train_batch_size=64"],  # 4x the steps; the learning rate scales linearly
    # The surrogate's scale (docs/algorithm.md, "Gradient scale"): each convention named.
    "gradient_scale_infonce": ["--gradient_scale=infonce"],
    "gradient_scale_libauc": ["--gradient_scale=libauc"],
    "xla": ["--jit_compile"],  # XLA on the one CPU device: throughput, hence epochs
    # Combinations of the levers that helped (width: the probe; 16x16 + epochs and stronger
    # jitter: k-NN), sized to the default job's 15-minute budget.
    "candidate_16px_w0.25_jitter1_5ep": ["--image_size=16", "--width_multiplier=0.25",
                                         "--color_jitter_strength=1.0", "--train_epochs=5"],
    "proj64": ["--proj_out_dim=64"],
    # The same combination at the default width: the epochs the narrower encoder buys.
    "candidate_16px_jitter1_12ep": ["--image_size=16", "--color_jitter_strength=1.0",
                                    "--train_epochs=12"],
    # Optimisation for a short run (2026-12-06), on the 16x16 / jitter 1.0 / 6-epoch base of
    # image16_epochs6 and color_jitter1.0: AdamW (FastCLIP's), temperature 0.2, and SimCLR's
    # own CIFAR-10 recipe (LARS lr 1.0, weight decay 1e-4).
    "i16_j1_6ep_adamw": ["--image_size=16", "--color_jitter_strength=1.0", "--train_epochs=6",
                         "--optimizer=adamw", "--learning_rate=0.002", "--weight_decay=0.1"],
    "i16_j1_6ep_t0.2": ["--image_size=16", "--color_jitter_strength=1.0", "--train_epochs=6",
                        "--temperature=0.2"],
    "i16_j1_6ep_simclr_cifar": ["--image_size=16", "--color_jitter_strength=1.0",
                                "--train_epochs=6", "--learning_rate=1.0",
                                "--weight_decay=1e-4"],
    # 128-d features (the 64-d probe underfits its own training set at 81%, raw pixels 89%).
    "i16_w0.25_j1_5ep_adamw": ["--image_size=16", "--width_multiplier=0.25",
                               "--color_jitter_strength=1.0", "--train_epochs=5",
                               "--optimizer=adamw", "--learning_rate=0.002",
                               "--weight_decay=0.1"],
    "i16_w0.25_j1_8ep_adamw": ["--image_size=16", "--width_multiplier=0.25",
                               "--color_jitter_strength=1.0", "--train_epochs=8",
                               "--optimizer=adamw", "--learning_rate=0.002",
                               "--weight_decay=0.1"],
    "i16_w0.5_j1_3ep_adamw": ["--image_size=16", "--width_multiplier=0.5",
                              "--color_jitter_strength=1.0", "--train_epochs=3",
                              "--optimizer=adamw", "--learning_rate=0.002",
                              "--weight_decay=0.1"],
    # The 8-epoch candidate with one more setting changed: its k-NN ties raw pixels.
    "i16_w0.25_j1_8ep_adamw_lr0.004": ["--image_size=16", "--width_multiplier=0.25",
                                      "--color_jitter_strength=1.0", "--train_epochs=8",
                                      "--optimizer=adamw", "--weight_decay=0.1",
                                      "--learning_rate=0.004"],
}
LEVERS = {name: PREVIOUS_DEFAULT + flags for name, flags in CHANGES.items()}
LEVERS["default_job"] = []  # run.py as it is: DEFAULT_JOB (i16_w0.25_j1_8ep_adamw_lr0.004)


def parse_time_v(text):
    """Wall seconds, user + system CPU seconds and CPU % from `/usr/bin/time -v`'s report."""
    def field(label):
        match = re.search(rf"{re.escape(label)}: (.+)", text)
        return match.group(1).strip() if match else None

    clock = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(p) for p in clock.split(":")] if clock else []
    wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts))) if parts else None
    cpu = float(field("User time (seconds)") or 0) + float(field("System time (seconds)") or 0)
    percent = field("Percent of CPU this job got")
    return wall, cpu, (float(percent.rstrip("%")) if percent else None)


def run_lever(name, flags, results_dir, extra):
    model_dir = os.path.join(results_dir, "runs", name)
    shutil.rmtree(model_dir, ignore_errors=True)
    command = ["/usr/bin/time", "-v", sys.executable, os.path.join(REPO, "run.py"),
               f"--model_dir={model_dir}", *flags, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall_measured = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lever {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("Summary:") + len("Summary:"):])
    wall, cpu, percent = parse_time_v(done.stderr)
    batch = next((int(f.split("=")[1]) for f in flags + list(extra)
                  if f.startswith("--train_batch_size=")), DEFAULT_BATCH)
    wall = wall or wall_measured
    return {"lever": name, "flags": flags + list(extra), "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "cpu_percent": percent, "step": summary.get("step"),
            "train_examples": summary.get("step", 0) * batch,
            "cpu_s_per_train_example": round(cpu / max(1, summary.get("step", 0) * batch), 5),
            "eval": summary.get("eval"), "train": summary.get("train"),
            "load_avg": round(os.getloadavg()[0], 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results_dir", required=True)
    p.add_argument("--only", default="", help="comma-separated lever names (default: all)")
    p.add_argument("--list", action="store_true", help="print the levers and exit")
    p.add_argument("--extra", default="", help="flags added to every lever, space-separated")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(LEVERS)
    unknown = sorted(set(names) - set(LEVERS))
    if unknown:
        p.error(f"--only: unknown levers {unknown}; choose from {sorted(LEVERS)}")
    if args.list:
        for name in names:
            print(f"{name}: {' '.join(LEVERS[name]) or '(the default job)'}")
        return 0
    extra = args.extra.split()
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, JSONL)
    done = []
    if os.path.exists(path):
        with open(path) as f:
            done = [json.loads(line) for line in f if line.strip()]
    for name in names:
        flags = LEVERS[name]
        if any(r["lever"] == name and r["flags"] == flags + extra for r in done):
            print(f"# {name}: already in {path}", file=sys.stderr)
            continue
        record = run_lever(name, flags, args.results_dir, extra)
        print(json.dumps(record), flush=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
