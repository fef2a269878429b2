"""Pretraining speed: prints one JSON object per line (`name`, `value`, ...).

    python bench/train_bench.py [--steps 40 --batch 128 --width 0.25]
    python bench/train_bench.py --case=train   # one measurement: a JSON line (bench/alternate.py)
    python bench/train_bench.py --case=train --cpu_replicas=2 --global_bn=0  # one step
        # split over two logical CPUs (MirroredStrategy), one thread per replica on 2 cores

* `train_examples_per_s` (loss=sogclr and loss=simclr): small-stem ResNet-18 train steps
  on 32x32x3 batches (`--image_size`, `--channels`) already in memory, as `run.py` runs them (`training.loop`'s loop with
  the step guard's diagnostics, run.py's steps per execution, logs and report read back
  after every execution), with CPU-seconds per example (all threads);
* `train_sogclr_over_simclr_throughput`: their ratio, same run (target >= 0.97);
* `jit_over_nojit_throughput`: the SogCLR step compiled with XLA over without;
* `pipeline_examples_per_s_fashion_mnist`, `pipeline_examples_per_s_rgb32`: the two-view
  input pipeline alone (TFDS read, cache, shuffle, batched augmentation), examples/s;
* `train_examples_per_s_fashion_mnist_pipeline`: SogCLR steps fed by the real pipeline, so
  it shows whether input keeps up with the step.

Each measurement runs in a fresh subprocess (graphs and thread pools do not mix).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)


from tf_sogclr.config import RunConfig  # noqa: E402  (after sys.path)


def _tiny_rgb_dataset(data_dir, num_examples=4096):
    """A TFDS dataset of random 32x32x3 images written to `data_dir` (name: bench_rgb32)."""
    import numpy as np
    import tensorflow_datasets as tfds

    class BenchRgb32(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(32, 32, 3)),
                "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            for i in range(num_examples):
                yield i, {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                          "label": int(i % 10)}

    BenchRgb32.code_path = None
    builder = BenchRgb32(data_dir=data_dir)
    builder.download_and_prepare()
    return "bench_rgb32"


def benchmark_model(loss, batch, width, image_shape, jit, num_replicas=1, global_bn=True):
    """The product's SogCLR model (run.py's builder) for batches of `image_shape`; call it in
    the strategy's scope when `num_replicas` > 1."""
    from tf_sogclr import config
    from tf_sogclr.data import DatasetInfo
    from tf_sogclr.training import modalities
    cfg = config.PretrainConfig(
        data=config.DataConfig(image_size=image_shape[0]),
        model=config.ModelConfig(width_multiplier=width, global_bn=global_bn),
        loss=config.LossConfig(loss=loss),
        run=config.RunConfig(train_batch_size=batch, train_steps=1000, jit_compile=jit))
    info = DatasetInfo(name="bench", full_name="bench/1.0.0", split="train", base_split="train",
                       num_examples=50_000, num_split_examples=50_000, num_classes=10,
                       image_shape=image_shape, shard_lengths=(50_000,))
    return modalities.build_sogclr_model(cfg, info, num_replicas=num_replicas)


def cpu_replica_strategy(num_replicas):
    """MirroredStrategy over `num_replicas` logical CPU devices of this host, each op on
    cores // num_replicas threads and `num_replicas` ops at once (data parallelism across
    cores, not across accelerators); the default strategy for 1. Call before TensorFlow
    initialises."""
    import tensorflow as tf
    if num_replicas == 1:
        return tf.distribute.get_strategy()
    cores = len(os.sched_getaffinity(0))
    tf.config.threading.set_intra_op_parallelism_threads(max(1, cores // num_replicas))
    tf.config.threading.set_inter_op_parallelism_threads(num_replicas)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_replicas)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(num_replicas)])


def execution_function(model, iterator, steps_per_execution, jit, strategy=None):
    """One execution of `steps_per_execution` train steps as `loop.run_schedule` runs it:
    the loop with the step guard's diagnostics, its logs and report read back on the host."""
    import tensorflow as tf
    from tf_sogclr.training import loop as training_loop
    loop = training_loop.train_loop_function(model, strategy or tf.distribute.get_strategy(),
                                             jit_compile=jit, diagnostics=True)
    n = tf.constant(steps_per_execution, tf.int32)

    def execution():
        logs, report = loop(iterator, n)
        logs = {k: float(v) for k, v in logs.items()}
        if float(report["skipped"]):
            raise RuntimeError(f"the step guard skipped a benchmark step: {report}")
        return logs

    return execution


def _time_loop(model, iterator, steps, steps_per_execution, jit, strategy=None):
    """Wall and CPU seconds (all threads) of >= `steps` steps: (wall, cpu, steps)."""
    execution = execution_function(model, iterator, steps_per_execution, jit, strategy)
    execution()  # trace, compile, warm up
    execution()
    wall, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < steps:
        execution()
        done += steps_per_execution
    return time.perf_counter() - wall, time.process_time() - cpu, done


def constant_batches(batch, image_shape=(32, 32, 3), strategy=None):
    """An iterator repeating one batch of two random views of `image_shape`, indices
    0..batch-1 (split over `strategy`'s replicas when given)."""
    import tensorflow as tf
    gen = tf.random.Generator.from_seed(0)
    batch = {"view1": gen.uniform((batch, *image_shape)),
             "view2": gen.uniform((batch, *image_shape)),
             "index": tf.range(batch, dtype=tf.int32),
             "label": tf.zeros((batch,), tf.int64)}
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    return iter(strategy.experimental_distribute_dataset(dataset) if strategy else dataset)


