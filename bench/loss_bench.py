"""Speed and memory of the loss step: prints one JSON object per line (`name`, `value`, ...).

    python bench/loss_bench.py [--batch 256 --dim 128 --repeats 7]
    python bench/loss_bench.py --case=sogclr   # one measurement: a JSON line (bench/alternate.py)

* `sogclr_over_ntxent_time`: SogCLR loss + gradients + table update over NT-Xent loss +
  gradients, same batch, both in one process timed in turns (`--blocks` blocks of 20
  steps): the median per-block ratio and its quartiles (target <= 1.05); with and without
  XLA.
* `table_1e8_over_1e4_time`: the same SogCLR step with 10^8 vs 10^4 table rows (target
  <= 1.05), and `table_1e8_bytes_per_row`: resident memory added per row (target ~4), and
  whether any step raised the process's peak memory (a per-step copy of the table would).
* `dense_table_1e8_over_1e4_time`: the authors' dense update (tensor_scatter_nd_update of
  the whole table + assign) measured the same way, for the record.

Each table size runs in a fresh subprocess so that memory readings do not mix.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _rss_bytes():
    import psutil
    return psutil.Process().memory_info().rss


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time_step(step, args, repeats, iterations):
    """Median over `repeats` of the mean seconds per call over `iterations` calls."""
    for _ in range(3):
        step(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            result = step(*args)
        float(result)  # Wait for the last step.
        times.append((time.perf_counter() - start) / iterations)
    times.sort()
    return times[len(times) // 2]


def _inputs(batch, dim, num_examples, seed=0):
    import numpy as np
    import tensorflow as tf
    gen = tf.random.Generator.from_seed(seed)
    z1 = gen.normal([batch, dim])
    z2 = gen.normal([batch, dim])
    # Distinct rows, as in a batch of a shuffled epoch: the table write still checks for
    # duplicates every step, and merges them only when there are some (rare in training).
    rows = np.random.default_rng(seed).choice(num_examples, batch, replace=False)
    return z1, z2, tf.constant(rows, tf.int32)


def _gradient_step(loss_call, jit):
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step(z1, z2, index):
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            loss = loss_call(z1, z2, index)
        g1, g2 = tape.gradient(loss, [z1, z2])
        return loss + tf.reduce_sum(g1[0]) * 0 + tf.reduce_sum(g2[0]) * 0

    return step


class DenseTableLoss:
    """The authors' table update: the whole table rewritten every step (O(num_examples))."""

    def __init__(self, num_examples, temperature=0.1, gamma=0.9):
        import tensorflow as tf
        from tf_sogclr import losses
        self.sparse = losses.GlobalContrastiveLoss(num_examples, temperature, gamma)
        self.table = tf.Variable(tf.zeros([num_examples]), trainable=False)

    def __call__(self, z1, z2, index):
        import tensorflow as tf
        loss = self.sparse(z1, z2, index)
        rows = tf.gather(self.sparse.u_table.log_u.value, index)
        dense = tf.tensor_scatter_nd_update(self.table, index[:, None], tf.exp(rows))
        self.table.assign(dense)
        return loss


def run_case(case, num_examples, batch, dim, repeats, jit):
    """One measurement in this process; returns a dict."""
    import tensorflow  # noqa: F401 (loaded before the RSS baseline: not counted)
    from tf_sogclr import losses
    baseline = _rss_bytes()
    if case == "ntxent":
        loss_call = lambda z1, z2, index: losses.nt_xent_loss(z1, z2)
    elif case == "sogclr":
        layer = losses.GlobalContrastiveLoss(num_examples)
        loss_call = layer
    elif case == "dense":
        loss_call = DenseTableLoss(num_examples)
    else:
        raise ValueError(f"case must be ntxent, sogclr or dense, got {case!r}")
    after_table = _rss_bytes()
    step = _gradient_step(loss_call, jit)
    args = _inputs(batch, dim, num_examples)
    step(*args)
    peak_before_steps = _peak_rss_bytes()
    cpu = time.process_time()
    seconds = _time_step(step, args, repeats, iterations=20)
    cpu_per_step = (time.process_time() - cpu) / (repeats * 20 + 3)
    return {
        "seconds_per_step": seconds,
        # For bench/alternate.py: anchors (both views) per second and CPU-seconds per anchor.
        "examples_per_s": batch / seconds,
        "cpu_seconds_per_example": cpu_per_step / batch,
        "table_bytes": after_table - baseline,
        "steps_raised_peak_rss_bytes": max(0, _peak_rss_bytes() - peak_before_steps),
        "rss_after_steps_bytes": _rss_bytes() - baseline,
    }


