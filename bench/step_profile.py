"""Where a train step's time goes: a TensorFlow profiler trace of `train_bench.py`'s step.

    python bench/step_profile.py [--batch 128 --width 0.25 --steps 5 --loss sogclr]

Traces `--steps` steps of the step `train_bench.py --case=train` times (the product's full
step as run.py runs it) with `tf.profiler.experimental`, reads the trace (XPlane) and sums
each TensorFlow op's time on the executor threads into parts of the step (`PARTS`). Prints one
JSON object: wall milliseconds per step, op milliseconds per step summed over threads, and
per part its milliseconds per step and share; `--top N` adds the N heaviest op types. The
PyTorch counterpart is `pytorch_libauc_step.py --profile` (torch.profiler, self CPU time).
"""

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_bench  # noqa: E402  (bench/ on sys.path)

# (part, test on (scope, op type)), first match wins; scopes are name scopes of the step.
PARTS = (
    ("convolution_forward", lambda scope, op: "Conv2D" in op and "Backprop" not in op),
    ("convolution_backward", lambda scope, op: "Conv2DBackprop" in op),
    ("optimizer_update", lambda scope, op: "/cond/" in scope),  # the step guard's tf.cond
    ("batch_norm", lambda scope, op: "BatchNorm" in op
     or ("batch_norm" in scope and "relu" not in scope)),
    ("relu", lambda scope, op: "Relu" in op),
    ("loss_and_u_table", lambda scope, op: "_loss" in scope and "linear" not in scope),
    ("linear_head", lambda scope, op: "head_supervised" in scope or "SoftmaxCrossEntropy" in op),
    ("projection_head", lambda scope, op: "projection_head" in scope),
    ("non_finite_checks", lambda scope, op: op in ("IsFinite", "All")),
    ("gradient_sums", lambda scope, op: op == "AddN"),
    ("other", lambda scope, op: True),
)


def part_of(scope, op):
    """The `PARTS` name of an op, from its name scope and type."""
    return next(name for name, matches in PARTS if matches(scope, op))


def op_times(xspace_path):
    """{(scope, op type): picoseconds} over the executor threads of a trace file."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    space = xplane_pb2.XSpace()
    with open(xspace_path, "rb") as f:
        space.ParseFromString(f.read())
    times = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith("ExecutorState"):
                    continue  # Not a TensorFlow op (executor bookkeeping around the ops).
                scope, op = name.rsplit(":", 1)
                times[(scope, op)] += event.duration_ps
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--loss", default="sogclr", choices=("sogclr", "simclr"))
    parser.add_argument("--image_size", type=int, default=32,
                        help="side of the square inputs (16: the default job's and study's)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--top", type=int, default=0, help="also list the N heaviest op types")
    args = parser.parse_args()
    for flag, value, low in (("--steps", args.steps, 1), ("--batch", args.batch, 2),
                             ("--top", args.top, 0), ("--image_size", args.image_size, 8)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}.")
    import tensorflow as tf

    shape = (args.image_size, args.image_size, args.channels)
    model = train_bench.benchmark_model(args.loss, args.batch, args.width, shape, False)
    iterator = train_bench.constant_batches(args.batch, shape)
    execution = train_bench.execution_function(model, iterator, 1, False)
    for _ in range(3):  # trace, compile, warm up
        execution()
    logdir = tempfile.mkdtemp(prefix="step_profile_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(args.steps):
        execution()
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    trace = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    times = op_times(trace)
    per_step = 1e-9 / args.steps  # picoseconds -> milliseconds per step
    total = sum(times.values())
    parts, types = collections.Counter(), collections.Counter()
    for (scope, op), ps in times.items():
        parts[part_of(scope, op)] += ps
        types[op] += ps
    result = {"batch": args.batch, "image_shape": list(shape), "width": args.width, "loss": args.loss, "steps": args.steps,
              "wall_ms_per_step": 1000 * wall / args.steps,
              "op_ms_per_step": total * per_step,
              "parts": {name: {"ms_per_step": round(parts[name] * per_step, 2),
                               "share": round(parts[name] / total, 4)}
                        for name, _ in PARTS}}
    if args.top:
        result["top_op_types_ms_per_step"] = {
            op: round(ps * per_step, 2) for op, ps in types.most_common(args.top)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
