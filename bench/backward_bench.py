"""The backward pass with and without collectives, under MirroredStrategy on 2 logical CPUs.

    python bench/backward_bench.py [--pairs 5 --steps 30 --batch 128 --width 0.125]
    python bench/backward_bench.py --individual_temperatures      # iSogCLR's tables too

Runs the product's unimodal SogCLR train step (`training.modalities.build_sogclr_model`,
`training.loop.train_loop_function`: LARS, linear head, step guard) on 28x28x1 batches in
memory, split over two replicas (two logical CPU devices of this one host), with the
differentiable gather (`--collective_free_backward=false`) and without it, alternating the
two in fresh subprocesses. Prints one JSON line per run (examples/s, CPU-seconds per
example, the step graph's collective ops) and a summary line with the medians and their
ratio. Two logical CPUs share the same cores, so the collectives here are memory copies:
the count is what a TPU pod or a GPU cluster saves; the time is this host's.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(args):
    """One run in this process: {"examples_per_s", "cpu_s_per_example", "collectives"}."""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tf_sogclr import config, distribute
    from tf_sogclr.data import DatasetInfo
    from tf_sogclr.training import loop as training_loop
    from tf_sogclr.training import modalities

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    shape = (28, 28, 1)
    cfg = config.PretrainConfig(
        data=config.DataConfig(image_size=28),
        model=config.ModelConfig(width_multiplier=args.width),
        loss=config.LossConfig(collective_free_backward=args.collective_free_backward,
                               individual_temperatures=args.individual_temperatures),
        run=config.RunConfig(train_batch_size=args.batch, train_steps=1000)).validate()
    info = DatasetInfo(name="bench", full_name="bench/1.0.0", split="train", base_split="train",
                       num_examples=60_000, num_split_examples=60_000, num_classes=10,
                       image_shape=shape, shard_lengths=(60_000,))
    with strategy.scope():
        model = modalities.build_sogclr_model(cfg, info, num_replicas=2)
    gen = tf.random.Generator.from_seed(0)
    batch = {"view1": gen.uniform((args.batch, *shape)), "view2": gen.uniform((args.batch, *shape)),
             "index": tf.range(args.batch, dtype=tf.int32),
             "label": tf.zeros((args.batch,), tf.int64)}
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).repeat())
    iterator = iter(dataset)
    loop = training_loop.train_loop_function(model, strategy)
    n = tf.constant(args.steps_per_execution, tf.int32)
    loop(iterator, n)  # trace and warm up
    loop(iterator, n)
    collectives = distribute.collective_op_counts(
        loop.get_concrete_function(iterator, n).graph)
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    done = 0
    while done < args.steps:
        logs = loop(iterator, n)
        done += args.steps_per_execution
    float(logs["contrastive_loss"])
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    examples = done * args.batch
    return {"examples_per_s": examples / seconds, "cpu_s_per_example": cpu / examples,
            "collectives": collectives}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--steps_per_execution", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--individual_temperatures", action="store_true")
    parser.add_argument("--collective_free_backward", action="store_true",
                        help=argparse.SUPPRESS)  # set by the parent for one run
    parser.add_argument("--one_run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        print(json.dumps(measure(args)))
        return
    runs = {False: [], True: []}
    for pair in range(args.pairs):
        for free in (False, True):
            command = [sys.executable, os.path.abspath(__file__), "--one_run",
                       f"--steps={args.steps}", f"--batch={args.batch}", f"--width={args.width}",
                       f"--steps_per_execution={args.steps_per_execution}"]
            command += ["--collective_free_backward"] * free
            command += ["--individual_temperatures"] * args.individual_temperatures
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            runs[free].append(result)
            print(json.dumps({"name": "mirrored_train_step", "pair": pair,
                              "collective_free_backward": free, **result}), flush=True)
    median = {free: statistics.median(r["examples_per_s"] for r in runs[free]) for free in runs}
    cpu = {free: statistics.median(r["cpu_s_per_example"] for r in runs[free]) for free in runs}
    print(json.dumps({
        "name": "collective_free_over_gather_throughput", "value": median[True] / median[False],
        "examples_per_s_median": {"gather": median[False], "collective_free": median[True]},
        "cpu_s_per_example_median": {"gather": cpu[False], "collective_free": cpu[True]},
        "collectives": {"gather": runs[False][0]["collectives"],
                        "collective_free": runs[True][0]["collectives"]},
        "pairs": args.pairs, "batch": args.batch, "width": args.width, "replicas": 2,
        "individual_temperatures": args.individual_temperatures}))


if __name__ == "__main__":
    main()