def interleaved_ratio(batch, dim, blocks, jit, iterations=20):
    """SogCLR's loss step over NT-Xent's, both built in this process and timed in turns
    (`blocks` blocks of `iterations` steps each), so the machine's drift hits both alike:
    medians of each block's ms per step, and the median and quartiles of the per-block
    ratios."""
    import statistics
    from tf_sogclr import losses
    steps = {"sogclr": _gradient_step(losses.GlobalContrastiveLoss(10_000), jit),
             "ntxent": _gradient_step(lambda z1, z2, index: losses.nt_xent_loss(z1, z2), jit)}
    args = _inputs(batch, dim, 10_000)
    for step in steps.values():
        _time_step(step, args, repeats=1, iterations=iterations)  # trace, warm up
    ms = {name: [] for name in steps}
    for _ in range(blocks):
        for name, step in steps.items():
            ms[name].append(1e3 * _time_step(step, args, repeats=1, iterations=iterations))
    ratios = [s / n for s, n in zip(ms["sogclr"], ms["ntxent"])]
    return {"value": statistics.median(ratios),
            "quartiles": [round(q, 4) for q in statistics.quantiles(ratios, n=4)],
            "sogclr_ms": statistics.median(ms["sogclr"]),
            "ntxent_ms": statistics.median(ms["ntxent"]), "blocks": blocks}


def _subprocess_case(case, num_examples, args, jit):
    command = [sys.executable, os.path.abspath(__file__), "--case", case,
               "--num_examples", str(num_examples), "--batch", str(args.batch),
               "--dim", str(args.dim), "--repeats", str(args.repeats),
               "--blocks", str(args.blocks)]
    if jit:
        command.append("--jit")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--blocks", type=int, default=60,
                        help="sogclr_over_ntxent_time: blocks of 20 steps timed in turns")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--num_examples", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.blocks < 2:
        parser.error(f"--blocks must be >= 2 (its quartiles need two blocks), got {args.blocks}.")
    if args.case == "ratio":
        print(json.dumps(interleaved_ratio(args.batch, args.dim, args.blocks, args.jit)))
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.num_examples, args.batch, args.dim,
                                  args.repeats, args.jit)))
        return

    common = {"batch": args.batch, "dim": args.dim}
    for jit in (False, True):
        ratio = _subprocess_case("ratio", 10_000, args, jit)
        print(json.dumps({"name": "sogclr_over_ntxent_time", "jit_compile": jit, **ratio,
                          "target": "<= 1.05", **common}))
    for case, name in (("sogclr", "table_1e8_over_1e4_time"),
                       ("dense", "dense_table_1e8_over_1e4_time")):
        small = _subprocess_case(case, 10**4, args, jit=False)
        large = _subprocess_case(case, 10**8, args, jit=False)
        print(json.dumps({"name": name, "value": large["seconds_per_step"] / small["seconds_per_step"],
                          "ms_1e4": 1e3 * small["seconds_per_step"],
                          "ms_1e8": 1e3 * large["seconds_per_step"],
                          "target": "<= 1.05" if case == "sogclr" else "record", **common}))
        if case == "sogclr":
            print(json.dumps({"name": "table_1e8_bytes_per_row",
                              "value": large["rss_after_steps_bytes"] / 1e8,
                              "table_bytes_per_row": large["table_bytes"] / 1e8,
                              "steps_raised_peak_rss_bytes": large["steps_raised_peak_rss_bytes"],
                              "target": "about 4"}))


if __name__ == "__main__":
    main()
