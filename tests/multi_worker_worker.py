"""One process of tests/test_multi_worker.py: a few steps of tiny SogCLR pretraining, dumped.

    TF_CONFIG=... python tests/multi_worker_worker.py DATA_DIR MODEL_DIR OUT.npz \
        [--steps=N] [--checkpoint_steps=K] [--step_delay=SECONDS]

With TF_CONFIG naming several workers this is one worker of a MultiWorkerMirroredStrategy
(one CPU replica per worker). Every worker writes the weights and u-table it ends with to
OUT.npz (`weights_<i>` in `model.weights` order, `u_table`, `step`). `tiny_config` and
`dataset_fn` are shared with the single-process reference run of the test, so both see the
same global batches: global batch s is [rows s*b.. of shard 0; rows s*b.. of shard 1], where
shard k holds the split's examples with index in [k*N/2, (k+1)*N/2), in index order, and b is
the per-replica batch. No shuffling and no random augmentation: view 2 is view 1 mirrored. A
worker restarted on a model_dir with a checkpoint goes on from that checkpoint's global batch;
one stopped by SIGTERM (after saving) exits with run.py's status 143.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import run  # noqa: E402
from tf_sogclr import config, data  # noqa: E402
from tf_sogclr.data import fashion_mnist  # noqa: E402

GLOBAL_BATCH = 16
NUM_SHARDS = 2  # = replicas in sync, in both settings
IMAGE_SIZE = 8
STEPS = 20  # 2.5 epochs of the 128-example slice


def tiny_config(data_dir, model_dir, steps=STEPS, checkpoint_steps=0):
    """ResNet-18 of width 1/16 on 8x8 crops, SogCLR, batch 16, `steps` steps, a checkpoint
    every `checkpoint_steps` (0: only at the end)."""
    return config.PretrainConfig(
        data=config.DataConfig(dataset=fashion_mnist.NAME, data_dir=data_dir,
                               image_size=IMAGE_SIZE),
        model=config.ModelConfig(width_multiplier=0.0625, proj_out_dim=8),
        optimizer=config.OptimizerConfig(learning_rate=0.1, warmup_epochs=0.0),
        run=config.RunConfig(model_dir=str(model_dir), train_batch_size=GLOBAL_BATCH,
                             train_steps=steps, checkpoint_steps=checkpoint_steps,
                             checkpoint_epochs=0,
                             seed=1),
    )


def _shard(data_dir, k, start_step=0, step_delay=0.0):
    info = data.describe(fashion_mnist.NAME, "train", data_dir)
    size = info.num_examples // NUM_SHARDS
    ds = data.read_examples(fashion_mnist.NAME, "train", data_dir)  # index order
    ds = ds.skip(k * size).take(size)

    def views(example):
        image = tf.image.resize(tf.cast(example["image"], tf.float32) / 255.0,
                                (IMAGE_SIZE, IMAGE_SIZE))
        return {"view1": image, "view2": tf.image.flip_left_right(image),
                "index": example["index"], "label": example["label"]}

    def wait(batch):  # Slows the run down without changing what it computes.
        done = tf.numpy_function(lambda: np.float32(time.sleep(step_delay) or 0), [], tf.float32)
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, batch)

    per_replica = GLOBAL_BATCH // NUM_SHARDS
    ds = ds.map(views).batch(per_replica, drop_remainder=True).repeat().skip(start_step)
    return ds.map(wait) if step_delay else ds


def dataset_fn(data_dir, start_step=0, step_delay=0.0):
    """`dataset_fn(input_context)` for `lifecycle.pretrain`: per-replica batches, as above,
    from global batch `start_step` on (a resumed run goes on where it stopped), each worker's
    batches `step_delay` seconds apart at least."""

    def fn(context):
        if context.num_input_pipelines == NUM_SHARDS:  # one worker per shard
            return _shard(data_dir, context.input_pipeline_id, start_step, step_delay)
        if context.num_input_pipelines != 1 or context.num_replicas_in_sync != NUM_SHARDS:
            raise ValueError(f"unexpected input context {context}")
        # One pipeline feeding two local replicas: they take its batches in turn.
        pairs = tf.data.Dataset.zip((_shard(data_dir, 0), _shard(data_dir, 1)))
        return pairs.flat_map(lambda a, b: tf.data.Dataset.from_tensors(a).concatenate(
            tf.data.Dataset.from_tensors(b)))

    return fn


def _value(variable):
    value = variable.value
    values = getattr(value, "values", None)  # a distributed variable: its first copy
    return (values[0] if values else value).numpy()


def dump(result, path):
    """Writes the weights, u-table and step `result` (a PretrainResult) ended with."""
    model = result.model
    arrays = {f"weights_{i}": _value(w) for i, w in enumerate(model.weights)}
    arrays["u_table"] = _value(model.loss_layer.u_table.log_u)
    arrays["step"] = np.array(result.step)
    np.savez(path, **arrays)


def restored_step(model_dir):
    """The step of the newest complete checkpoint in model_dir (0 without one)."""
    from tf_sogclr.training import checkpoints

    path = checkpoints.latest_checkpoint(model_dir)
    if path is None:
        return 0
    return int(tf.train.load_checkpoint(path).get_tensor(
        "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


def main(argv):
    from tf_sogclr import distribute
    from tf_sogclr.training import lifecycle
    from tf_sogclr.training.preemption import WorkerLostError

    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("model_dir")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--checkpoint_steps", type=int, default=0)
    parser.add_argument("--step_delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    strategy = distribute.resolve_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise SystemExit(f"expected MultiWorkerMirroredStrategy from TF_CONFIG, got {strategy}")
    cfg = tiny_config(args.data_dir, args.model_dir, args.steps, args.checkpoint_steps)
    start = restored_step(args.model_dir)
    print(f"Starting at step {start}.", flush=True)
    try:
        result = lifecycle.pretrain(cfg, strategy=strategy, verbose=0,
                                    dataset_fn=dataset_fn(args.data_dir, start, args.step_delay))
    except WorkerLostError as error:  # Exit as run.py does.
        run.exit_after_lost_worker(error)
    dump(result, args.out)
    with open(f"{args.out}.json", "w") as f:
        json.dump(result.distribution, f)
    if result.preempted:  # Saved at a step every worker agreed on: exit as run.py does.
        sys.exit(run.PREEMPTED_EXIT_STATUS)


if __name__ == "__main__":
    main(sys.argv[1:])