def case_train(args):
    shape = (args.image_size, args.image_size, args.channels)
    strategy = cpu_replica_strategy(args.cpu_replicas)
    with strategy.scope():
        model = benchmark_model(args.loss, args.batch, args.width, shape, args.jit,
                                args.cpu_replicas, bool(args.global_bn))
    iterator = constant_batches(args.batch, shape, strategy if args.cpu_replicas > 1 else None)
    return {**_speeds(*_time_loop(model, iterator, args.steps, args.steps_per_execution,
                                  args.jit, strategy), args.batch),
            "replicas": strategy.num_replicas_in_sync}


def _speeds(seconds, cpu_seconds, steps, batch):
    return {"examples_per_s": steps * batch / seconds, "seconds_per_step": seconds / steps,
            "cpu_seconds_per_example": cpu_seconds / (steps * batch)}


def _pipeline(dataset, data_dir, batch, image_size, channels):
    from tf_sogclr import data
    from tf_sogclr.data import augment
    augmenter = augment.SimCLRAugment(image_size, channels=channels)
    return data.pretrain_dataset(dataset, "train", batch, augmenter, data_dir=data_dir,
                                 cache=True, shuffle_buffer=10_000)


def _pipeline_source(args):
    if args.dataset == "rgb32":
        data_dir = tempfile.mkdtemp(prefix="bench_rgb32_")
        return _tiny_rgb_dataset(data_dir), data_dir, 32, 3
    from tf_sogclr.data import fashion_mnist
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_fmnist_")
    return fashion_mnist.prepare_fashion_mnist(data_dir), data_dir, 28, 1


def case_pipeline(args):
    name, data_dir, size, channels = _pipeline_source(args)
    iterator = iter(_pipeline(name, data_dir, args.batch, size, channels))
    for _ in range(max(5, 60_000 // args.batch + 5)):  # fill the cache: one full pass
        next(iterator)
    start = time.perf_counter()
    batches = 200
    for _ in range(batches):
        next(iterator)
    return {"examples_per_s": batches * args.batch / (time.perf_counter() - start)}


def case_train_with_pipeline(args):
    name, data_dir, size, channels = _pipeline_source(args)
    model = benchmark_model("sogclr", args.batch, args.width, (size, size, channels), False)
    iterator = iter(_pipeline(name, data_dir, args.batch, size, channels))
    return _speeds(*_time_loop(model, iterator, args.steps, args.steps_per_execution, False),
                   args.batch)


CASES = {"train": case_train, "pipeline": case_pipeline, "train_with_pipeline": case_train_with_pipeline}


def _sub(args, case, **overrides):
    options = dict(vars(args), case=case, **overrides)
    command = [sys.executable, os.path.abspath(__file__)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        command.append(f"--{key}" if value is True else f"--{key}={value}")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--steps_per_execution", type=int, default=RunConfig.steps_per_execution,
                        help="steps per host round trip (default: run.py's)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--data_dir", default=None, help="TFDS dir for Fashion-MNIST (temp if unset)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="sogclr", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default="fashion_mnist", help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image_size", type=int, default=32, help="--case=train's images")
    parser.add_argument("--channels", type=int, default=3, help="--case=train's images")
    parser.add_argument("--cpu_replicas", type=int, default=1,
                        help="--case=train: MirroredStrategy over this many logical CPUs")
    parser.add_argument("--global_bn", type=int, default=1, choices=(0, 1),
                        help="--case=train with replicas: synchronised batch norm (run.py's "
                             "--global_bn) or each replica's own")
    args = parser.parse_args()
    for name in ("image_size", "channels", "cpu_replicas"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be an integer >= 1, got {getattr(args, name)}.")
    if args.batch % args.cpu_replicas:
        parser.error(f"--batch ({args.batch}) must be a multiple of --cpu_replicas "
                     f"({args.cpu_replicas}).")
    if args.cpu_replicas > 1 and args.case != "train":
        parser.error("--cpu_replicas > 1 needs --case=train (the full bench compares "
                     "one-device steps).")
    if args.jit and args.cpu_replicas > 1:
        parser.error("--jit needs --cpu_replicas=1 (XLA cannot compile a step that holds "
                     "cross-replica collectives on CPU).")
    if args.case:
        print(json.dumps(CASES[args.case](args)))
        return

    common = {"batch": args.batch, "width": args.width, "depth": 18,
              "image": f"{args.image_size}x{args.image_size}x{args.channels}"}
    sogclr = _sub(args, "train", loss="sogclr")
    simclr = _sub(args, "train", loss="simclr")
    jit = _sub(args, "train", loss="sogclr", jit=True)
    for loss, result in (("sogclr", sogclr), ("simclr", simclr)):
        print(json.dumps({"name": "train_examples_per_s", "loss": loss,
                          "value": result["examples_per_s"], **common}))
    print(json.dumps({"name": "train_sogclr_over_simclr_throughput", "target": ">= 0.97",
                      "value": sogclr["examples_per_s"] / simclr["examples_per_s"], **common}))
    print(json.dumps({"name": "jit_over_nojit_throughput", "jit_examples_per_s": jit["examples_per_s"],
                      "value": jit["examples_per_s"] / sogclr["examples_per_s"], **common}))
    for dataset in ("fashion_mnist", "rgb32"):
        result = _sub(args, "pipeline", dataset=dataset, batch=256)
        print(json.dumps({"name": f"pipeline_examples_per_s_{dataset}", "batch": 256,
                          "value": result["examples_per_s"]}))
    result = _sub(args, "train_with_pipeline", dataset="fashion_mnist")
    print(json.dumps({"name": "train_examples_per_s_fashion_mnist_pipeline",
                      "value": result["examples_per_s"], "batch": args.batch,
                      "width": args.width, "image": "28x28x1"}))


if __name__ == "__main__":
    main()
