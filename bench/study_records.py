"""What the studies in bench/ share: their JSON-lines record files and mean ± std.

A study appends one JSON object per finished run (`append_record`, fsync'd, so a kill loses at
most the run in progress) and, when started again, reads them back (`read_records`, which
drops a line cut short by a kill) to skip what is done. `summarise` and `format_mean_std`
turn the runs of one cell into the tables' "mean ± std" (sample std over seeds).
`add_dataclass_flags` / `dataclass_from_args` make a study's settings dataclass its command
line, `settings_id` names a configuration in the records, `git_commit` the code that ran it;
`print_run_estimates` is the plan, `run_pending` the resumable loop over the runs (in this
process, or in worker processes side by side), `drop_checkpoints` cleans a finished run,
`batch_size_axis` draws the plots' x axis.

Why worker processes: on 2 cores one TensorFlow process with both threads trains the small
studies' ResNet at 16x16 only a little faster than one thread does (batch 16: 614 against 562
examples/s; batch 256: 1,328 against 838), so two single-threaded runs side by side finish
1.8x (batch 16) and 1.2x (batch 256) more examples per second than one two-threaded run
(measured: 563 + 531 and 812 + 811 examples/s; bench/README.md, "Studies on both cores").
"""

import argparse
import concurrent.futures
import dataclasses
import hashlib
import heapq
import json
import multiprocessing
import os
import statistics
import subprocess
import time


def read_records(path):
    """The records of a JSON-lines file, [] if it does not exist."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill: rerun that run
                    pass
    return records


def append_record(path, record):
    """Appends `record` (a JSON-ready dict) as one line and syncs it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summarise(values):
    """(mean, sample std or None for one value, count) of the values that are not None;
    (None, None, 0) for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std, len(values)


def format_mean_std(mean, std, scale=100.0, digits=1):
    """"80.1 ± 0.4" (fractions shown in %), "80.1" without a std, "—" without a mean."""
    if mean is None:
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def write_atomically(path, text):
    """Writes `text` to `path` through a temporary file, so a reader never sees half of it."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def settings_id(settings):
    """A short stable hash of a JSON-ready dict: records with equal ids ran the same settings."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def git_commit(repo):
    """The short commit `repo` is checked out at ("unknown" outside git)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def add_dataclass_flags(parser, cls, quick=None, skip=()):
    """One `--<field>` flag per field of the dataclass `cls` (int, float or str, from its
    annotation; default None = the field's default), its help naming the default and the
    `quick` override."""
    quick = quick or {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        annotation = field.type if isinstance(field.type, str) else field.type.__name__
        kind = {"int": int, "float": float, "str": str}.get(annotation.split(" ")[0], str)
        note = f" (--quick: {quick[field.name]})" if field.name in quick else ""
        parser.add_argument(f"--{field.name}", type=kind, default=None,
                            help=f"default {field.default}{note}")


def dataclass_from_args(cls, args, quick=None, **fixed):
    """`cls` from the flags of `add_dataclass_flags`: the defaults, then `quick`'s values when
    `args.quick`, then the flags given, then `fixed`."""
    values = dict(quick or {}) if getattr(args, "quick", False) else {}
    for field in dataclasses.fields(cls):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    values.update(fixed)
    return cls(**values)


def drop_checkpoints(model_dir):
    """Deletes a finished run's checkpoints from `model_dir`, keeping its TensorBoard scalars."""
    for path in os.listdir(model_dir):
        if path.startswith("ckpt-") or path == "checkpoint":
            os.remove(os.path.join(model_dir, path))


def makespan(durations, workers):
    """Seconds until `workers` processes finish `durations` (seconds, in order), each run
    going to the first worker free, as `run_pending` hands them out."""
    free_at = [0.0] * max(1, workers)
    for seconds in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + seconds)
    return max(free_at)


def print_run_estimates(runs, done, estimate_s, budget_s, margin, workers=1):
    """Prints each run's estimate (`estimate_s(run, epochs=None)` seconds; "done" for runs in
    `done`), the time left and the whole study's on `workers` processes against `budget_s`,
    and the most epochs that keep a `margin` (fraction) of it. Returns the seconds left."""
    todo = [r for r in runs if r not in done]
    print(f"Runs ({len(runs)}, {len(runs) - len(todo)} already done):")
    width = max((len(r.name) for r in runs), default=0) + 2
    for run in runs:
        status = "done" if run in done else f"~{estimate_s(run) / 60:.1f} min"
        print(f"  {run.name:<{width}} {status}")
    left = makespan([estimate_s(r) for r in todo], workers)
    whole = makespan([estimate_s(r) for r in runs], workers)
    print(f"Estimated time left: {left / 60:.1f} min; whole study {whole / 60:.1f} min on "
          f"{workers} worker process(es) (budget {budget_s / 60:.0f} min, "
          f"{100 * (1 - whole / budget_s):.0f}% margin)")
    fits = [e for e in range(1, 201)
            if makespan([estimate_s(r, e) for r in runs], workers) <= (1 - margin) * budget_s]
    print(f"Most epochs that keep a {100 * margin:.0f}% margin at these costs: "
          f"{max(fits) if fits else 'none'} (--epochs)")
    return left


# Runs side by side by default (--workers), and the rate each of two one-thread runs keeps
# beside the other, as a fraction of its rate alone (measured at the small-batch study's
# shape: 563 + 531 against 562 alone at batch 16, 812 + 811 against 838 at batch 256).
WORKERS = 2
SIDE_BY_SIDE = 0.97


def _workers(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1, got {value}")
    return value


def add_workers_flag(parser):
    """`--workers`: how many runs go side by side (`run_pending`)."""
    parser.add_argument(
        "--workers", type=_workers, default=WORKERS,
        help="runs side by side, each in its own process with os.cpu_count() // workers "
             "threads; 1: one after the other in this process, all threads (default "
             f"{WORKERS}: on 2 cores, two one-thread runs train 1.2-1.8x more examples per "
             "second than one two-thread run)")


def worker_threads(workers):
    """Threads of each of `workers` processes side by side: os.cpu_count() // workers."""
    return max(1, (os.cpu_count() or 1) // workers)


def thread_environment(threads):
    """Environment variables that hold a TensorFlow process to `threads` threads for its ops
    (intra-op) and for running independent ops (inter-op); set before TensorFlow starts."""
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads)}


def hold_to_one_worker(workers):
    """Before TensorFlow starts: this process gets one worker's threads (for probes that
    measure what a worker will run at); nothing for one worker."""
    if workers > 1:
        os.environ.update(thread_environment(worker_threads(workers)))


def side_by_side(examples_per_s, workers):
    """{batch: examples/s} of runs alone -> of each run with `workers` side by side."""
    factor = SIDE_BY_SIDE if workers > 1 else 1.0
    return {batch: rate * factor for batch, rate in examples_per_s.items()}


def _start_worker(threads):
    os.environ.update(thread_environment(threads))


def run_pending(runs, done, execute, records, jsonl, write_outputs, describe, workers=1):
    """Executes the `runs` not in `done`: in this process one after the other, or with
    `workers` > 1 in that many worker processes side by side, each a fresh process per run
    (TensorFlow graphs and thread pools do not mix) holding os.cpu_count() // workers
    threads; `execute` must then be picklable (a module-level function or a partial of one).
    Each record (`execute(run)`, plus `workers`) is appended to `jsonl` and `records` as its
    run finishes, then `write_outputs(records)` rewrites the table and plot; a progress line
    shows `describe(record)`. A failed run stops the study after the runs in flight."""
    todo = [r for r in runs if r not in done]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {jsonl}, {len(todo)} to go"
          + (f", {workers} at a time" if workers > 1 else ""), flush=True)
    start = time.perf_counter()

    def finished(i, run, record):
        record["workers"] = workers
        append_record(jsonl, record)
        records.append(record)
        write_outputs(records)
        print(f"[{i}/{len(todo)}] {run.name}: {describe(record)}  ({record['wall_s']:.0f} s, "
              f"{(time.perf_counter() - start) / 60:.1f} min so far)", flush=True)

    if workers <= 1:
        for i, run in enumerate(todo, 1):
            finished(i, run, execute(run))
    elif todo:
        threads = worker_threads(workers)
        with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(threads,),
                max_tasks_per_child=1) as pool:
            futures = {pool.submit(execute, run): run for run in todo}
            try:
                for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
                    finished(i, futures[future], future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    write_outputs(records)


def batch_size_axis(ax, batches, ylabel, title):
    """A matplotlib axis over batch sizes: log2 x with a tick at each of `batches`, a grid,
    and a legend when anything is drawn."""
    ax.set_xscale("log", base=2)
    if batches:
        ax.set_xticks(sorted(batches), [str(b) for b in sorted(batches)])
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
